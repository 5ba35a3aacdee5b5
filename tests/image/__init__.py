"""The container image, built from the Dockerfile with podman against local
base images and run as it is deployed: migrate, ingest and worker as uid 10001
against the harness' Redis and PostgreSQL (``make test-image``; ``make test``
runs it too)."""
