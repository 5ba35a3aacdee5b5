"""The committed ops configs, rendered for a native run: the one renderer
behind the tests' backend and ``make run``.

The collector and Jaeger read their addresses from the environment (their
configs say ``${env:...}``), so for them rendering is an environment. Prometheus
and Alertmanager read no environment: their configs are copied with the
compose host names replaced by local addresses. Tests also shorten timings
(:data:`TEST_TIMINGS`), never an expression, matcher or threshold; ``make run``
keeps the committed ones (:data:`COMMITTED_TIMINGS`).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.stack.paths import PROM_DIR

# Where the committed configs point (docker compose host names).
COLLECTOR_EXPORTER_PLACEHOLDER = "otel-collector:8889"
COLLECTOR_SELF_METRICS_PLACEHOLDER = "otel-collector:8888"
ALERTMANAGER_PLACEHOLDER = "alertmanager:9093"
REDIS_EXPORTER_PLACEHOLDER = "redis-exporter:9121"
POSTGRES_EXPORTER_PLACEHOLDER = "postgres-exporter:9187"
# Their scrape jobs (dropped from a copy that has no exporter to scrape).
EXPORTER_JOBS = {REDIS_EXPORTER_PLACEHOLDER: "redis", POSTGRES_EXPORTER_PLACEHOLDER: "postgres"}
AM_WEBHOOK_PLACEHOLDER = "http://alert-webhook:9095/alerts"


@dataclass(frozen=True)
class Timings:
    """Timing knobs of a native run; ``None`` keeps the committed value."""

    scrape_interval: str | None = None
    evaluation_interval: str | None = None
    rule_for: str | None = None  # every alert rule's `for:`
    am_group_wait: str | None = None
    am_group_interval: str | None = None
    # Collector variables (flush and expiry intervals its config reads).
    collector_env: dict[str, str] = field(default_factory=dict)


COMMITTED_TIMINGS = Timings()
# Seconds-long round trips (failure -> alert -> notification) instead of
# minutes. Exemplars: the Python SDK attaches an exemplar to the one export
# after the measurement only, and the collector's exporter shows each export
# until the next one, so Prometheus must scrape at least once per export
# interval (services under test export every OBS_METRIC_EXPORT_INTERVAL_MS).
SCRAPE_INTERVAL = "500ms"
EVALUATION_INTERVAL = "1s"
OBS_METRIC_EXPORT_INTERVAL_MS = 1000
RULE_FOR = "1s"
AM_GROUP_WAIT = "1s"
AM_GROUP_INTERVAL = "1s"
# A stopped worker's series leave the collector's exporter this long after its
# last export, so WorkerDown's `absent(...)` branch can become true quickly.
METRIC_EXPIRATION = "3s"
TEST_TIMINGS = Timings(
    scrape_interval=SCRAPE_INTERVAL,
    evaluation_interval=EVALUATION_INTERVAL,
    rule_for=RULE_FOR,
    am_group_wait=AM_GROUP_WAIT,
    am_group_interval=AM_GROUP_INTERVAL,
    collector_env={
        "OTELCOL_SPANMETRICS_FLUSH_INTERVAL": "1s",
        "OTELCOL_BATCH_TIMEOUT": "200ms",
        "OTELCOL_PROMETHEUS_METRIC_EXPIRATION": METRIC_EXPIRATION,
    },
)


# How long the stores keep data, natively (`make run`, the tests) and in
# docker-compose.yml (tests/deploy checks it passes the same flags): log
# records in VictoriaLogs (-retentionPeriod; whole days, at least one) and
# Prometheus' series (--storage.tsdb.retention.time). Telemetry carries ids,
# types and outcomes, never message content (README "Privacy"); a week of
# logs covers an incident investigation, metrics keep Prometheus' default.
LOG_RETENTION = "7d"
METRICS_RETENTION = "15d"


def local(port: int) -> str:
    return f"127.0.0.1:{port}"


# --------------------------------------------------- collector and Jaeger ---
def jaeger_env(
    *,
    otlp_grpc: int,
    otlp_http: int,
    query: int,
    query_grpc: int,
    health: int,
    metrics: int,
    ui_assets: Path | None = None,
) -> dict[str, str]:
    """jaeger/config.yaml's variables: every listener on 127.0.0.1, and the UI
    build to serve (none: the binary's own assets, a placeholder page when it
    was built with `go install`)."""
    return {
        "JAEGER_OTLP_GRPC_ENDPOINT": local(otlp_grpc),
        "JAEGER_OTLP_HTTP_ENDPOINT": local(otlp_http),
        "JAEGER_QUERY_HTTP_ENDPOINT": local(query),
        "JAEGER_QUERY_GRPC_ENDPOINT": local(query_grpc),
        "JAEGER_HEALTH_ENDPOINT": local(health),
        "JAEGER_METRICS_HOST": "127.0.0.1",
        "JAEGER_METRICS_PORT": str(metrics),
        "JAEGER_UI_ASSETS_PATH": str(ui_assets or ""),
    }


def collector_env(
    *,
    otlp_grpc: int,
    otlp_http: int,
    prom_exporter: int,
    health: int,
    self_metrics: int,
    jaeger_otlp_grpc: str,
    victorialogs_logs: str,
    storage_dir: Path,
    timings: Timings = COMMITTED_TIMINGS,
) -> dict[str, str]:
    """otel-collector/config.yaml's variables: listeners on 127.0.0.1, spans to
    ``jaeger_otlp_grpc``, log records to ``victorialogs_logs`` (an OTLP/HTTP
    logs URL), its export queues under our directory."""
    return {
        "OTELCOL_GRPC_ENDPOINT": local(otlp_grpc),
        "OTELCOL_HTTP_ENDPOINT": local(otlp_http),
        "JAEGER_OTLP_ENDPOINT": jaeger_otlp_grpc,
        "VICTORIALOGS_OTLP_LOGS_ENDPOINT": victorialogs_logs,
        "PROMETHEUS_EXPORTER_ENDPOINT": local(prom_exporter),
        "OTELCOL_HEALTH_ENDPOINT": local(health),
        "OTELCOL_METRICS_HOST": "127.0.0.1",
        "OTELCOL_METRICS_PORT": str(self_metrics),
        "OTELCOL_STORAGE_DIR": str(storage_dir),
        **timings.collector_env,
    }


# ------------------------------------------------------------- Prometheus ---
def prometheus_config(
    exporter: str,
    self_metrics: str,
    alertmanager: str,
    timings: Timings = COMMITTED_TIMINGS,
    *,
    redis_exporter: str | None = None,
    postgres_exporter: str | None = None,
) -> str:
    """prometheus/prometheus.yml with the compose targets replaced (each occurs
    exactly once) and, if ``timings`` says so, other global intervals. Without
    a Redis or PostgreSQL exporter, its job is left out."""
    # Comments dropped: the header quotes the placeholders too.
    lines = (PROM_DIR / "prometheus.yml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#")) + "\n"
    for placeholder, target in (
        (COLLECTOR_EXPORTER_PLACEHOLDER, exporter),
        (COLLECTOR_SELF_METRICS_PLACEHOLDER, self_metrics),
        (ALERTMANAGER_PLACEHOLDER, alertmanager),
        (REDIS_EXPORTER_PLACEHOLDER, redis_exporter),
        (POSTGRES_EXPORTER_PLACEHOLDER, postgres_exporter),
    ):
        assert text.count(f'"{placeholder}"') == 1, f"prometheus.yml: {placeholder}"
        if target is not None:
            text = text.replace(f'"{placeholder}"', f'"{target}"')
    missing = {
        EXPORTER_JOBS[placeholder]
        for placeholder, target in (
            (REDIS_EXPORTER_PLACEHOLDER, redis_exporter),
            (POSTGRES_EXPORTER_PLACEHOLDER, postgres_exporter),
        )
        if target is None
    }
    if missing:
        doc = yaml.safe_load(text)
        doc["scrape_configs"] = [j for j in doc["scrape_configs"] if j["job_name"] not in missing]
        text = yaml.safe_dump(doc, sort_keys=False)
    intervals = (
        ("scrape_interval", timings.scrape_interval),
        ("scrape_timeout", timings.scrape_interval),  # may not exceed the interval
        ("evaluation_interval", timings.evaluation_interval),
    )
    for key, value in intervals:
        if value is None:
            continue
        # Only the global one (indented once): a job's own interval stays.
        text, n = re.subn(rf"^(  ){key}: \S+$", rf"\g<1>{key}: {value}", text, flags=re.M)
        assert n == 1, f"prometheus.yml: expected exactly one (global) {key}"
    return text


def rule_files() -> list[Path]:
    """The rule files prometheus.yml loads (its ``rule_files`` globs, resolved)."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    found: list[Path] = []
    for pattern in config.get("rule_files") or []:
        matches = sorted(PROM_DIR.glob(pattern))
        assert matches, f"prometheus.yml: rule_files entry {pattern!r} matches nothing"
        found += matches
    return found


def rules_copy(path: Path, rule_for: str | None) -> dict[str, Any]:
    """A rule file with every alert's `for:` set to ``rule_for``; nothing else changes."""
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule_for is not None and "for" in rule:
                rule["for"] = rule_for
    return doc


def write_prometheus_dir(
    directory: Path,
    *,
    exporter: str,
    self_metrics: str,
    alertmanager: str,
    timings: Timings = COMMITTED_TIMINGS,
    redis_exporter: str | None = None,
    postgres_exporter: str | None = None,
) -> Path:
    """prometheus.yml and its rule files, rendered into ``directory``; the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(
        prometheus_config(
            exporter,
            self_metrics,
            alertmanager,
            timings,
            redis_exporter=redis_exporter,
            postgres_exporter=postgres_exporter,
        )
    )
    for path in rule_files():
        target = directory / path.relative_to(PROM_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        if timings.rule_for is None:
            shutil.copyfile(path, target)  # unchanged, comments and all
        else:
            target.write_text(yaml.safe_dump(rules_copy(path, timings.rule_for), sort_keys=False))
    return config


# ----------------------------------------------------------- Alertmanager ---
def alertmanager_config(webhook_url: str, timings: Timings = COMMITTED_TIMINGS) -> dict[str, Any]:
    """prometheus/alertmanager.yml with the webhook placeholder replaced and, if
    ``timings`` says so, the grouping delays; routes, matchers and inhibitions
    unchanged."""
    doc: dict[str, Any] = yaml.safe_load((PROM_DIR / "alertmanager.yml").read_text())
    delays = (("group_wait", timings.am_group_wait), ("group_interval", timings.am_group_interval))

    def shorten(route: dict[str, Any]) -> None:
        for key, value in delays:
            if value is not None and key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(doc["route"])
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook["url"] == AM_WEBHOOK_PLACEHOLDER, hook
            hook["url"] = webhook_url
    return doc


def write_alertmanager_config(
    path: Path, webhook_url: str, timings: Timings = COMMITTED_TIMINGS
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(alertmanager_config(webhook_url, timings), sort_keys=False))
    return path


# --------------------------------------------- the tests' names for them ---
def alert_rules_test_copy() -> dict[str, Any]:
    """prometheus/alerts.yml as the tests load it (every `for:` shortened)."""
    return rules_copy(PROM_DIR / "alerts.yml", RULE_FOR)


def prometheus_test_config(
    exporter: str,
    self_metrics: str,
    alertmanager: str,
    *,
    redis_exporter: str | None = None,
    postgres_exporter: str | None = None,
) -> str:
    return prometheus_config(
        exporter,
        self_metrics,
        alertmanager,
        TEST_TIMINGS,
        redis_exporter=redis_exporter,
        postgres_exporter=postgres_exporter,
    )


def alertmanager_test_config(webhook_url: str) -> dict[str, Any]:
    return alertmanager_config(webhook_url, TEST_TIMINGS)
