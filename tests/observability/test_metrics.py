"""Prometheus has the pipeline's metrics and span metrics for both services,
latency exemplars lead to real traces in Jaeger, and every PromQL expression of
the dashboards, recording rules and alert rules evaluates on live data and
returns something.

Each test selects its own series with its unique deployment_environment_name
(set through OTEL_RESOURCE_ATTRIBUTES; Grafana's `$env` variable).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tests.observability.opsfiles import (
    INFRA_ENVIRONMENT,
    dashboard_prom_exprs,
    grafana_to_promql,
    load_alert_rules,
    load_recording_rules,
    strip_thresholds,
)
from tests.support.evolution import EvolutionStub
from tests.support.stack.alerting import Prometheus
from tests.support.stack.backend import Jaeger, ObsStack
from tests.support.stack.net import free_port, wait_for
from tests.support.stack.servers import RedisServer


def value(prometheus: Prometheus, expr: str) -> float | None:
    """The single value of ``expr`` (summed if several series); None when empty."""
    result = prometheus.query(f"sum({expr})")
    return float(result[0]["value"][1]) if result else None


def wait_value(prometheus: Prometheus, expr: str, expected: float, timeout: float = 30) -> None:
    last: list[float | None] = [None]

    def reached() -> bool:
        last[0] = value(prometheus, expr)
        return last[0] == expected

    try:
        wait_for(reached, timeout=timeout, what=f"{expr} == {expected}", interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last value {last[0]}") from None


def test_pipeline_metrics_span_metrics_and_exemplars(
    obs_stack: ObsStack, samples: dict[str, dict[str, Any]], jaeger: Jaeger, prometheus: Prometheus
) -> None:
    obs_stack.start_ingest()
    obs_stack.start_worker()
    n = 4
    trace_ids = {obs_stack.post_message(samples["messages-upsert-text"]) for _ in range(n)}
    obs_stack.wait_rows(n)
    env = f'deployment_environment_name="{obs_stack.environment}"'
    ingest = f'service_name="ingest", {env}'
    worker = f'service_name="worker", {env}'
    stream = obs_stack.stream
    dest = f'messaging_destination_name="{stream}"'

    # The services' own instruments, by service.
    for expr in (
        f"messaging_client_sent_messages_total{{{ingest}, {dest}}}",
        f'whatsapp_webhook_events_total{{{ingest}, whatsapp_outcome="queued"}}',
        f'http_server_request_duration_seconds_count{{{ingest}, http_route="/webhooks/evolution"}}',
        f"messaging_client_consumed_messages_total{{{worker}, {dest}}}",
        f'whatsapp_message_outcomes_total{{{worker}, whatsapp_outcome="processed"}}',
        f"messaging_process_duration_seconds_count{{{worker}}}",
        f"whatsapp_message_end_to_end_duration_seconds_count{{{worker}}}",
        f'whatsapp_instance_resolutions_total{{{worker}, whatsapp_resolution="unresolved"}}',
    ):
        wait_value(prometheus, expr, n)
    # Queue gauges (sampled by the worker) and its heartbeat.
    for gauge in ("length", "lag", "pending", "dead_letter_length", "oldest_age_seconds"):
        name = f"whatsapp_queue_{gauge}{{{worker}, {dest}}}"
        assert prometheus.query(name), f"no {name}"
    assert prometheus.query(f"whatsapp_worker_heartbeat_seconds{{{worker}}}")

    # Span metrics (spanmetrics connector) for both services' entry spans.
    for service, span_name, kind in (
        ("ingest", "POST /webhooks/evolution", "SERVER"),
        ("ingest", f"send {stream}", "PRODUCER"),
        ("worker", f"process {stream}", "CONSUMER"),
    ):
        labels = (
            f'service_name="{service}", {env}, span_name="{span_name}", '
            f'span_kind="SPAN_KIND_{kind}", status_code="STATUS_CODE_UNSET"'
        )
        wait_value(prometheus, f"traces_span_metrics_calls_total{{{labels}}}", n)
        assert value(prometheus, f"traces_span_metrics_duration_seconds_count{{{labels}}}") == n

    # End-to-end latency exemplars: trace ids of our messages, real traces in
    # Jaeger, pointing at the span the latency was recorded in (worker process).
    selector = f"whatsapp_message_end_to_end_duration_seconds_bucket{{{worker}}}"
    found = wait_for(
        lambda: prometheus.exemplars(selector),
        timeout=20,
        what=f"exemplars of {selector}",
        interval=0.25,
    )
    exemplars = [e["labels"] for series in found for e in series["exemplars"]]
    assert exemplars
    for labels in exemplars:
        assert labels["trace_id"] in trace_ids, f"exemplar of an unknown trace: {labels}"
        spans = jaeger.wait_trace(labels["trace_id"], services={"ingest", "worker"}, min_spans=3)
        [span] = [s for s in spans if s["span_id"] == labels["span_id"]]
        assert (span["service"], span["name"]) == ("worker", f"process {stream}")


# Expressions that rightly return nothing while the collector is healthy: the
# counters only exist once the collector failed to export/enqueue or its
# memory limiter refused data, which healthy traffic (and this test) does not
# cause. Their panels' other queries (sent / accepted) do return data.
EMPTY_WHILE_HEALTHY = {
    f"collector-health.json: Exported {signal} [{ref}]"
    for signal in ("spans", "metric points", "log records")
    for ref in "BC"  # B: exporter_send_failed_*, C: exporter_enqueue_failed_*
} | {"collector-health.json: Memory limiter [B]"}  # processor_memory_limiter_refused_*


def test_every_dashboard_and_alert_expression_returns_data(
    obs_stack: ObsStack,
    samples: dict[str, dict[str, Any]],
    prometheus: Prometheus,
    evolution_stub: EvolutionStub,
) -> None:
    """Traffic of every kind the dashboards show (stored, duplicate, ignored,
    unauthorized, dead-lettered, refused with 503), then each expression with
    Grafana's variables filled in ($env = this test's environment) and each
    alert's watched quantity (its expression without the threshold) must
    return data."""
    obs_stack.start_ingest()
    # Replies on, so the conversation panels (outbox, reply latency, handler) have data.
    obs_stack.register_instance(samples["messages-upsert-text"]["instance"])
    obs_stack.start_worker(
        REPLY_ENABLED="true",
        EVOLUTION_API_URL=evolution_stub.url,
        EVOLUTION_API_KEY="evolution-key-0123456789",
    )
    sample = samples["messages-upsert-text"]
    for _ in range(3):
        obs_stack.post_message(sample)
    obs_stack.post_message(sample, message_id="OBSDUPLICATE")
    obs_stack.post_message(sample, message_id="OBSDUPLICATE")  # -> outcome "duplicate"
    unregistered = {**sample, "instance": "clinic-nowhere"}
    obs_stack.post_message(unregistered, message_id="OBSUNRESOLVED")  # -> a resolution fallback
    assert obs_stack.post(samples["connection-update"]).status_code == 202  # ignored
    assert obs_stack.post(sample, auth=False).status_code == 401
    obs_stack.xadd({"payload": "{not json"})  # poison -> dead-lettered, ERROR span
    obs_stack.wait_rows(5)

    # A 503: an ingest whose Redis went away (answers 503 + Retry-After).
    with tempfile.TemporaryDirectory(prefix="wabot-redis-503-") as tmp:
        doomed = RedisServer(port=free_port(), dir=Path(tmp))
        doomed.start()
        try:
            obs_stack.start_ingest(REDIS_URL=doomed.url)
        finally:
            doomed.stop()
        resp = obs_stack.post(sample)
    assert resp.status_code == 503, resp.text

    # The infrastructure dashboard's $env is the exporters' target label
    # (prometheus.yml), the others' this test's services' environment.
    exprs = [
        (
            where,
            grafana_to_promql(
                expr,
                interval="1m",
                variables=INFRA_ENVIRONMENT
                if where.startswith("infrastructure.json")
                else obs_stack.environment,
            ),
        )
        for where, expr in dashboard_prom_exprs()
    ]
    exprs += [
        (f"alerts.yml: {rule['alert']} (without threshold)", strip_thresholds(rule["expr"]))
        for rule in load_alert_rules()
    ]
    exprs += [(f"alerts.yml: {rule['record']}", rule["expr"]) for rule in load_recording_rules()]
    assert len(exprs) > 40
    unknown = EMPTY_WHILE_HEALTHY - {where for where, _ in exprs}
    assert not unknown, f"EMPTY_WHILE_HEALTHY names expressions that do not exist: {unknown}"
    for where, expr in exprs:  # each one is valid (an error answer raises here)
        try:
            prometheus.query(expr)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None

    expected = [(w, e) for w, e in exprs if w not in EMPTY_WHILE_HEALTHY]
    missing: list[str] = []

    def all_have_data() -> bool:
        missing[:] = [f"{w}: {e}" for w, e in expected if not prometheus.query(e)]
        return not missing

    try:
        wait_for(all_have_data, timeout=45, what="data for every expression", interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still empty:\n" + "\n".join(missing)) from None

    # The rules themselves evaluate without errors in Prometheus.
    for rule in prometheus.rules():
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
