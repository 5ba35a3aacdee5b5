"""Generator of the Grafana dashboards in grafana/dashboards/ (grafana-foundation-sdk).

    uv run python grafana/generate.py          # rewrite grafana/dashboards/*.json
    uv run python grafana/generate.py --check  # exit 1 if the committed JSON differs

(`make dashboards` runs the first.) Edit this file, never the JSON: a test
checks that the committed files are exactly what this file generates.

Panels that sit next to an alert show the alert's own recording rule from
prometheus/alerts.yml (the stats row, queue age, heartbeat age, span error
ratio), so a number on a dashboard is the number the alert evaluates. Panels
that need exemplars (latency) or Grafana's `$__rate_interval` resolution query
the raw series. Every pipeline query is filtered by the `$env` variable
(deployment_environment_name); the collector is shared, so its dashboard is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUT_DIR = Path(__file__).resolve().parent / "dashboards"

# Provisioned with these fixed uids (grafana/provisioning/datasources/).
PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid="prometheus")
JAEGER = model.DataSourceRef(type_val="jaeger", uid="jaeger")

ENV = 'deployment_environment_name=~"$env"'
RATE = "[$__rate_interval]"
STREAM = "whatsapp:inbound"
# Label matchers used in several queries.
CODE_5XX = 'http_response_status_code=~"5.."'
ERRORS_ONLY = 'error_type!=""'
NO_ERROR = 'error_type=""'
PROCESSED = 'whatsapp_outcome="processed"'
DEAD_LETTERED = 'whatsapp_outcome="dead_lettered"'
NOT_INSTANCE = 'whatsapp_resolution!="instance"'
SPAN_ERROR = 'status_code="STATUS_CODE_ERROR"'


# ----------------------------------------------------------------- PromQL ---
def sel(metric: str, *matchers: str) -> str:
    """``metric{matchers...}``; matchers are PromQL label matchers."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def ingest(metric: str, *matchers: str) -> str:
    return sel(metric, 'service_name="ingest"', ENV, *matchers)


def worker(metric: str, *matchers: str) -> str:
    return sel(metric, 'service_name="worker"', ENV, *matchers)


def rate(selector: str) -> str:
    return f"rate({selector}{RATE})"


def quantile(q: float, buckets: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) ({buckets}))"


# Recording rules of prometheus/alerts.yml (tests check that each exists).
HTTP_BY_CODE = "env_code:http_server_requests:rate5m"
ENTRY_CALLS = "env_service_span:traces_span_metrics_entry_calls:rate5m"
BACKLOG = "env_destination:whatsapp_queue_backlog:max"
OLDEST_AGE = "env_destination:whatsapp_queue_oldest_age_seconds:max"
DEAD_LETTERS = "env_destination:whatsapp_queue_dead_letter_length:max"
E2E_BUCKETS = "env_le:whatsapp_message_end_to_end_duration_seconds_bucket:rate5m"
HEARTBEAT_AGE = "env_instance:whatsapp_worker_heartbeat_age_seconds"
DROPPED = "job:otelcol_dropped_items:rate5m"
REDIS_MEMORY = "env_instance:redis_memory_used:ratio"
PG_CONNECTIONS = "env_instance:pg_connections:ratio"


# ---------------------------------------------------------------- queries ---
def query(
    ref: str, expr: str, legend: str = "", *, instant: bool = False, exemplar: bool = False
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().ref_id(ref).datasource(PROMETHEUS).expr(expr).legend_format(legend)
    q = q.instant() if instant else q.range()
    return q.exemplar(True) if exemplar else q


class JaegerSearch(cogvariants.Dataquery):
    """A Jaeger datasource search query (the SDK has no Jaeger query type)."""

    def __init__(self, ref: str, service: str, tags: str, limit: int) -> None:
        self.ref, self.service, self.tags, self.limit = ref, service, tags, limit

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref,
            "datasource": JAEGER,
            "queryType": "search",
            "service": self.service,
            "tags": self.tags,
            "limit": self.limit,
        }


@dataclass
class JaegerSearchBuilder(cogbuilder.Builder[JaegerSearch]):
    query: JaegerSearch

    def build(self) -> JaegerSearch:
        return self.query


# ----------------------------------------------------------------- panels ---
Steps = Sequence[tuple[str, float | None]]


def thresholds(steps: Steps) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for color, value in steps])
    )


def stat_panel(
    title: str, description: str, expr: str, unit: str, steps: Steps = (("green", None),)
) -> stat.Panel:
    """One current figure (instant query), coloured by its alert's threshold."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .with_target(query("A", expr, instant=True))
        .unit(unit)
        .thresholds(thresholds(steps))
        .reduce_options(
            common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)
        )
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .text_mode(common.BigValueTextMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .height(4)
    )


def graph_panel(
    title: str,
    description: str,
    targets: Iterable[prometheus.Dataquery],
    unit: str,
    *,
    stacked: bool = False,
    threshold: float | None = None,
    width: int = 8,
) -> timeseries.Panel:
    """A time series panel; ``threshold`` draws its alert's threshold as a red line."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .min(0)
        .draw_style(common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common_builders.StackingConfig()
            .mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
            .group("A")
        )
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .height(8)
        .span(width)
    )
    for target in targets:
        panel = panel.with_target(target)
    if threshold is not None:
        panel = panel.thresholds(
            thresholds((("green", None), ("red", threshold)))
        ).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE)
        )
    return panel


def percentiles(buckets: str, qs: Sequence[float], *, exemplar: bool) -> list[prometheus.Dataquery]:
    refs = "ABCDEFGH"
    return [
        query(refs[i], quantile(q, rate(buckets)), f"p{round(q * 100)}", exemplar=exemplar)
        for i, q in enumerate(qs)
    ]


# -------------------------------------------------------------- dashboards ---
class Layout:
    """A dashboard under construction: rows and panels flow left to right."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.board = (
            dashboard.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(["wabot"])
            .editable()
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .timezone("browser")
            .refresh("30s")
            .time("now-1h", "now")
            .version(1)
            .annotations([])
            .link(
                dashboard.DashboardLink("wabot dashboards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags(["wabot"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )

    def row(self, title: str) -> Self:
        self.board = self.board.with_row(dashboard.Row(title))
        return self

    def panels(self, *panels: cogbuilder.Builder[model.Panel], width: int | None = None) -> Self:
        for panel in panels:
            sized = (
                panel.span(width)
                if width is not None and isinstance(panel, stat.Panel | timeseries.Panel)
                else panel
            )
            self.board = self.board.with_panel(sized)
        return self

    def build(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(json.dumps(self.board.build(), cls=JSONEncoder))
        # Stable ids in layout order: links to a panel (viewPanel=<id>) keep working.
        for number, panel in enumerate(doc["panels"], start=1):
            panel["id"] = number
        return doc


def env_variable(
    expr: str = "label_values(target_info, deployment_environment_name)",
) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable("env")
        .label("Environment")
        .description("deployment.environment.name of the services (a label of every series)")
        .datasource(PROMETHEUS)
        .query(
            {"qryType": 1, "query": expr, "refId": "PrometheusVariableQueryEditor-VariableQuery"}
        )
        .include_all(True)
        .all_value(".*")
        .multi(True)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def pipeline_overview() -> dict[str, Any]:
    layout = Layout(
        "wabot-pipeline",
        "wabot / Pipeline overview",
        f"wabot message pipeline (ingest -> Redis stream {STREAM} -> worker -> PostgreSQL): "
        "ingest request rate/errors/latency, queue depth, lag and age of the oldest waiting "
        "message, worker throughput, end-to-end latency with trace exemplars, dead letters, "
        "instance-resolution fallbacks and errors by type. The top row shows what the alerts "
        "evaluate (prometheus/alerts.yml recording rules). Data: Prometheus (uid prometheus) "
        "scraping the OpenTelemetry Collector; traces: Jaeger (uid jaeger).",
    )
    layout.board = layout.board.with_variable(env_variable())
    http_5xx = sel(HTTP_BY_CODE, ENV, CODE_5XX)
    layout.panels(
        stat_panel(
            "Webhook requests/s",
            "HTTP requests handled by ingest (all routes and statuses, 5m rate).",
            f"sum({sel(HTTP_BY_CODE, ENV)})",
            "reqps",
        ),
        stat_panel(
            "Ingest 5xx ratio",
            "Share of ingest HTTP responses with a 5xx status (5m). Alert Ingest5xxRateHigh at 5%.",
            f"(sum({http_5xx}) or vector(0)) / sum({sel(HTTP_BY_CODE, ENV)})",
            "percentunit",
            (("green", None), ("orange", 0.01), ("red", 0.05)),
        ),
        stat_panel(
            "Queue backlog",
            f"Entries of {STREAM} not yet delivered to the workers group + delivered but not "
            "acked (the largest of the selected streams). Alert QueueBacklog at 100.",
            f"max({sel(BACKLOG, ENV)})",
            "short",
            (("green", None), ("orange", 10), ("red", 100)),
        ),
        stat_panel(
            "Oldest waiting message",
            "Age of the oldest entry not yet acknowledged (undelivered or pending); 0 when the "
            "queue is empty. Alert MessagesStuck above 5 minutes.",
            f"max({sel(OLDEST_AGE, ENV)})",
            "s",
            (("green", None), ("orange", 60), ("red", 300)),
        ),
        stat_panel(
            "Messages stored/s",
            "Messages the worker processed successfully.",
            f"sum({rate(worker('whatsapp_message_outcomes_total', PROCESSED))}) or vector(0)",
            "short",
        ),
        stat_panel(
            "End-to-end p95",
            "95th percentile of webhook accepted -> row committed (5m). Alert "
            "EndToEndLatencyHigh at 5s.",
            quantile(0.95, sel(E2E_BUCKETS, ENV)),
            "s",
            (("green", None), ("orange", 1), ("red", 5)),
        ),
        stat_panel(
            "Dead letters",
            f"Length of the dead-letter stream {STREAM}:dead. Alert DeadLettersGrowing when "
            "it grows.",
            f"sum({sel(DEAD_LETTERS, ENV)})",
            "short",
            (("green", None), ("red", 1)),
        ),
        stat_panel(
            "Worker heartbeat age",
            "Seconds since the freshest worker's last loop iteration (the worst selected "
            "environment). Alert WorkerDown above 120s.",
            f"max(min by (deployment_environment_name) ({sel(HEARTBEAT_AGE, ENV)}))",
            "s",
            (("green", None), ("orange", 30), ("red", 120)),
        ),
        width=3,
    )

    http_count = "http_server_request_duration_seconds_count"
    sent = "messaging_client_sent_messages_total"
    layout.row("Ingest").panels(
        graph_panel(
            "Ingest request rate by route and status",
            "http.server.request.duration count, per route and status code.",
            [
                query(
                    "A",
                    f"sum by (http_route, http_response_status_code) ({rate(ingest(http_count))})",
                    "{{http_route}} {{http_response_status_code}}",
                )
            ],
            "reqps",
            stacked=True,
        ),
        graph_panel(
            "Ingest errors",
            f"5xx responses per route and failed enqueues (XADD to {STREAM}) per error type.",
            [
                query(
                    "A",
                    "sum by (http_route, http_response_status_code) "
                    f"({rate(ingest(http_count, CODE_5XX))})",
                    "{{http_route}} {{http_response_status_code}}",
                ),
                query(
                    "B",
                    f"sum by (error_type) ({rate(ingest(sent, ERRORS_ONLY))})",
                    "enqueue failed: {{error_type}}",
                ),
            ],
            "reqps",
        ),
        graph_panel(
            "Ingest latency",
            "http.server.request.duration percentiles; exemplars link to Jaeger traces.",
            percentiles(
                ingest("http_server_request_duration_seconds_bucket"),
                (0.5, 0.95, 0.99),
                exemplar=True,
            ),
            "s",
        ),
        graph_panel(
            "Webhook events by outcome",
            "whatsapp.webhook.events per event type and outcome (queued, ignored, rejected, "
            "unavailable).",
            [
                query(
                    "A",
                    "sum by (whatsapp_event, whatsapp_outcome) "
                    f"({rate(ingest('whatsapp_webhook_events_total'))})",
                    "{{whatsapp_event}} {{whatsapp_outcome}}",
                )
            ],
            "short",
            stacked=True,
            width=12,
        ),
        graph_panel(
            "Messages enqueued",
            f"messaging.client.sent.messages: XADD to {STREAM}, ok vs failed.",
            [
                query("A", f"sum({rate(ingest(sent, NO_ERROR))})", "enqueued"),
                query("B", f"sum({rate(ingest(sent, ERRORS_ONLY))})", "failed"),
            ],
            "short",
            width=12,
        ),
    )

    outcomes = "whatsapp_message_outcomes_total"
    layout.row(f"Queue ({STREAM})").panels(
        graph_panel(
            "Queue depth and lag",
            "Stream length (XLEN), entries not yet delivered to the workers group (lag) and "
            "delivered but unacknowledged (pending). Max over worker instances (each reports "
            "the same stream). Alert QueueBacklog when lag + pending > 100.",
            [
                query("A", f"max({worker('whatsapp_queue_length')})", "length (XLEN)"),
                query("B", f"max({worker('whatsapp_queue_lag')})", "lag (undelivered)"),
                query("C", f"max({worker('whatsapp_queue_pending')})", "pending (unacked)"),
            ],
            "short",
            threshold=100,
        ),
        graph_panel(
            "Oldest waiting message age",
            "Age of the oldest entry not yet acknowledged, per environment and stream. It "
            "climbs steadily while any entry is stuck (e.g. one failing forever while the "
            "others are stored). Alert MessagesStuck above 5 minutes for 5 minutes.",
            [
                query(
                    "A",
                    sel(OLDEST_AGE, ENV),
                    "{{deployment_environment_name}} {{messaging_destination_name}}",
                )
            ],
            "s",
            threshold=300,
        ),
        graph_panel(
            "Dead letters",
            f"Length of {STREAM}:dead and messages dead-lettered per second.",
            [
                query(
                    "A",
                    f"max({worker('whatsapp_queue_dead_letter_length')})",
                    "dead-letter stream length",
                ),
                query(
                    "B",
                    f"sum({rate(worker(outcomes, DEAD_LETTERED))})",
                    "dead-lettered/s",
                ),
            ],
            "short",
        ),
    )

    resolutions = "whatsapp_instance_resolutions_total"
    layout.row("Worker").panels(
        graph_panel(
            "Worker throughput by outcome",
            "whatsapp.message.outcomes: processed, duplicate, failed, dead_lettered.",
            [
                query(
                    "A",
                    f"sum by (whatsapp_outcome) ({rate(worker(outcomes))})",
                    "{{whatsapp_outcome}}",
                ),
                query(
                    "B",
                    f"sum({rate(worker('messaging_client_consumed_messages_total'))})",
                    "consumed",
                ),
            ],
            "short",
        ),
        graph_panel(
            "End-to-end latency (webhook -> row committed)",
            "whatsapp.message.end_to_end.duration percentiles. Exemplars (dots) carry trace "
            "ids: click one to open the trace in Jaeger. Alert EndToEndLatencyHigh when p95 "
            "> 5s.",
            percentiles(
                worker("whatsapp_message_end_to_end_duration_seconds_bucket"),
                (0.5, 0.95, 0.99),
                exemplar=True,
            ),
            "s",
            threshold=5,
        ),
        graph_panel(
            "Processing duration",
            "messaging.process.duration percentiles (one message, worker side); exemplars "
            "link to traces.",
            percentiles(
                worker("messaging_process_duration_seconds_bucket"), (0.5, 0.95), exemplar=True
            ),
            "s",
        ),
        graph_panel(
            "Errors by type",
            "Failures per error.type across services: failed/dead-lettered messages, failed "
            "processing, failed enqueues.",
            [
                query(
                    "A",
                    f"sum by (service_name, error_type) ({rate(sel(outcomes, ENV, ERRORS_ONLY))})",
                    "{{service_name}} outcome: {{error_type}}",
                ),
                query(
                    "B",
                    "sum by (service_name, error_type) "
                    f"({rate(sel('messaging_process_duration_seconds_count', ENV, ERRORS_ONLY))})",
                    "{{service_name}} process: {{error_type}}",
                ),
                query(
                    "C",
                    f"sum by (service_name, error_type) ({rate(sel(sent, ENV, ERRORS_ONLY))})",
                    "{{service_name}} enqueue: {{error_type}}",
                ),
            ],
            "short",
        ),
        graph_panel(
            "Instance resolution",
            "whatsapp.instance.resolutions by how the WhatsApp instance was resolved; anything "
            "other than 'instance' is a fallback, 'unresolved' is a miss.",
            [
                query(
                    "A",
                    f"sum by (whatsapp_resolution) ({rate(worker(resolutions))})",
                    "{{whatsapp_resolution}}",
                )
            ],
            "short",
            stacked=True,
        ),
        graph_panel(
            "Instance-resolution fallbacks",
            "Share of resolutions that did not resolve directly by instance "
            "(integration/default fallback or unresolved).",
            [
                query(
                    "A",
                    f"sum({rate(worker(resolutions, NOT_INSTANCE))})"
                    f" / sum({rate(worker(resolutions))})",
                    "fallback ratio",
                )
            ],
            "percentunit",
        ),
        graph_panel(
            "Worker heartbeat age",
            "Seconds since each worker's last loop iteration. Alert WorkerDown when even the "
            "freshest is above 120s.",
            [query("A", sel(HEARTBEAT_AGE, ENV), "{{service_instance_id}}")],
            "s",
            threshold=120,
            width=12,
        ),
        graph_panel(
            "Span error ratio (spanmetrics)",
            "Share of server/consumer spans with status ERROR per service and span name (5m). "
            "Alert HighErrorRate at 5% per service.",
            [
                query(
                    "A",
                    "sum by (service_name, span_name) "
                    f"({sel(ENTRY_CALLS, ENV, SPAN_ERROR)})"
                    f" / sum by (service_name, span_name) ({sel(ENTRY_CALLS, ENV)})",
                    "{{service_name}} {{span_name}}",
                )
            ],
            "percentunit",
            threshold=0.05,
            width=12,
        ),
        table.Panel()
        .title("Recent failed worker traces (Jaeger)")
        .description("Latest worker traces with error=true; click a trace id to open it.")
        .datasource(JAEGER)
        .with_target(JaegerSearchBuilder(JaegerSearch("A", "worker", "error=true", 20)))
        .show_header(True)
        .height(8)
        .span(24),
    )
    layout.row("Conversations").panels(
        stat_panel(
            "Replies failed (15m)",
            "Replies marked failed for good (a 4xx from Evolution, or past their attempt or "
            "time budget): env:whatsapp_reply_failed:increase15m, the figure RepliesFailing "
            "alerts on. Re-drive them with `wabot redrive-replies`.",
            f"sum(env:whatsapp_reply_failed:increase15m{{{ENV}}})",
            "short",
            (("green", None), ("red", 1)),
        ),
        stat_panel(
            "Oldest unsent reply",
            "Age of the oldest reply in the outbox (env:whatsapp_outbox_oldest_age_seconds:max; "
            "RepliesDelayed above 10 minutes).",
            f"max(env:whatsapp_outbox_oldest_age_seconds:max{{{ENV}}})",
            "s",
            (("green", None), ("orange", 60), ("red", 600)),
        ),
        stat_panel(
            "Replies waiting",
            "whatsapp.outbox.pending: replies written and not yet accepted by Evolution.",
            f"max({worker('whatsapp_outbox_pending')})",
            "short",
        ),
        graph_panel(
            "Reply outcomes",
            "whatsapp.reply.sent by outcome: sent, retried (429/5xx/timeouts, with backoff), "
            "failed (for good), suppressed (a handler's reply to a chat the bot must not answer).",
            [
                query(
                    "A",
                    f"sum by (whatsapp_outcome) ({rate(worker('whatsapp_reply_sent_total'))})",
                    "{{whatsapp_outcome}}",
                )
            ],
            "short",
        ),
        graph_panel(
            "Reply latency (webhook accepted -> reply accepted by Evolution)",
            "whatsapp.reply.latency percentiles; exemplars link to the inbound message's trace.",
            percentiles(
                worker("whatsapp_reply_latency_seconds_bucket"), (0.5, 0.95), exemplar=True
            ),
            "s",
        ),
        graph_panel(
            "Outbox depth and oldest unsent reply",
            "whatsapp.outbox.pending and whatsapp.outbox.oldest_age.",
            [
                query("A", f"max({worker('whatsapp_outbox_pending')})", "pending"),
                query(
                    "B", f"max({worker('whatsapp_outbox_oldest_age_seconds')})", "oldest age (s)"
                ),
            ],
            "short",
        ),
        graph_panel(
            "Time waiting behind its chat",
            "whatsapp.message.chat_wait.duration percentiles: how long a message waited in the "
            "worker for its chat's earlier messages (the cost of per-chat order).",
            percentiles(
                worker("whatsapp_message_chat_wait_duration_seconds_bucket"),
                (0.5, 0.95, 0.99),
                exemplar=False,
            ),
            "s",
        ),
        graph_panel(
            "Handler duration",
            "whatsapp.handler.duration percentiles (your WORKER_HANDLER, or the auto-reply).",
            percentiles(
                worker("whatsapp_handler_duration_seconds_bucket"), (0.5, 0.95), exemplar=False
            ),
            "s",
        ),
        graph_panel(
            "Partitions per worker",
            "whatsapp.worker.partitions: each worker's share of the stream's partitions.",
            [
                query(
                    "A",
                    f"max by (service_instance_id) ({worker('whatsapp_worker_partitions')})",
                    "{{service_instance_id}}",
                )
            ],
            "short",
        ),
    )
    return layout.build()


def collector_health() -> dict[str, Any]:
    layout = Layout(
        "wabot-collector",
        "wabot / Collector health",
        "Health of the wabot OpenTelemetry Collector: received/refused/failed spans, metric "
        "points and log records, exporter send/enqueue failures and queue usage (Jaeger queue "
        "persisted via file_storage), memory limiter, batch sizes and process resources. "
        "Data: the collector's self-metrics (job otel-collector) in Prometheus (uid "
        "prometheus).",
    )
    up = (("red", None), ("green", 1))
    layout.panels(
        stat_panel(
            "Collector up",
            "Prometheus can scrape the collector's own metrics (1 = up).",
            'min(up{job="otel-collector"})',
            "short",
            up,
        ),
        stat_panel(
            "App metrics endpoint up",
            "Prometheus can scrape the collector's Prometheus exporter (application + span "
            "metrics).",
            'min(up{job="wabot"})',
            "short",
            up,
        ),
        stat_panel(
            "Dropped items/s",
            "Refused + failed + send-failed + enqueue-failed items of all signals (5m). Alert "
            "TelemetryPipelineDropping above 0.",
            f"sum({DROPPED}) or vector(0)",
            "short",
            (("green", None), ("red", 0.001)),
        ),
        stat_panel(
            "Collector uptime",
            "Seconds since the collector process started.",
            'max(otelcol_process_uptime{job="otel-collector"})',
            "s",
        ),
        width=6,
    )

    signals = (
        ("spans", "spans"),
        ("metric_points", "metric points"),
        ("log_records", "log records"),
    )
    layout.row("Receivers").panels(
        *(
            graph_panel(
                f"Received {label}",
                f"Accepted vs refused vs failed {label} per receiver/transport.",
                [
                    query(
                        ref,
                        "sum by (receiver, transport) "
                        f"({rate(f'otelcol_receiver_{kind}_{signal}')})",
                        f"{kind} {{{{receiver}}}}/{{{{transport}}}}",
                    )
                    for ref, kind in zip("ABC", ("accepted", "refused", "failed"), strict=True)
                ],
                "short",
            )
            for signal, label in signals
        )
    )
    layout.row("Exporters").panels(
        *(
            graph_panel(
                f"Exported {label}",
                f"Sent vs send-failed vs enqueue-failed {label} per exporter.",
                [
                    query(
                        ref,
                        f"sum by (exporter) ({rate(f'otelcol_exporter_{kind}_{signal}')})",
                        f"{kind.replace('_', ' ')} {{{{exporter}}}}",
                    )
                    for ref, kind in zip(
                        "ABC", ("sent", "send_failed", "enqueue_failed"), strict=True
                    )
                ],
                "short",
            )
            for signal, label in signals
        ),
        graph_panel(
            "Exporter queue usage",
            "Sending queue size / capacity per exporter (the Jaeger exporter's queue is "
            "persisted in file_storage).",
            [
                query(
                    "A",
                    "max by (exporter, data_type) (otelcol_exporter_queue_size)"
                    " / max by (exporter, data_type) (otelcol_exporter_queue_capacity)",
                    "{{exporter}} {{data_type}}",
                )
            ],
            "percentunit",
            threshold=0.8,
            width=12,
        ),
        graph_panel(
            "Requests in flight",
            "Export requests currently in flight per exporter.",
            [query("A", "sum by (exporter) (otelcol_exporter_in_flight_requests)", "{{exporter}}")],
            "short",
            width=12,
        ),
    )

    def memory_limiter(kind: str) -> str:
        # rate() drops __name__, so the three signals would collide without
        # label_replace; the subquery lets rate() run over its output.
        names = (
            f'{{__name__=~"otelcol_processor_memory_limiter_{kind}_'
            '(spans|metric_points|log_records)"}'
        )
        relabelled = f'label_replace({names}, "metric", "$1", "__name__", "(.+)")'
        return f"sum(rate({relabelled}[$__rate_interval:]))"

    job = 'job="otel-collector"'
    batch = "otelcol_processor_batch_batch_send_size_bucket"
    layout.row("Processors and process").panels(
        graph_panel(
            "Memory limiter",
            "Items accepted/refused by memory_limiter (refusals mean the collector is at its "
            "memory limit).",
            [
                query("A", memory_limiter("accepted"), "accepted"),
                query("B", memory_limiter("refused"), "refused"),
            ],
            "short",
        ),
        graph_panel(
            "Processor throughput",
            "Items in/out of each processor (redaction, batch, ...).",
            [
                query(
                    "A",
                    f"sum by (processor, otel_signal) ({rate('otelcol_processor_incoming_items')})",
                    "in {{processor}} {{otel_signal}}",
                ),
                query(
                    "B",
                    f"sum by (processor, otel_signal) ({rate('otelcol_processor_outgoing_items')})",
                    "out {{processor}} {{otel_signal}}",
                ),
            ],
            "short",
        ),
        graph_panel(
            "Batch size",
            "Batch processor: p50/p95 number of items per sent batch.",
            percentiles(batch, (0.5, 0.95), exemplar=False),
            "short",
        ),
        graph_panel(
            "Memory",
            "Collector RSS and Go heap.",
            [
                query("A", f"max({sel('otelcol_process_memory_rss', job)})", "RSS"),
                query(
                    "B",
                    f"max({sel('otelcol_process_runtime_heap_alloc_bytes', job)})",
                    "heap alloc",
                ),
            ],
            "bytes",
            width=12,
        ),
        graph_panel(
            "CPU",
            "Collector CPU usage (cores).",
            [query("A", f"sum({rate(sel('otelcol_process_cpu_seconds', job))})", "cpu")],
            "short",
            width=12,
        ),
        graph_panel(
            "Span metrics produced",
            "Spans counted by the spanmetrics connector per service (source of HighErrorRate).",
            [
                query(
                    "A",
                    f"sum by (service_name) ({rate('traces_span_metrics_calls_total')})",
                    "{{service_name}}",
                )
            ],
            "short",
            width=12,
        ),
        graph_panel(
            "Prometheus scrape of the collector",
            "Samples scraped from each collector endpoint and scrape duration.",
            [
                query(
                    "A",
                    'sum by (job) (scrape_samples_scraped{job=~"wabot|otel-collector"})',
                    "samples {{job}}",
                ),
                query(
                    "B",
                    'max by (job) (scrape_duration_seconds{job=~"wabot|otel-collector"})',
                    "duration {{job}} (s)",
                ),
            ],
            "short",
            width=12,
        ),
    )
    return layout.build()


def infrastructure() -> dict[str, Any]:
    layout = Layout(
        "wabot-infrastructure",
        "wabot / Infrastructure",
        "Redis (the stream) and PostgreSQL (the rows) as their Prometheus exporters see them "
        "(jobs redis and postgres): memory and its limit, evictions, clients, persistence; "
        "connections and their limit, deadlocks, database size, replication lag. The ratio "
        "panels show what RedisMemoryHigh and PostgresConnectionsHigh evaluate "
        "(prometheus/alerts.yml recording rules). Data: Prometheus (uid prometheus).",
    )
    layout.board = layout.board.with_variable(
        env_variable('label_values(up{job=~"redis|postgres"}, deployment_environment_name)')
    )
    redis = 'job="redis"'
    pg = 'job="postgres"'
    up = (("red", None), ("green", 1))  # 1 = up / ok
    layout.panels(
        stat_panel(
            "Redis up",
            "The exporter reaches Redis (redis_up; 1 = up).",
            f"min({sel('redis_up', redis, ENV)})",
            "short",
            up,
        ),
        stat_panel(
            "Redis memory used",
            "Of maxmemory, or of the host's memory without one. Alert RedisMemoryHigh at 80%.",
            f"max({sel(REDIS_MEMORY, ENV)})",
            "percentunit",
            (("green", None), ("orange", 0.6), ("red", 0.8)),
        ),
        stat_panel(
            "Redis evictions (5m)",
            "Keys Redis evicted in the last 5 minutes; anything above 0 loses queued messages. "
            "Alert RedisEvicting.",
            f"sum(increase({sel('redis_evicted_keys_total', redis, ENV)}[5m])) or vector(0)",
            "short",
            (("green", None), ("red", 1)),
        ),
        stat_panel(
            "Redis AOF last write",
            "1 = the append-only file's last write succeeded (redis_aof_last_write_status); "
            "an accepted message survives a Redis restart only through it.",
            f"min({sel('redis_aof_last_write_status', redis, ENV)})",
            "short",
            up,
        ),
        stat_panel(
            "PostgreSQL up",
            "The exporter reaches PostgreSQL (pg_up; 1 = up).",
            f"min({sel('pg_up', pg, ENV)})",
            "short",
            up,
        ),
        stat_panel(
            "PostgreSQL connections used",
            "Of max_connections. Alert PostgresConnectionsHigh at 80%.",
            f"max({sel(PG_CONNECTIONS, ENV)})",
            "percentunit",
            (("green", None), ("orange", 0.6), ("red", 0.8)),
        ),
        width=4,
    )
    layout.row("Redis").panels(
        graph_panel(
            "Memory",
            "Used memory against maxmemory (0 when unset).",
            [
                query(
                    "A",
                    f"max by (instance) ({sel('redis_memory_used_bytes', redis, ENV)})",
                    "used {{instance}}",
                ),
                query(
                    "B",
                    f"max by (instance) ({sel('redis_memory_max_bytes', redis, ENV)})",
                    "maxmemory {{instance}}",
                ),
            ],
            "bytes",
        ),
        graph_panel(
            "Memory used (share of the limit)",
            "The figure RedisMemoryHigh evaluates (red line: its threshold).",
            [query("A", f"max by (instance) ({sel(REDIS_MEMORY, ENV)})", "{{instance}}")],
            "percentunit",
            threshold=0.8,
        ),
        graph_panel(
            "Evictions/s and clients",
            "Evicted keys per second (must stay 0) and connected clients.",
            [
                query(
                    "A",
                    f"sum by (instance) ({rate(sel('redis_evicted_keys_total', redis, ENV))})",
                    "evicted/s {{instance}}",
                ),
                query(
                    "B",
                    f"sum by (instance) ({sel('redis_connected_clients', redis, ENV)})",
                    "clients {{instance}}",
                ),
            ],
            "short",
        ),
        graph_panel(
            "Persistence status",
            "1 = ok: AOF enabled, its last write and last rewrite, the last RDB save.",
            [
                query(
                    "A",
                    f"min by (instance) ({sel('redis_aof_enabled', redis, ENV)})",
                    "aof enabled {{instance}}",
                ),
                query(
                    "B",
                    f"min by (instance) ({sel('redis_aof_last_write_status', redis, ENV)})",
                    "aof last write {{instance}}",
                ),
                query(
                    "C",
                    f"min by (instance) ({sel('redis_aof_last_bgrewrite_status', redis, ENV)})",
                    "aof last rewrite {{instance}}",
                ),
                query(
                    "D",
                    f"min by (instance) ({sel('redis_rdb_last_bgsave_status', redis, ENV)})",
                    "rdb last save {{instance}}",
                ),
            ],
            "short",
            width=24,
        ),
    )
    layout.row("PostgreSQL").panels(
        graph_panel(
            "Connections by state",
            "Client connections per state, and max_connections.",
            [
                query(
                    "A", f"sum by (state) ({sel('pg_stat_activity_count', pg, ENV)})", "{{state}}"
                ),
                query(
                    "B", f"max({sel('pg_settings_max_connections', pg, ENV)})", "max_connections"
                ),
            ],
            "short",
        ),
        graph_panel(
            "Connections used (share of max_connections)",
            "The figure PostgresConnectionsHigh evaluates (red line: its threshold).",
            [query("A", f"max by (instance) ({sel(PG_CONNECTIONS, ENV)})", "{{instance}}")],
            "percentunit",
            threshold=0.8,
        ),
        graph_panel(
            "Deadlocks/s",
            "Deadlocks detected per database (the worker retries a deadlocked transaction).",
            [
                query(
                    "A",
                    f"sum by (datname) ({rate(sel('pg_stat_database_deadlocks', pg, ENV))})",
                    "{{datname}}",
                )
            ],
            "short",
        ),
        graph_panel(
            "Database size",
            "Size on disk of each database.",
            [
                query(
                    "A",
                    f"max by (datname) ({sel('pg_database_size_bytes', pg, ENV)})",
                    "{{datname}}",
                )
            ],
            "bytes",
            width=12,
        ),
        graph_panel(
            "Replication lag",
            "Seconds a replica's replay is behind its primary (0 on a primary; "
            "prometheus/postgres-exporter-queries.yaml).",
            [
                query(
                    "A",
                    f"max by (instance) ({sel('pg_replication_lag_seconds', pg, ENV)})",
                    "{{instance}}",
                )
            ],
            "s",
            width=12,
        ),
    )
    return layout.build()


DASHBOARDS = {
    "pipeline-overview.json": pipeline_overview,
    "collector-health.json": collector_health,
    "infrastructure.json": infrastructure,
}


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = OUT_DIR / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    extra = sorted({p.name for p in OUT_DIR.glob("*.json")} - set(DASHBOARDS))
    if args.check and (stale or extra):
        print(f"out of date: {stale}; not generated: {extra} (run grafana/generate.py)")
        return 1
    for name in stale:
        print(f"wrote {OUT_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
