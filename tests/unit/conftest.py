"""Fixtures of the in-process tests (``make test-fast``).

Tests here import ``wabot_*`` modules and call them directly, against the real
Redis and PostgreSQL session fixtures of ``tests/conftest.py`` (``redis_server``,
``postgres_server``, ``db_dsn``, ``empty_db``); they start no service process,
which is what keeps them out of the ``process`` marker and under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.telemetry import InMemoryTelemetry, install


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    """The in-memory telemetry every in-process test exports to, emptied per test."""
    sink = install()
    sink.clear()
    yield sink
    sink.clear()
