"""The standard OTEL_* variables are honoured as the SDK defines them."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.support.otlp import OtlpStore
from tests.support.stack.net import free_port, wait_for
from tests.support.stack.pipeline import Stack


class GrpcSink:
    """OTLP/gRPC receiver feeding the same decoding as the HTTP sink."""

    def __init__(self) -> None:
        self.port = free_port()
        self.decoder = decoder = OtlpStore()

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                decoder.receive("/v1/traces", request.SerializeToString())
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                decoder.receive("/v1/metrics", request.SerializeToString())
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                decoder.receive("/v1/logs", request.SerializeToString())
                return logs_service_pb2.ExportLogsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")


@pytest.fixture
def grpc_sink() -> Iterator[GrpcSink]:
    sink = GrpcSink()
    sink.server.start()
    try:
        yield sink
    finally:
        sink.server.stop(grace=None)


def test_grpc_protocol_exports_all_three_signals(
    stack: Stack, samples: dict[str, dict[str, Any]], grpc_sink: GrpcSink
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{grpc_sink.port}",
    }
    stack.start_ingest(**env)
    stack.start_worker(**env)
    trace_id = stack.post(samples["messages-upsert-text"]).json()["trace_id"]
    sink = grpc_sink.decoder
    wait_for(
        lambda: {s["service"] for s in sink.spans_of(trace_id)} == {"ingest", "worker"},
        timeout=20,
        what="spans over gRPC from both services",
    )
    wait_for(lambda: sink.logs_of(trace_id), timeout=20, what="log records over gRPC")
    wait_for(
        lambda: sink.metric_points("messaging.client.sent.messages", "ingest"),
        timeout=20,
        what="metrics over gRPC",
    )
    assert stack.sink.spans_of(trace_id) == []  # nothing went to the HTTP sink


def test_service_name_and_resource_attributes_from_env(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    stack.start_ingest(
        OTEL_SERVICE_NAME="ingest-eu",
        OTEL_RESOURCE_ATTRIBUTES=f"test.run.id={stack.run_id},"
        "deployment.environment.name=staging,cloud.region=gru",
    )
    stack.start_worker()
    trace_id = stack.post(samples["messages-upsert-text"]).json()["trace_id"]
    spans = wait_for(
        lambda: [s for s in stack.sink.spans_of(trace_id) if s["service"] == "ingest-eu"],
        timeout=20,
        what="spans of the renamed service",
    )
    resource = spans[0]["resource"]
    assert resource["deployment.environment.name"] == "staging"
    assert resource["cloud.region"] == "gru"
    assert resource["service.namespace"] == "wabot"
    assert resource["service.version"]
    assert len(resource["service.instance.id"]) == 36
    worker = wait_for(
        lambda: [s for s in stack.sink.spans_of(trace_id) if s["service"] == "worker"],
        timeout=20,
        what="worker spans",
    )
    assert worker[0]["resource"]["deployment.environment.name"] == "test"  # from APP_ENV


def test_sampler_always_off_exports_no_spans_but_still_processes(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    stack.start_ingest(OTEL_TRACES_SAMPLER="always_off")
    stack.start_worker(OTEL_TRACES_SAMPLER="parentbased_always_off")
    resp = stack.post(samples["messages-upsert-text"])
    assert resp.status_code == 202
    trace_id = resp.json()["trace_id"]
    rows = stack.wait_rows(1)
    assert rows[0]["trace_id"] == trace_id  # the id exists even when not sampled
    wait_for(
        lambda: stack.metric_points("whatsapp.message.outcomes", "worker"),
        timeout=10,
        what="metrics still exported",
    )
    assert stack.sink.spans_of(trace_id) == []


def test_sdk_disabled_runs_the_pipeline_without_telemetry(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    stack.start_ingest(OTEL_SDK_DISABLED="true")
    stack.start_worker(OTEL_SDK_DISABLED="true")
    resp = stack.post(samples["messages-upsert-text"])
    assert resp.status_code == 202
    assert resp.json()["trace_id"] is None
    rows = stack.wait_rows(1)
    assert rows[0]["trace_id"] is None
    stack.stop_all()
    assert stack.metric_points("messaging.client.sent.messages") == []
    # Logs still go to stdout as JSON.
    assert any(r.get("message") == "webhook queued" for r in stack.services[0].json_logs())
