"""Session fixtures: one collector, Jaeger, Prometheus and Alertmanager (real
binaries, committed configs) shared by every observability test, and a
per-test pipeline (`obs_stack`) whose services export to that collector.

Tests never share state through the backend by accident: each `obs_stack` has
its own stream, database and `deployment.environment.name` (a Prometheus label
on every series), and tests look traces up by their own trace ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Stack
from tests.observability.backend import (
    OBS_METRIC_EXPORT_INTERVAL_MS,
    Alertmanager,
    AlertReceiver,
    Collector,
    Jaeger,
    Prometheus,
)
from tests.support.otlp import OtlpSink
from tests.support.procs import RedisServer


@pytest.fixture(scope="session")
def obs_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("observability")


@pytest.fixture(scope="session")
def jaeger(obs_tmp: Path) -> Iterator[Jaeger]:
    j = Jaeger(obs_tmp)
    j.process.start()
    try:
        yield j
    finally:
        j.process.stop()


@pytest.fixture(scope="session")
def collector(obs_tmp: Path, jaeger: Jaeger) -> Iterator[Collector]:
    c = Collector(obs_tmp, jaeger)
    c.process.start()
    try:
        yield c
    finally:
        c.process.stop()


@pytest.fixture(scope="session")
def alert_receiver() -> Iterator[AlertReceiver]:
    r = AlertReceiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="session")
def alertmanager(obs_tmp: Path, alert_receiver: AlertReceiver) -> Iterator[Alertmanager]:
    am = Alertmanager(obs_tmp, alert_receiver)
    am.process.start()
    try:
        yield am
    finally:
        am.process.stop()


@pytest.fixture(scope="session")
def prometheus(
    obs_tmp: Path, collector: Collector, alertmanager: Alertmanager
) -> Iterator[Prometheus]:
    p = Prometheus(obs_tmp, collector, alertmanager)
    p.process.start()
    # Prometheus applies scrape targets only on its first 5s reload tick; wait
    # here once so no test's deadline has to absorb that.
    p.wait_scraping({"wabot", "otel-collector"})
    try:
        yield p
    finally:
        p.process.stop()


class ObsStack(Stack):
    """A :class:`Stack` whose services export to the real collector."""

    def __init__(
        self, tmp: Path, redis_server: RedisServer, dsn: str, sink: OtlpSink, collector: Collector
    ) -> None:
        super().__init__(tmp, redis_server, dsn, sink)
        # Unique per test: selects this test's series in the shared Prometheus
        # (and stands in for Grafana's $env variable).
        self.environment = "obs-" + self.run_id[:12]
        self.env.update(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint,
                "OTEL_RESOURCE_ATTRIBUTES": (
                    f"test.run.id={self.run_id},deployment.environment.name={self.environment}"
                ),
                "OTEL_METRIC_EXPORT_INTERVAL": str(OBS_METRIC_EXPORT_INTERVAL_MS),
            }
        )

    def post_message(self, sample: dict[str, Any], message_id: str | None = None) -> str:
        """POST a messages.upsert (with a fresh message id unless given); its trace id."""
        body = {**sample, "data": {**sample["data"], "key": dict(sample["data"]["key"])}}
        body["data"]["key"]["id"] = message_id or "OBS" + uuid.uuid4().hex[:17].upper()
        resp = self.post(body)
        assert resp.status_code == 202, resp.text
        trace_id = resp.json()["trace_id"]
        assert isinstance(trace_id, str)
        return trace_id

    def xadd(self, fields: dict[str, str]) -> str:
        """Append an entry to this test's stream directly (bypassing ingest)."""
        with redis.Redis.from_url(self.redis.url, decode_responses=True) as client:
            return str(client.xadd(self.stream, dict(fields)))


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
