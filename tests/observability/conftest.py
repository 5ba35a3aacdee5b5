"""Session fixtures: one collector, Jaeger, VictoriaLogs, Prometheus (with the
Redis and PostgreSQL exporters of the session's servers) and Alertmanager (real
binaries, committed configs with test timings) shared by every observability
test, and a per-test pipeline (``obs_stack``) whose services export to that
collector.

Tests never share state through the backend by accident: each ``obs_stack`` has
its own stream, database and ``deployment.environment.name`` (a Prometheus label
on every series), and tests look traces up by their own trace ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.alerts import AlertReceiver
from tests.support.otlp import OtlpSink
from tests.support.stack.alerting import Alertmanager, Prometheus
from tests.support.stack.backend import Collector, Jaeger, ObsStack, VictoriaLogs
from tests.support.stack.configs import TEST_TIMINGS
from tests.support.stack.exporters import PostgresExporter, RedisExporter
from tests.support.stack.servers import PostgresServer, RedisServer


@pytest.fixture(scope="session")
def obs_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("observability")


@pytest.fixture(scope="session")
def jaeger(obs_tmp: Path) -> Iterator[Jaeger]:
    j = Jaeger(obs_tmp)
    with j.process:
        yield j


@pytest.fixture(scope="session")
def victorialogs(obs_tmp: Path) -> Iterator[VictoriaLogs]:
    v = VictoriaLogs(obs_tmp)
    with v.process:
        yield v


@pytest.fixture(scope="session")
def collector(obs_tmp: Path, jaeger: Jaeger, victorialogs: VictoriaLogs) -> Iterator[Collector]:
    c = Collector(obs_tmp, jaeger, victorialogs, timings=TEST_TIMINGS)
    with c.process:
        yield c


@pytest.fixture(scope="session")
def alert_receiver() -> Iterator[AlertReceiver]:
    with AlertReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def alertmanager(obs_tmp: Path, alert_receiver: AlertReceiver) -> Iterator[Alertmanager]:
    am = Alertmanager(obs_tmp, alert_receiver.url, timings=TEST_TIMINGS)
    with am.process:
        yield am


@pytest.fixture(scope="session")
def redis_exporter(obs_tmp: Path, redis_server: RedisServer) -> Iterator[RedisExporter]:
    e = RedisExporter(obs_tmp, redis_server.url)
    with e.process:
        yield e


@pytest.fixture(scope="session")
def postgres_exporter(obs_tmp: Path, postgres_server: PostgresServer) -> Iterator[PostgresExporter]:
    e = PostgresExporter(obs_tmp, postgres_server.dsn())
    with e.process:
        yield e


@pytest.fixture(scope="session")
def prometheus(
    obs_tmp: Path,
    collector: Collector,
    alertmanager: Alertmanager,
    redis_exporter: RedisExporter,
    postgres_exporter: PostgresExporter,
) -> Iterator[Prometheus]:
    p = Prometheus(
        obs_tmp,
        collector,
        alertmanager,
        timings=TEST_TIMINGS,
        redis_exporter=redis_exporter.target,
        postgres_exporter=postgres_exporter.target,
    )
    with p.process:
        # Prometheus applies scrape targets only on its first 5s reload tick, and
        # scrapes the exporters every 15s (prometheus.yml); wait here once so no
        # test's deadline has to absorb that.
        p.wait_scraping({"wabot", "otel-collector", "redis", "postgres"}, timeout=60)
        yield p


@pytest.fixture
def obs_stack(
    tmp_path: Path,
    redis_server: RedisServer,
    db_dsn: str,
    otlp_sink: OtlpSink,
    collector: Collector,
) -> Iterator[ObsStack]:
    s = ObsStack(tmp_path, redis_server, db_dsn, otlp_sink, collector)
    try:
        yield s
    finally:
        s.stop_all()
