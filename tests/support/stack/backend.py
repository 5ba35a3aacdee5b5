"""The native observability backend: real binaries started from the committed
configs (rendered by :mod:`.configs`), each binding 127.0.0.1 and keeping its
data under one directory (Prometheus and Alertmanager are in :mod:`.alerting`):

    <root>/logs/{jaeger,otelcol,victorialogs,alertmanager,prometheus}.log
    <root>/otelcol/storage        (the collector's persistent export queues)
    <root>/victorialogs           (VictoriaLogs' data: the log records)
    <root>/alertmanager/{alertmanager.yml,data}
    <root>/prometheus/{prometheus.yml,<rule files>,data}

Ports are free ones unless given (``make run`` gives its documented ones).
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.otlp import OtlpSink
from tests.support.stack import configs
from tests.support.stack.configs import (
    COMMITTED_TIMINGS,
    LOG_RETENTION,
    OBS_METRIC_EXPORT_INTERVAL_MS,
    Timings,
)
from tests.support.stack.env import clean_env
from tests.support.stack.net import free_port, http_get, http_json, http_text, wait_for
from tests.support.stack.paths import (
    COLLECTOR_DIR,
    JAEGER_CONFIG,
    jaeger_binary,
    jaeger_ui_assets,
    otelcol_binary,
    victorialogs_binary,
)
from tests.support.stack.pipeline import Stack
from tests.support.stack.process import Process
from tests.support.stack.servers import RedisServer

JAEGER_PORTS = ("otlp_grpc", "otlp_http", "query", "query_grpc", "health", "metrics")
COLLECTOR_PORTS = ("otlp_grpc", "otlp_http", "prom_exporter", "health", "self_metrics")


def pick_ports(names: tuple[str, ...], given: Mapping[str, int] | None) -> dict[str, int]:
    """``given`` ports, each one checked to be there, else free ones."""
    if given is None:
        return {name: free_port() for name in names}
    assert set(given) == set(names), f"ports {sorted(given)}, expected {sorted(names)}"
    return dict(given)


def backend_process(
    name: str,
    cmd: list[str],
    root: Path,
    ready: str,
    *,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
) -> Process:
    """A backend binary logging to ``<root>/logs/<name>.log``, ready once ``ready``
    answers 200, with ``env`` on top of :func:`clean_env`."""
    return Process(
        name,
        cmd,
        env=clean_env(**(env or {})),
        log_path=root / "logs" / f"{name}.log",
        ready=ready,
        new_session=new_session,
    )


class Jaeger:
    """Jaeger v2 with in-memory storage (a restart starts empty), serving the
    real UI when a jaeger-ui build is available (:func:`.paths.jaeger_ui_assets`),
    else its API only (``ui_assets`` is then None)."""

    def __init__(
        self, root: Path, *, ports: Mapping[str, int] | None = None, new_session: bool = False
    ) -> None:
        self.ports = pick_ports(JAEGER_PORTS, ports)
        self.ui_assets = jaeger_ui_assets()
        self.process = backend_process(
            "jaeger",
            [jaeger_binary(), "--config", str(JAEGER_CONFIG)],
            root,
            f"http://127.0.0.1:{self.ports['health']}/status",
            env=configs.jaeger_env(**self.ports, ui_assets=self.ui_assets),
            new_session=new_session,
        )

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['otlp_grpc']}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['query']}"

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The trace's spans, flattened (see :func:`jaeger_spans`); [] when unknown."""
        status, body = http_get(f"{self.query_url}/api/traces/{trace_id}")
        if status == 404:
            return []
        assert status == 200, f"GET /api/traces/{trace_id}: {status} {body[:300]!r}"
        return [s for t in json.loads(body)["data"] or [] for s in jaeger_spans(t)]

    def wait_trace(
        self, trace_id: str, *, services: set[str], min_spans: int = 1, timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Poll until the trace has ``min_spans`` spans from every one of ``services``."""
        last: list[dict[str, Any]] = []

        def complete() -> list[dict[str, Any]]:
            nonlocal last
            last = self.trace(trace_id)
            have = {s["service"] for s in last}
            return last if services <= have and len(last) >= min_spans else []

        try:
            return wait_for(complete, timeout=timeout, what=f"trace {trace_id} in Jaeger")
        except AssertionError as exc:
            seen = sorted((s["service"], s["name"]) for s in last)
            raise AssertionError(f"{exc}; spans so far: {seen}") from None

    def find_trace_ids(self, service: str, **params: str) -> set[str]:
        query = urllib.parse.urlencode({"service": service, **params})
        data = http_json(f"{self.query_url}/api/traces?{query}")["data"] or []
        return {t["traceID"] for t in data}


def jaeger_spans(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Jaeger API spans as {trace_id, span_id, parent_id (the CHILD_OF reference),
    refs [(refType, spanID)], name, service, kind, tags}."""
    out = []
    for span in trace["spans"]:
        tags = {t["key"]: t["value"] for t in span.get("tags", [])}
        refs = [(r["refType"], r["spanID"]) for r in span.get("references", [])]
        parents = [span_id for ref_type, span_id in refs if ref_type == "CHILD_OF"]
        out.append(
            {
                "trace_id": span["traceID"],
                "span_id": span["spanID"],
                "parent_id": parents[0] if parents else None,
                "refs": refs,
                "name": span["operationName"],
                "service": trace["processes"][span["processID"]]["serviceName"],
                "kind": tags.get("span.kind"),
                "tags": tags,
            }
        )
    return out


class VictoriaLogs:
    """VictoriaLogs, the log store the collector exports log records to, with
    its data under ``<root>/victorialogs`` (kept across restarts)."""

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        retention: str = LOG_RETENTION,
        new_session: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.data_dir = root / "victorialogs"
        self.process = backend_process(
            "victorialogs",
            [
                victorialogs_binary(),
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.data_dir}",
                # Records older than this are deleted (whole days at a time).
                f"-retentionPeriod={retention}",
            ],
            root,
            f"{self.url}/health",
            new_session=new_session,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def otlp_logs_endpoint(self) -> str:
        """Where the collector's otlp_http exporter sends log records."""
        return f"{self.url}/insert/opentelemetry/v1/logs"

    @property
    def ui_url(self) -> str:
        return f"{self.url}/select/vmui/"

    def query(self, logsql: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The records a LogsQL query selects (newest first), each a flat dict
        of fields: ``_msg`` (the body), ``_time``, ``trace_id``, ``span_id``,
        ``severity_text``, resource and record attributes by their names."""
        body = urllib.parse.urlencode({"query": logsql, "limit": str(limit)}).encode()
        text = http_text(f"{self.url}/select/logsql/query", body)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every record written inside one trace (LogsQL ``trace_id:<id>``)."""
        return self.query(f"trace_id:{trace_id}")


class Collector:
    """otelcol-wabot with the committed config, exporting to ``jaeger`` and
    ``victorialogs``."""

    def __init__(
        self,
        root: Path,
        jaeger: Jaeger,
        victorialogs: VictoriaLogs,
        *,
        ports: Mapping[str, int] | None = None,
        timings: Timings = COMMITTED_TIMINGS,
        new_session: bool = False,
    ) -> None:
        self.ports = pick_ports(COLLECTOR_PORTS, ports)
        self.storage_dir = root / "otelcol" / "storage"
        env = configs.collector_env(
            **self.ports,
            jaeger_otlp_grpc=jaeger.otlp_grpc_endpoint,
            victorialogs_logs=victorialogs.otlp_logs_endpoint,
            storage_dir=self.storage_dir,
            timings=timings,
        )
        self.process = backend_process(
            "otelcol",
            [otelcol_binary(), "--config", str(COLLECTOR_DIR / "config.yaml")],
            root,
            self.health_url,
            env=env,
            new_session=new_session,
        )

    @property
    def http_endpoint(self) -> str:
        """OTLP/HTTP base URL, as OTEL_EXPORTER_OTLP_ENDPOINT wants it."""
        return f"http://127.0.0.1:{self.ports['otlp_http']}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['otlp_grpc']}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['health']}/"

    @property
    def exporter_target(self) -> str:
        return f"127.0.0.1:{self.ports['prom_exporter']}"

    @property
    def self_metrics_target(self) -> str:
        return f"127.0.0.1:{self.ports['self_metrics']}"

    def post_otlp_json(self, signal: str, body: dict[str, Any]) -> None:
        """One OTLP/HTTP JSON export request to /v1/<signal>."""
        http_text(
            f"{self.http_endpoint}/v1/{signal}",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )

    def self_metrics(self) -> str:
        return http_text(f"http://{self.self_metrics_target}/metrics")


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
