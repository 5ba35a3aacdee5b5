"""An OTLP/HTTP receiver for tests: the services' real exporters send here.

It decodes the protobuf requests into plain dicts so tests can assert on what
was actually exported (spans, log records, metric points).
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.support.httpstub import HttpStub


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attrs(v.kvlist_value.values)
    return getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


class OtlpStore:
    """Decodes OTLP export requests (protobuf) and keeps what they carried."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.lock = threading.Lock()

    def receive(self, path: str, body: bytes) -> None:
        with self.lock:
            self.raw.append(body)
        if path.endswith("/v1/traces"):
            self._traces(body)
        elif path.endswith("/v1/logs"):
            self._logs(body)
        elif path.endswith("/v1/metrics"):
            self._metrics(body)

    def _traces(self, body: bytes) -> None:
        req = ExportTraceServiceRequest.FromString(body)
        out = []
        for rs in req.resource_spans:
            resource = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append(
                        {
                            "service": resource.get("service.name"),
                            "resource": resource,
                            "scope": ss.scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "trace_state": s.trace_state,
                            "name": s.name,
                            "kind": s.kind,
                            "attributes": attrs(s.attributes),
                            "links": [
                                {"trace_id": lk.trace_id.hex(), "span_id": lk.span_id.hex()}
                                for lk in s.links
                            ],
                            "status_code": s.status.code,
                            "events": [
                                {"name": e.name, "attributes": attrs(e.attributes)}
                                for e in s.events
                            ],
                        }
                    )
        with self.lock:
            self.spans.extend(out)

    def _logs(self, body: bytes) -> None:
        req = ExportLogsServiceRequest.FromString(body)
        out = []
        for rl in req.resource_logs:
            resource = attrs(rl.resource.attributes)
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    out.append(
                        {
                            "service": resource.get("service.name"),
                            "trace_id": r.trace_id.hex(),
                            "span_id": r.span_id.hex(),
                            "severity": r.severity_text,
                            "body": any_value(r.body),
                            "attributes": attrs(r.attributes),
                        }
                    )
        with self.lock:
            self.logs.extend(out)

    def _metrics(self, body: bytes) -> None:
        req = ExportMetricsServiceRequest.FromString(body)
        out = []
        for rm in req.resource_metrics:
            resource = attrs(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    if kind is None:
                        continue
                    for p in getattr(m, kind).data_points:
                        point: dict[str, Any] = {
                            "service": resource.get("service.name"),
                            "resource": resource,
                            "name": m.name,
                            "unit": m.unit,
                            "kind": kind,
                            "attributes": attrs(p.attributes),
                            "exemplars": [
                                {"trace_id": e.trace_id.hex(), "span_id": e.span_id.hex()}
                                for e in getattr(p, "exemplars", [])
                            ],
                        }
                        if kind == "histogram":
                            point["count"] = p.count
                            point["sum"] = p.sum
                        else:
                            point["value"] = p.as_double if p.HasField("as_double") else p.as_int
                        out.append(point)
        with self.lock:
            self.metrics.extend(out)

    # --- queries ------------------------------------------------------------
    def spans_of(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def logs_of(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.logs if r["trace_id"] == trace_id]

    def metric_points(self, name: str, service: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                p
                for p in self.metrics
                if p["name"] == name and (service is None or p["service"] == service)
            ]


class OtlpSink(OtlpStore, HttpStub):
    """An OTLP/HTTP receiver: collects everything exported to ``endpoint``."""

    def __init__(self) -> None:
        OtlpStore.__init__(self)
        HttpStub.__init__(self)

    def handle(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str, bytes]:
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.receive(path, body)
        return 200, "application/x-protobuf", b""

    @property
    def endpoint(self) -> str:
        return self.url


def kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def cumulative(points: list[dict[str, Any]], **attrs: Any) -> float:
    """Sum over processes and matching series of each series' latest value
    (counters are cumulative per process; a process is its service.instance.id)."""
    series: dict[tuple[Any, frozenset[tuple[str, Any]]], float] = {}
    for p in points:
        if all(p["attributes"].get(k) == v for k, v in attrs.items()):
            key = (p["resource"].get("service.instance.id"), frozenset(p["attributes"].items()))
            series[key] = p["value"]
    return sum(series.values())
