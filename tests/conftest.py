"""Session fixtures: real redis-server and PostgreSQL, an OTLP receiver, an
Evolution API stub; per-test databases and streams so tests never share state.

Fixtures only: the helpers behind them live in ``tests/support/`` (the harness
is ``tests/support/stack/``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.evolution import EvolutionStub
from tests.support.otlp import OtlpSink
from tests.support.stack.paths import load_samples
from tests.support.stack.pipeline import Stack
from tests.support.stack.servers import (
    PostgresServer,
    RedisServer,
    create_db,
    running_postgres,
    running_redis,
)
from tests.support.stack.services import run_migrate

UNIT_DIR = Path(__file__).parent / "unit"
TEMPLATE_DB = "wabot_template"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test outside tests/unit/ as ``process`` (see pyproject's markers),
    by directory, so no test has to remember it and ``make test-fast`` can
    deselect them all."""
    for item in items:
        if UNIT_DIR not in item.path.parents:
            item.add_marker(pytest.mark.process)


@pytest.fixture(scope="session")
def samples() -> dict[str, dict[str, Any]]:
    return load_samples()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def template_db(postgres_server: PostgresServer) -> str:
    """A database every migration was applied to, copied by ``db_dsn``."""
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    result = run_migrate(postgres_server.dsn(TEMPLATE_DB))
    assert result.returncode == 0, result.stderr + result.stdout
    return TEMPLATE_DB


@pytest.fixture
def empty_db(postgres_server: PostgresServer) -> str:
    """A fresh database with no migrations applied; returns its DSN."""
    return postgres_server.dsn(create_db(postgres_server, None))


@pytest.fixture
def db_dsn(postgres_server: PostgresServer, template_db: str) -> str:
    """A fresh, fully migrated database; returns its DSN."""
    return postgres_server.dsn(create_db(postgres_server, template_db))


@pytest.fixture(scope="session")
def otlp_sink() -> Iterator[OtlpSink]:
    with OtlpSink() as sink:
        yield sink


@pytest.fixture
def evolution_stub() -> Iterator[EvolutionStub]:
    """A fresh stub per test: what it recorded is that test's requests only."""
    with EvolutionStub() as stub:
        yield stub


@pytest.fixture
def stack(
    tmp_path: Path, redis_server: RedisServer, db_dsn: str, otlp_sink: OtlpSink
) -> Iterator[Stack]:
    """ingest and worker for one test: its own stream and database."""
    s = Stack(tmp_path, redis_server, db_dsn, otlp_sink)
    try:
        yield s
    finally:
        s.stop_all()
