"""Ingest service: Evolution API webhooks in, Redis stream entries out."""
