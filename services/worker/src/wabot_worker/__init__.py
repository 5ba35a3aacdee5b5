"""Worker service: Redis stream entries in, PostgreSQL rows out."""
