"""Shared library for the ingest and worker services."""
