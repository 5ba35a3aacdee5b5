"""The collector itself, fed with hand-made OTLP (no services):

* the redaction backstop masks phone numbers and JIDs in span attributes and
  log bodies before Jaeger and the log file see them, and keeps stream ids;
* its Prometheus exporter translates names, keeps only the chosen resource
  labels and passes a histogram exemplar on to Prometheus; its self-metrics
  are scraped;
* a Jaeger outage loses nothing: spans sent while Jaeger is down wait in the
  persistent (file-backed) sending queue, survive a collector restart, and
  arrive once Jaeger is back.

Each test uses fresh trace ids and its own deployment.environment.name, so
they can share the session's backend with the pipeline tests.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from tests.support.stack.alerting import Prometheus
from tests.support.stack.backend import Collector, Jaeger
from tests.support.stack.net import http_text, wait_for
from wabot_shared import names

JID = "5511987650001@s.whatsapp.net"
PHONE = "5511987650001"
STREAM_ID = "1764331200000-0"  # 13 digits: must NOT be mistaken for a phone number


def attrs(**kv: str) -> list[dict[str, Any]]:
    """OTLP/JSON attributes; `__` in a keyword stands for a dot."""
    return [{"key": k.replace("__", "."), "value": {"stringValue": v}} for k, v in kv.items()]


def export_request(signal: str, items: list[dict[str, Any]], environment: str) -> dict[str, Any]:
    """One OTLP/JSON export request (one resource, one scope) for ``signal``."""
    resource = {
        "attributes": attrs(
            service__name="worker",
            service__namespace="wabot",
            service__instance__id="synthetic-" + environment,
            deployment__environment__name=environment,
        )
    }
    scope_key, items_key, resource_key = {
        "traces": ("scopeSpans", "spans", "resourceSpans"),
        "logs": ("scopeLogs", "logRecords", "resourceLogs"),
        "metrics": ("scopeMetrics", "metrics", "resourceMetrics"),
    }[signal]
    return {
        resource_key: [
            {"resource": resource, scope_key: [{"scope": {"name": "synthetic"}, items_key: items}]}
        ]
    }


def span(trace_id: str, span_id: str, **attributes: str) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "name": names.process_span_name(names.DEFAULT_STREAM),
        "kind": 5,  # CONSUMER
        "startTimeUnixNano": str(now - 300_000_000),
        "endTimeUnixNano": str(now),
        "status": {"code": 2},  # ERROR
        "attributes": attrs(**attributes),
    }


def new_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def test_phone_numbers_are_redacted_before_jaeger_and_the_log_file(
    collector: Collector, jaeger: Jaeger
) -> None:
    trace_id, span_id = new_ids()
    environment = "synthetic-" + trace_id[:8]
    collector.post_otlp_json(
        "traces",
        export_request(
            "traces",
            [
                span(
                    trace_id,
                    span_id,
                    whatsapp__remote_jid=JID,
                    note=f"call +{PHONE} now",
                    messaging__message__id=STREAM_ID,
                )
            ],
            environment,
        ),
    )
    record = {
        "timeUnixNano": str(time.time_ns()),
        "severityNumber": 9,
        "severityText": "INFO",
        "body": {"stringValue": f"stored message from {JID} ({PHONE})"},
        "attributes": attrs(sender=PHONE),
        "traceId": trace_id,
        "spanId": span_id,
    }
    collector.post_otlp_json("logs", export_request("logs", [record], environment))

    [stored] = jaeger.wait_trace(trace_id, services={"worker"})
    assert stored["tags"]["whatsapp.remote_jid"] == "[REDACTED]"
    assert stored["tags"]["note"] == "call [REDACTED] now"
    assert stored["tags"]["messaging.message.id"] == STREAM_ID, "stream ids are not phones"

    def my_records() -> list[dict[str, Any]]:
        return [r for r in collector.log_records() if r.get("traceId") == trace_id]

    [logged] = wait_for(my_records, timeout=20, what="the log record in the collector's file")
    assert logged["body"]["stringValue"] == "stored message from [REDACTED] ([REDACTED])"
    assert logged["spanId"] == span_id
    assert {"key": "sender", "value": {"stringValue": "[REDACTED]"}} in logged["attributes"]
    assert PHONE not in logged["line"], "the phone number is still somewhere in the export"


def test_exporter_names_labels_exemplar_and_self_metrics(
    collector: Collector, prometheus: Prometheus
) -> None:
    trace_id, span_id = new_ids()
    environment = "synthetic-" + trace_id[:8]
    now = time.time_ns()
    histogram_point = {
        "startTimeUnixNano": str(now - 10**9),
        "timeUnixNano": str(now),
        "count": "1",
        "sum": 0.3,
        "explicitBounds": [0.1, 1.0],
        "bucketCounts": ["0", "1", "0"],
        "exemplars": [
            {"timeUnixNano": str(now), "asDouble": 0.3, "traceId": trace_id, "spanId": span_id}
        ],
    }
    metrics = [
        {
            "name": "whatsapp.queue.lag",
            "unit": "{message}",
            "gauge": {"dataPoints": [{"timeUnixNano": str(now), "asInt": "3"}]},
        },
        {
            "name": "whatsapp.message.end_to_end.duration",
            "unit": "s",
            "histogram": {"aggregationTemporality": 2, "dataPoints": [histogram_point]},
        },
    ]
    collector.post_otlp_json(
        "traces", export_request("traces", [span(trace_id, span_id)], environment)
    )

    def export_metrics() -> None:
        # As an SDK would: the exporter drops series not refreshed within its
        # (test-shortened) metric_expiration.
        collector.post_otlp_json("metrics", export_request("metrics", metrics, environment))

    # The exporter: classic names, only service.* / deployment.* resource labels,
    # spanmetrics with status, and the exemplar (OpenMetrics exposition).
    env = f'deployment_environment_name="{environment}"'
    expected = {
        "whatsapp_queue_lag": rf"^whatsapp_queue_lag\{{([^}}]*{env}[^}}]*)\}} 3",
        "spanmetrics of the ERROR span": (
            rf'^traces_span_metrics_calls_total\{{[^}}]*{env}[^}}]*status_code="STATUS_CODE_ERROR"'
        ),
        "the histogram exemplar": (
            rf"^whatsapp_message_end_to_end_duration_seconds_bucket\{{[^}}]*{env}.*"
            rf'\}} 1 # \{{trace_id="{trace_id}",span_id="{span_id}"\}}'
        ),
    }
    missing: list[str] = []

    def scrape() -> str:
        export_metrics()
        text = http_text(
            f"http://{collector.exporter_target}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        # All at once: a scrape can run while the exporter is half-way through
        # one export request.
        missing[:] = [what for what, line in expected.items() if not re.search(line, text, re.M)]
        return "" if missing else text

    try:
        text = wait_for(
            scrape, timeout=20, what="the synthetic telemetry in the exporter", interval=0.5
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing from the exposition: {missing}") from None
    lag = re.search(expected["whatsapp_queue_lag"], text, re.M)
    assert lag
    assert 'service_name="worker"' in lag.group(1)
    assert "telemetry_sdk" not in lag.group(1)  # only the chosen resource attributes

    # Prometheus stored the exemplar (what Grafana links to Jaeger with).
    selector = (
        "whatsapp_message_end_to_end_duration_seconds_bucket"
        f'{{deployment_environment_name="{environment}"}}'
    )

    def exemplars() -> list[dict[str, Any]]:
        export_metrics()
        return prometheus.exemplars(selector)

    found = wait_for(exemplars, timeout=20, what="the exemplar in Prometheus", interval=0.5)
    assert found[0]["exemplars"][0]["labels"] == {"trace_id": trace_id, "span_id": span_id}
    assert found[0]["seriesLabels"]["job"] == "wabot/worker"

    # Both scrape jobs are up, and the collector's self-metrics count our spans.
    prometheus.wait_scraping({"wabot", "otel-collector"})
    self_metrics = collector.self_metrics()
    assert re.search(r"^otelcol_receiver_accepted_spans\{.*\} [1-9]", self_metrics, re.M)


def test_spans_sent_during_a_jaeger_outage_arrive_after_it_restarts(
    collector: Collector, jaeger: Jaeger
) -> None:
    jaeger.process.stop()
    try:
        log_mark = len(collector.process.log_text())
        sent = [new_ids() for _ in range(3)]
        for trace_id, span_id in sent:
            collector.post_otlp_json(
                "traces", export_request("traces", [span(trace_id, span_id)], "outage")
            )

        # The collector tried Jaeger, failed, and kept the batch for a retry
        # (rather than dropping it): proof the outage was actually hit.
        def retrying() -> bool:
            new = collector.process.log_text()[log_mark:]
            return "otlp_grpc/jaeger" in new and "Will retry" in new

        wait_for(retrying, timeout=30, what="the collector retrying the export to Jaeger")
        # The queue is on disk: even a collector restart mid-outage loses nothing.
        collector.process.stop()
        collector.process.start()
    finally:
        # Same ports, fresh (empty) in-memory storage.
        jaeger.process.start()

    for trace_id, span_id in sent:
        [stored] = jaeger.wait_trace(trace_id, services={"worker"}, timeout=60)
        assert stored["span_id"] == span_id
