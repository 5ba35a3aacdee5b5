"""The collector itself, fed with hand-made OTLP (no services):

* the PII backstop (transform/pii) masks every phone-number and JID format
  the services' scrubber masks (the same vectors, tests/support/pii.py) in
  span names, status messages, event names, log bodies and attributes before
  Jaeger, VictoriaLogs and Prometheus see them, and keeps trace ids, stream
  entry ids, UUIDs and IPs;
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

import itertools
import json
import re
import secrets
import time
from typing import Any

from tests.support.pii import CONTEXTS, NOT_PHONES, PHONE_LIKE, digits_of, subscriber_digits
from tests.support.stack.alerting import Prometheus
from tests.support.stack.backend import Collector, Jaeger, VictoriaLogs
from tests.support.stack.net import http_get, http_text, wait_for
from wabot_shared import names

REDACTED = "[REDACTED]"
# Texts with phone numbers and JIDs: every format in every context, and
# several numbers in a row (what the patterns' separators must cope with).
PII_TEXTS = [context.format(value) for value in PHONE_LIKE for context in CONTEXTS]
PII_TEXTS += [" ".join([value] * 3) for value in PHONE_LIKE]
PII_TEXTS += [f"{a}, {b} {a}" for a, b in itertools.pairwise(PHONE_LIKE)]
# Texts that only look like numbers: they must come out unchanged.
KEPT_TEXTS = [*NOT_PHONES, "entry 1764321302000-0 failed after 1764321302000-1"]


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


def log_record(
    trace_id: str, span_id: str, body: dict[str, Any], **attributes: str
) -> dict[str, Any]:
    return {
        "timeUnixNano": str(time.time_ns()),
        "severityNumber": 9,
        "severityText": "INFO",
        "body": body,
        "attributes": attrs(**attributes),
        "traceId": trace_id,
        "spanId": span_id,
    }


def plain(kvs: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP JSON attributes -> {key: scalar value}."""
    return {kv["key"]: next(iter(kv["value"].values()), None) for kv in kvs}


def new_ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def assert_redacted(where: str, original: str, stored: str) -> None:
    assert REDACTED in stored, f"{where}: {original!r} came out as {stored!r}"
    for value in PHONE_LIKE:
        if value in original:
            assert subscriber_digits(value) not in digits_of(stored), (where, original, stored)


def test_every_scrubber_format_is_redacted_in_names_statuses_bodies_and_attributes(
    collector: Collector, jaeger: Jaeger, victorialogs: VictoriaLogs
) -> None:
    trace_id = secrets.token_hex(16)
    environment = "synthetic-" + trace_id[:8]
    cases = {secrets.token_hex(8): (text, True) for text in PII_TEXTS}
    cases |= {secrets.token_hex(8): (text, False) for text in KEPT_TEXTS}
    spans = []
    records = []
    for span_id, (text, _) in cases.items():
        one = span(trace_id, span_id, note=text, case=span_id)
        one["name"] = text
        one["status"] = {"code": 2, "message": text}
        one["events"] = [{"name": text, "timeUnixNano": one["endTimeUnixNano"]}]
        spans.append(one)
        records.append(log_record(trace_id, span_id, {"stringValue": text}, note=text))
        # A map body: its values are redacted too.
        records.append(log_record(trace_id, span_id, {"kvlistValue": {"values": attrs(m=text)}}))
    request = export_request("traces", spans, environment)
    request["resourceSpans"][0]["resource"]["attributes"] += attrs(host__note=PHONE_LIKE[0])
    collector.post_otlp_json("traces", request)
    collector.post_otlp_json("logs", export_request("logs", records, environment))

    # Jaeger's OTLP view (api_v3) keeps name, status message and event names as sent.
    def stored_spans() -> dict[str, dict[str, Any]]:
        status, body = http_get(f"{jaeger.query_url}/api/v3/traces/{trace_id}")
        if status != 200:
            return {}
        answer = json.loads(body)["result"]
        found = {
            s["spanId"]: {**s, "resource": rs["resource"]}
            for rs in answer["resourceSpans"]
            for ss in rs["scopeSpans"]
            for s in ss["spans"]
        }
        return found if len(found) == len(cases) else {}

    stored = wait_for(stored_spans, timeout=30, what=f"the {len(cases)} spans in Jaeger")
    for span_id, (text, has_pii) in cases.items():
        got = stored[span_id]
        fields = {
            "span name": got["name"],
            "status message": got["status"].get("message", ""),
            "event name": got["events"][0]["name"],
            "attribute": plain(got["attributes"])["note"],
        }
        for where, value in fields.items():
            if has_pii:
                assert_redacted(where, text, value)
            else:
                assert value == text, f"{where}: {text!r} came out as {value!r}"
        assert got["traceId"] == trace_id
        assert plain(got["resource"]["attributes"])["host.note"] == REDACTED

    # VictoriaLogs: the body is `_msg`, attributes are fields by name.
    def logged() -> list[dict[str, Any]]:
        found = victorialogs.by_trace(trace_id)
        return found if len(found) == len(records) else []

    found = wait_for(logged, timeout=30, what=f"the {len(records)} log records in VictoriaLogs")
    by_span: dict[str, list[dict[str, Any]]] = {}
    for record in found:
        by_span.setdefault(record["span_id"], []).append(record)
    for span_id, (text, has_pii) in cases.items():
        [plain_body] = [r for r in by_span[span_id] if "note" in r]
        [map_body] = [r for r in by_span[span_id] if "m" in r]
        bodies = {
            "log body": plain_body["_msg"],
            "log attribute": plain_body["note"],
            # VictoriaLogs stores a map body's entries as fields.
            "map body value": map_body["m"],
        }
        for where, value in bodies.items():
            if has_pii:
                assert_redacted(where, text, value)
            else:
                assert value == text, f"{where}: {text!r} came out as {value!r}"
    everything = json.dumps(found) + json.dumps(stored)
    for value in PHONE_LIKE:
        assert value not in everything, f"{value!r} reached a backend"


def test_metric_data_point_attributes_are_redacted(collector: Collector) -> None:
    environment = "synthetic-" + secrets.token_hex(4)
    now = str(time.time_ns())
    points = [
        {"timeUnixNano": now, "asInt": "1", "attributes": attrs(note=text, case=f"c{i}")}
        for i, text in enumerate(PII_TEXTS)
    ]
    metric = {"name": "wabot.test.pii", "gauge": {"dataPoints": points}}
    env = f'deployment_environment_name="{environment}"'

    def exposed() -> list[str]:
        # Re-sent each time: the exporter drops series not refreshed within
        # its (test-shortened) metric_expiration.
        collector.post_otlp_json("metrics", export_request("metrics", [metric], environment))
        text = http_text(f"http://{collector.exporter_target}/metrics")
        lines = [line for line in text.splitlines() if line.startswith("wabot_test_pii{")]
        mine = [line for line in lines if env in line]
        return mine if len(mine) == len(PII_TEXTS) else []

    lines = wait_for(exposed, timeout=20, what="the data points in the exporter", interval=0.5)
    for line in lines:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        assert_redacted("data point attribute", PII_TEXTS[int(labels["case"][1:])], labels["note"])


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
