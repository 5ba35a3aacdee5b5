"""Session fixtures: real redis-server and PostgreSQL, an OTLP receiver, an
Evolution API stub; per-test databases and streams so tests never share state."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.support.evolution import EvolutionStub
from tests.support.otlp import OtlpSink
from tests.support.procs import (
    REPO,
    PostgresServer,
    RedisServer,
    Service,
    free_port,
    http_get,
    run_migrate_cmd,
    running_postgres,
    running_redis,
    wait_for,
)

UNIT_DIR = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test outside tests/unit/ as ``process`` (see pyproject's markers),
    by directory, so no test has to remember it and ``make test-fast`` can
    deselect them all."""
    for item in items:
        if UNIT_DIR not in item.path.parents:
            item.add_marker(pytest.mark.process)


SAMPLES_DIR = Path(
    os.environ.get("WABOT_SAMPLES_DIR", REPO.parent / "shared" / "evolution-webhooks")
)
WEBHOOK_SECRET = "test-" + secrets.token_hex(16)
TEMPLATE_DB = "wabot_template"


def load_samples() -> dict[str, dict[str, Any]]:
    if not SAMPLES_DIR.is_dir():
        raise AssertionError(f"sample webhooks not found at {SAMPLES_DIR}")
    return {p.stem: json.loads(p.read_text()) for p in sorted(SAMPLES_DIR.glob("*.json"))}


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


def run_migrate(dsn: str, **env: str) -> Any:
    return run_migrate_cmd(dsn, **env)


@pytest.fixture(scope="session")
def template_db(postgres_server: PostgresServer) -> str:
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    result = run_migrate(postgres_server.dsn(TEMPLATE_DB))
    assert result.returncode == 0, result.stderr + result.stdout
    return TEMPLATE_DB


def create_db(server: PostgresServer, template: str | None) -> str:
    """A new database on ``server`` (a copy of ``template`` if given); its name."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        tmpl = f" TEMPLATE {template}" if template else ""
        conn.execute(f"CREATE DATABASE {name}{tmpl}")
    return name


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
    sink = OtlpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture(scope="session")
def evolution_stub() -> Iterator[EvolutionStub]:
    stub = EvolutionStub().start()
    try:
        yield stub
    finally:
        stub.stop()


def wait_worker_up(svc: Service) -> None:
    """Until the worker's /health answers (200 or 503) or the worker is gone."""

    def up_or_dead() -> bool:
        if not svc.alive():
            return True
        with contextlib.suppress(OSError):
            return http_get(svc.health_url)[0] in (200, 503)
        return False

    wait_for(up_or_dead, timeout=30, what=f"worker {svc.env['WORKER_CONSUMER_NAME']} /health")


class Stack:
    """Our services for one test, wired to its own stream and database."""

    def __init__(self, tmp: Path, redis: RedisServer, dsn: str, sink: OtlpSink) -> None:
        self.tmp = tmp
        self.redis = redis
        self.dsn = dsn
        self.sink = sink
        self.stream = "test:" + uuid.uuid4().hex[:10]
        self.run_id = uuid.uuid4().hex
        self.services: list[Service] = []
        self.ingest_port: int | None = None
        self.env = {
            "APP_ENV": "test",
            "REDIS_URL": redis.url,
            "DATABASE_URL": dsn,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STREAM_NAME": self.stream,
            "LOG_LEVEL": "INFO",
            "SHUTDOWN_TIMEOUT": "10",
            "SHUTDOWN_DRAIN_DELAY": "0.2",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
            # Lets a test pick its own services' telemetry out of the shared sink.
            "OTEL_RESOURCE_ATTRIBUTES": f"test.run.id={self.run_id}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
            "WORKER_BLOCK_MS": "200",
            "WORKER_STATS_INTERVAL": "0.5",
            "RETRY_BACKOFF_INITIAL": "0.1",
            "RETRY_BACKOFF_MAX": "1",
        }

    def start_ingest(self, port: int | None = None, **env: str) -> Service:
        """Start ingest (on ``port``, e.g. to restart on the same one) and wait for /ready."""
        self.ingest_port = port or free_port()
        svc = Service(
            "ingest",
            {**self.env, "INGEST_HOST": "127.0.0.1", "INGEST_PORT": str(self.ingest_port), **env},
            self.tmp / f"ingest-{len(self.services)}.log",
        ).start()
        self.services.append(svc)
        wait_for(
            lambda: not svc.alive() or http_get(self.url("/ready"))[0] == 200,
            timeout=30,
            what=f"ingest /ready on port {self.ingest_port}",
        )
        assert svc.alive(), "ingest exited at start-up:\n" + "\n".join(svc.log_lines()[-20:])
        return svc

    def start_worker(
        self, name: str | None = None, *, wait: bool = True, must_live: bool = True, **env: str
    ) -> Service:
        """Start a worker; with ``wait``, until its /health answers (200 or 503) or it
        died (``must_live=False`` for fault-injected workers that kill themselves)."""
        port = free_port()
        svc = Service(
            "worker",
            {
                **self.env,
                "WORKER_HEALTH_HOST": "127.0.0.1",
                "WORKER_HEALTH_PORT": str(port),
                "WORKER_CONSUMER_NAME": name or f"w-{uuid.uuid4().hex[:6]}",
                **env,
            },
            self.tmp / f"worker-{len(self.services)}.log",
            health_url=f"http://127.0.0.1:{port}/health",
        ).start()
        self.services.append(svc)
        if not wait:
            return svc
        wait_worker_up(svc)
        if must_live:
            assert svc.alive(), "worker exited at start-up:\n" + "\n".join(svc.log_lines()[-20:])
        return svc

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def register_instance(self, name: str, table: str = "whatsapp_instances") -> str:
        """Create an organization and register ``name`` in ``table``; returns the org id."""
        [(org,)] = self.sql("INSERT INTO core.organizations (name) VALUES ('Org') RETURNING id")
        if table == "whatsapp_instances":
            self.sql(
                "INSERT INTO healthcare.whatsapp_instances (instance_name, organization_id) "
                "VALUES (%s, %s)",
                (name, org),
            )
        else:
            self.sql(
                "INSERT INTO healthcare.integrations (organization_id, type, config) "
                "VALUES (%s, 'whatsapp', jsonb_build_object('instance_name', %s::text))",
                (org, name),
            )
        return str(org)

    def url(self, path: str) -> str:
        assert self.ingest_port is not None
        return f"http://127.0.0.1:{self.ingest_port}{path}"

    def post(
        self,
        body: Any,
        *,
        path: str = "/webhooks/evolution",
        headers: dict[str, str] | None = None,
        auth: bool = True,
        raw: bytes | None = None,
    ) -> httpx.Response:
        hdrs = {"content-type": "application/json"}
        if auth:
            hdrs["x-webhook-secret"] = WEBHOOK_SECRET
        hdrs.update(headers or {})
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(self.url(path), content=content, headers=hdrs, timeout=10)

    def rows(self, where: str = "TRUE", params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:
            return list(
                conn.execute(
                    f"SELECT * FROM healthcare.whatsapp_messages WHERE {where} ORDER BY id", params
                ).fetchall()
            )

    def wait_rows(
        self, n: int, timeout: float = 20, where: str = "TRUE", params: tuple[Any, ...] = ()
    ) -> list[dict[str, Any]]:
        wait_for(
            lambda: len(self.rows(where, params)) >= n,
            timeout=timeout,
            what=f"{n} row(s) in whatsapp_messages where {where}",
        )
        return self.rows(where, params)

    def metric_points(self, name: str, service: str | None = None) -> list[dict[str, Any]]:
        """This test's exported points of metric ``name``."""
        return [
            p
            for p in self.sink.metric_points(name, service)
            if p["resource"].get("test.run.id") == self.run_id
        ]

    def stop_all(self) -> None:
        for svc in self.services:
            if svc.alive():
                with contextlib.suppress(AssertionError):
                    svc.terminate(timeout=20)

    def all_logs(self) -> list[str]:
        return [line for svc in self.services for line in svc.log_lines()]


@pytest.fixture
def stack(
    tmp_path: Path, redis_server: RedisServer, db_dsn: str, otlp_sink: OtlpSink
) -> Iterator[Stack]:
    s = Stack(tmp_path, redis_server, db_dsn, otlp_sink)
    try:
        yield s
    finally:
        s.stop_all()
