"""Fixtures of the in-process tests (``make test-fast``).

Tests here import ``wabot_*`` modules and call them directly, against the real
Redis and PostgreSQL session fixtures of ``tests/conftest.py`` (``redis_server``,
``postgres_server``, ``db_dsn``, ``empty_db``); they start no service process,
which is what keeps them out of the ``process`` marker and under a minute.
"""
