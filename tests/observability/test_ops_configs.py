"""Fast static checks of the observability configs (no services started).

Covers otel-collector/, jaeger/, prometheus/ and grafana/:
  * promtool check config / check rules / test rules, amtool check-config;
  * every recording rule is used by an alert and by a dashboard, and has a
    promtool unit test;
  * `otelcol-wabot validate` and `jaeger validate` on the committed configs, and
    the collector manifest contains exactly the components the config uses;
  * alert metadata (severity, summary/description, a runbook_url that resolves
    to its runbook section in the repository, a firing and a quiet unit test per
    alert);
  * the committed dashboards are exactly what grafana/generate.py generates;
  * every Grafana panel/target/variable datasource is a provisioned uid;
  * every PromQL expression in dashboards and rules parses (through promtool)
    and only uses metric names verified against the collector's exporter.

How docker compose wires these configs (targets, receivers, datasource URLs),
the image versions and the files' header comments: tests/deploy/.

Binaries are looked up on PATH and in ~/.cache/wabot/bin (built by
scripts/build-otel-tools.sh). A missing binary is a test FAILURE, never a skip.
Run: python3 -m pytest tests/observability -q
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.opsfiles import (
    DATASOURCES,
    DOCS,
    dashboard_generator,
    dashboard_prom_exprs,
    grafana_to_promql,
    iter_panels,
    load_alert_rules,
    load_dashboards,
    load_recording_rules,
    provisioned_uids,
)
from tests.support.stack import configs
from tests.support.stack.env import clean_env
from tests.support.stack.paths import (
    APT_HINT,
    BUILD_HINT,
    COLLECTOR_DIR,
    PROM_DIR,
    REPO,
    find_binary,
    otelcol_binary,
)

TIMEOUT = 60  # seconds, per subprocess

ALERTS = {
    "HighErrorRate",
    "WorkerDown",
    "QueueBacklog",
    "EndToEndLatencyHigh",
    "DeadLettersGrowing",
    "Ingest5xxRateHigh",
    "MessagesStuck",
    "TelemetryPipelineDropping",
    "RedisMemoryHigh",
    "RedisEvicting",
    "PostgresConnectionsHigh",
    "RepliesFailing",
    "RepliesDelayed",
}
# Repository-relative: the runbook is a file of this repository (see alerts.yml).
RUNBOOK_URL = "docs/observability.md#runbook-{}"

# Prometheus names verified by sending the services' instruments through the
# collector (prometheus exporter, UnderscoreEscapingWithSuffixes) and scraping
# it; otelcol_* are the collector's self-metrics (no `_total` suffix).
APP_METRICS = {
    "http_server_request_duration_seconds",
    "messaging_client_sent_messages_total",
    "whatsapp_webhook_events_total",
    "messaging_client_consumed_messages_total",
    "messaging_process_duration_seconds",
    "whatsapp_message_outcomes_total",
    "whatsapp_message_end_to_end_duration_seconds",
    "whatsapp_queue_length",
    "whatsapp_queue_pending",
    "whatsapp_queue_lag",
    "whatsapp_queue_dead_letter_length",
    # The worker's age of the oldest unacknowledged entry (wabot_shared.names).
    "whatsapp_queue_oldest_age_seconds",
    "whatsapp_instance_resolutions_total",
    "whatsapp_worker_heartbeat_seconds",
    # Conversations: the outbox sender, the handler, per-chat order.
    "whatsapp_reply_sent_total",
    "whatsapp_reply_latency_seconds",
    "whatsapp_outbox_pending",
    "whatsapp_outbox_oldest_age_seconds",
    "whatsapp_message_chat_wait_duration_seconds",
    "whatsapp_handler_duration_seconds",
    "whatsapp_worker_partitions",
    "traces_span_metrics_calls_total",
    "traces_span_metrics_duration_seconds",
}
HISTOGRAMS = {
    "http_server_request_duration_seconds",
    "messaging_process_duration_seconds",
    "whatsapp_message_end_to_end_duration_seconds",
    "whatsapp_reply_latency_seconds",
    "whatsapp_message_chat_wait_duration_seconds",
    "whatsapp_handler_duration_seconds",
    "traces_span_metrics_duration_seconds",
}
COLLECTOR_METRICS = {
    f"otelcol_{kind}_{signal}"
    for kind in (
        "receiver_accepted",
        "receiver_refused",
        "receiver_failed",
        "exporter_sent",
        "exporter_send_failed",
        "exporter_enqueue_failed",
        "processor_memory_limiter_accepted",
        "processor_memory_limiter_refused",
    )
    for signal in ("spans", "metric_points", "log_records")
} | {
    "otelcol_exporter_queue_size",
    "otelcol_exporter_queue_capacity",
    "otelcol_exporter_in_flight_requests",
    "otelcol_processor_incoming_items",
    "otelcol_processor_outgoing_items",
    "otelcol_processor_batch_batch_send_size_bucket",
    "otelcol_process_memory_rss",
    "otelcol_process_runtime_heap_alloc_bytes",
    "otelcol_process_cpu_seconds",
    "otelcol_process_uptime",
}
# The Redis and PostgreSQL exporters' (Debian's prometheus-redis-exporter 1.45
# with -include-system-metrics, prometheus-postgres-exporter 0.11 with
# prometheus/postgres-exporter-queries.yaml), seen on their /metrics.
INFRA_METRICS = {
    "redis_up",
    "redis_memory_used_bytes",
    "redis_memory_max_bytes",
    "redis_total_system_memory_bytes",
    "redis_evicted_keys_total",
    "redis_connected_clients",
    "redis_aof_enabled",
    "redis_aof_last_write_status",
    "redis_aof_last_bgrewrite_status",
    "redis_rdb_last_bgsave_status",
    "pg_up",
    "pg_stat_activity_count",
    "pg_settings_max_connections",
    "pg_stat_database_deadlocks",
    "pg_database_size_bytes",
    "pg_replication_lag_seconds",
}
PROMETHEUS_METRICS = {"up", "scrape_samples_scraped", "scrape_duration_seconds", "target_info"}
CHECKED_PREFIXES = (
    "whatsapp_",
    "messaging_",
    "http_server_",
    "traces_span_metrics_",
    "otelcol_",
    "redis_",
    "pg_",
)


# --------------------------------------------------------------- helpers ---
def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=TIMEOUT, **kwargs
    )
    assert proc.returncode == 0, (
        f"`{' '.join(cmd)}` exited with {proc.returncode}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


# ------------------------------------------------------------ prometheus ---
def test_promtool_check_config() -> None:
    promtool = find_binary("promtool", APT_HINT)
    run([promtool, "check", "config", str(PROM_DIR / "prometheus.yml")])


def test_promtool_check_rules() -> None:
    promtool = find_binary("promtool", APT_HINT)
    out = run([promtool, "check", "rules", str(PROM_DIR / "alerts.yml")]).stdout
    count = len(ALERTS) + len(load_recording_rules())
    assert f"SUCCESS: {count} rules found" in out, out


def test_promtool_rule_unit_tests() -> None:
    promtool = find_binary("promtool", APT_HINT)
    run([promtool, "test", "rules", str(PROM_DIR / "alerts.test.yml")])


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub/GitLab give a document's headings (lower case,
    punctuation other than `-` dropped, spaces to `-`)."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_alerts_have_labels_annotations_and_runbooks() -> None:
    rules = load_alert_rules()
    assert {r["alert"] for r in rules} == ALERTS
    docs = DOCS.read_text()
    assert "\n## Runbook\n" in docs, f"{DOCS} needs a `## Runbook` section"
    runbook = docs.split("\n## Runbook\n", 1)[1].split("\n## ", 1)[0]
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["labels"].get("service") or "service" in rule["expr"], name
        ann = rule["annotations"]
        assert ann["summary"].strip(), name
        assert ann["description"].strip(), name
        assert ann["runbook_url"] == RUNBOOK_URL.format(name.lower()), name
        # The link resolves: an existing file of the repository, and an anchor
        # of one of its headings.
        path, _, anchor = ann["runbook_url"].partition("#")
        target = REPO / path
        assert target.is_file(), f"{name}: {path} does not exist"
        assert anchor in heading_anchors(target.read_text()), f"{name}: no heading #{anchor}"
        assert f"\n### Runbook: {name}\n" in runbook, f"{DOCS} lacks a runbook for {name}"
    sections = re.findall(r"^### Runbook: (\w+)$", runbook, re.M)
    assert sorted(sections) == sorted(ALERTS), f"runbook sections {sections} != alerts"
    assert "OWNER/REPO" not in (PROM_DIR / "alerts.yml").read_text()


def test_alerts_use_recordings_of_their_own_group_recorded_before_them() -> None:
    """Prometheus (and promtool, in an unspecified order) evaluates rule groups
    independently, and the rules of one group in order: an alert in another
    group than its recording rule, or before it, sees the previous
    evaluation's figure (a flaky unit test, an alert one interval late)."""
    doc = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    for group in doc["groups"]:
        recorded: set[str] = set()
        for rule in group["rules"]:
            if "record" in rule:
                recorded.add(rule["record"])
                continue
            used = set(re.findall(r"(?<![\w:])[a-zA-Z_]\w*:[\w:]+", rule["expr"]))
            assert used <= recorded, (
                f"{rule['alert']} uses {sorted(used - recorded)}, not recorded before it "
                f"in group {group['name']}"
            )


def test_heading_anchors_follow_github() -> None:
    assert heading_anchors("### Runbook: WorkerDown\n## How this is tested\n") == {
        "runbook-workerdown",
        "how-this-is-tested",
    }


def test_every_recording_rule_feeds_an_alert_and_a_dashboard_and_is_unit_tested() -> None:
    """Recording rules exist to share an expression between the alerts and the
    dashboards: each one is used by both, and promtool tests what it computes."""
    records = [r["record"] for r in load_recording_rules()]
    assert records, "no recording rules"
    assert len(records) == len(set(records)), records
    alert_exprs = [r["expr"] for r in load_alert_rules()]
    dashboard_exprs = [e for _, e in dashboard_prom_exprs()]
    tests = yaml.safe_load((PROM_DIR / "alerts.test.yml").read_text())["tests"]
    tested = {case["expr"] for test in tests for case in test.get("promql_expr_test", [])}

    def uses(expr: str, record: str) -> bool:
        return re.search(rf"(?<![\w:]){re.escape(record)}(?![\w:])", expr) is not None

    for record in records:
        assert any(uses(e, record) for e in alert_exprs), f"{record}: no alert uses it"
        assert any(uses(e, record) for e in dashboard_exprs), f"{record}: no dashboard uses it"
        assert record in tested, f"{record}: no promql_expr_test in alerts.test.yml"


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    doc = yaml.safe_load((PROM_DIR / "alerts.test.yml").read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert firing == ALERTS, f"alerts without a firing test: {ALERTS - firing}"
    assert quiet == ALERTS, f"alerts without a quiet test: {ALERTS - quiet}"


# ---------------------------------------------------------- alertmanager ---
def test_amtool_check_config() -> None:
    amtool = find_binary("amtool", APT_HINT)
    run([amtool, "check-config", str(PROM_DIR / "alertmanager.yml")])


def test_alertmanager_routing_and_inhibition() -> None:
    amtool = find_binary("amtool", APT_HINT)
    cfg = str(PROM_DIR / "alertmanager.yml")
    for severity in ("critical", "warning"):
        out = run(
            [
                amtool,
                "config",
                "routes",
                "test",
                f"--config.file={cfg}",
                f"severity={severity}",
                "alertname=X",
                "service=worker",
            ]
        ).stdout
        assert out.strip() == f"webhook-{severity}", out
    doc = yaml.safe_load(Path(cfg).read_text())
    assert set(doc["route"]["group_by"]) == {"alertname", "service"}
    inhibit = doc["inhibit_rules"]
    assert any(
        r["source_matchers"] == ['alertname="WorkerDown"']
        and re.fullmatch(
            r'alertname=~"(QueueBacklog\|MessagesStuck|MessagesStuck\|QueueBacklog)"',
            r["target_matchers"][0],
        )
        # Alerts keep their environment: a dead worker silences only its own.
        and set(r["equal"]) == {"service", "deployment_environment_name"}
        for r in inhibit
    ), inhibit


# ------------------------------------------------------------- collector ---
def collector_env(tmp_path: Path) -> dict[str, str]:
    """What a native run gives the collector (the harness' renderer)."""
    return clean_env(
        **configs.collector_env(
            otlp_grpc=4317,
            otlp_http=4318,
            prom_exporter=8889,
            health=13133,
            self_metrics=8888,
            jaeger_otlp_grpc="127.0.0.1:14317",
            victorialogs_logs="http://127.0.0.1:19428/insert/opentelemetry/v1/logs",
            storage_dir=tmp_path / "storage",
        )
    )


def test_otelcol_validate(tmp_path: Path) -> None:
    otelcol = otelcol_binary()
    run(
        [otelcol, "validate", "--config", str(COLLECTOR_DIR / "config.yaml")],
        env=collector_env(tmp_path),
    )


def test_otelcol_validate_with_defaults(tmp_path: Path) -> None:
    """The compose defaults (no env set) must be valid too."""
    otelcol = otelcol_binary()
    run([otelcol, "validate", "--config", str(COLLECTOR_DIR / "config.yaml")], env=clean_env())


def test_manifest_has_exactly_the_components_the_config_uses() -> None:
    otelcol = otelcol_binary()
    built = yaml.safe_load(run([otelcol, "components"]).stdout)
    config = yaml.safe_load((COLLECTOR_DIR / "config.yaml").read_text())
    for kind in ("receivers", "processors", "exporters", "connectors", "extensions"):
        available = {c["name"] for c in built.get(kind) or []}
        used = {key.split("/")[0] for key in config.get(kind) or {}}
        assert used == available, (
            f"{kind}: config uses {sorted(used)}, manifest builds {sorted(available)}"
        )


# What the PII backstop (transform/pii) must reach, per signal: every text a
# backend stores or shows.
PII_TARGETS = {
    "trace_statements": {
        "resource.attributes",
        "scope.attributes",
        "span.name",
        "span.status.message",
        "span.attributes",
        "spanevent.name",
        "spanevent.attributes",
    },
    "metric_statements": {"resource.attributes", "datapoint.attributes"},
    "log_statements": {"resource.attributes", "scope.attributes", "log.body", "log.attributes"},
}
_OTTL_STRING = r'"((?:[^"\\]|\\.)*)"'
_STATEMENT = re.compile(
    rf"(replace_pattern|replace_all_patterns)\(([\w.]+), (?:\"value\", )?{_OTTL_STRING}, "
    rf"{_OTTL_STRING}\)(?: where .+)?"
)


def test_pii_backstop_runs_the_same_patterns_on_every_target_of_every_pipeline() -> None:
    """OTTL has no variables: the patterns are repeated per target, so check
    they are repeated exactly (tests/observability/test_collector.py checks
    what they do)."""
    config = yaml.safe_load((COLLECTOR_DIR / "config.yaml").read_text())
    pii = config["processors"]["transform/pii"]
    assert set(pii) - {"error_mode"} == set(PII_TARGETS)
    canonical: list[tuple[str, str]] | None = None
    for signal, targets in PII_TARGETS.items():
        by_target: dict[str, list[tuple[str, str]]] = {}
        for statement in pii[signal]:
            match = _STATEMENT.fullmatch(statement)
            assert match, f"{signal}: unexpected statement {statement}"
            _, target, pattern, replacement = match.groups()
            by_target.setdefault(target, []).append((pattern, replacement))
        assert set(by_target) == targets, f"{signal}: targets {sorted(by_target)}"
        for target, all_steps in by_target.items():
            steps = all_steps
            if target == "log.body":  # a string body, then the values of a map body
                half = len(all_steps) // 2
                assert all_steps[:half] == all_steps[half:], all_steps
                steps = all_steps[:half]
            canonical = canonical or steps
            assert steps == canonical, f"{signal}: {target} differs from the other targets"
    assert canonical is not None
    assert len(canonical) == 3
    # Every pipeline: memory_limiter first, the backstop, then batch.
    for name, pipeline in config["service"]["pipelines"].items():
        assert pipeline["processors"] == ["memory_limiter", "transform/pii", "batch"], name


# ---------------------------------------------------------------- jaeger ---
def test_jaeger_validate() -> None:
    jaeger = find_binary("jaeger", BUILD_HINT, env_var="JAEGER_BIN")
    run([jaeger, "validate", "--config", str(REPO / "jaeger" / "config.yaml")])


# --------------------------------------------------------------- grafana ---
def test_committed_dashboards_are_the_generated_ones() -> None:
    generated = dashboard_generator().generate()
    committed = {p.name: p.read_text() for p in (REPO / "grafana" / "dashboards").glob("*.json")}
    assert set(committed) == set(generated), "run `make dashboards` (grafana/generate.py)"
    for name, text in generated.items():
        assert committed[name] == text, (
            f"{name} differs from grafana/generate.py's output: run `make dashboards`"
        )
    assert dashboard_generator().main(["--check"]) == 0


def test_grafana_datasources_have_fixed_uids_and_exemplar_link() -> None:
    doc = yaml.safe_load(DATASOURCES.read_text())
    by_uid = {ds["uid"]: ds for ds in doc["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["jaeger"]["type"] == "jaeger"
    dests = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": "jaeger"}.items() <= dests[0].items()
    # Traces link to their logs, a log record's trace id to its trace; `$$` is
    # Grafana's escape of `$` in provisioning files.
    assert by_uid["victorialogs"]["type"] == "victoriametrics-logs-datasource"
    to_logs = by_uid["jaeger"]["jsonData"]["tracesToLogsV2"]
    assert to_logs["datasourceUid"] == "victorialogs"
    assert to_logs["customQuery"] is True
    assert to_logs["query"] == 'trace_id:"$${__trace.traceId}"'
    [derived] = by_uid["victorialogs"]["jsonData"]["derivedFields"]
    assert derived == {
        "name": "trace_id",
        "matcherType": "label",
        "matcherRegex": "trace_id",  # the field VictoriaLogs stores the OTLP trace id in
        "datasourceUid": "jaeger",
        "url": "$${__value.raw}",
        "urlDisplayLabel": "View trace in Jaeger",
    }


def test_every_dashboard_datasource_is_provisioned() -> None:
    uids = provisioned_uids()
    for fname, dash in load_dashboards().items():
        assert dash.get("description", "").strip(), f"{fname} needs a description"
        assert dash.get("uid"), fname
        assert dash.get("title"), fname
        panels = [p for p in iter_panels(dash["panels"]) if p.get("type") != "row"]
        assert panels, fname
        refs = []
        for panel in panels:
            refs.append((panel["title"], panel.get("datasource")))
            refs += [
                (f"{panel['title']} [{t['refId']}]", t.get("datasource", panel.get("datasource")))
                for t in panel.get("targets", [])
            ]
        refs += [
            (f"variable {v['name']}", v.get("datasource"))
            for v in dash.get("templating", {}).get("list", [])
            if v.get("type") == "query"
        ]
        for where, ds in refs:
            assert isinstance(ds, dict), f"{fname}: {where}: datasource {ds!r}"
            assert ds.get("uid") in uids, f"{fname}: {where}: datasource {ds!r}"
            assert ds.get("type") == uids[ds["uid"]], f"{fname}: {where}: datasource {ds!r}"
        ids = [p["id"] for p in iter_panels(dash["panels"])]
        assert len(ids) == len(set(ids)), f"{fname}: duplicate panel ids"


def test_all_promql_parses(tmp_path: Path) -> None:
    """Dashboard and alert expressions, checked by promtool as recording rules."""
    promtool = find_binary("promtool", APT_HINT)
    exprs = [(w, grafana_to_promql(e)) for w, e in dashboard_prom_exprs()]
    exprs += [(f"alerts.yml: {r['alert']}", r["expr"]) for r in load_alert_rules()]
    exprs += [(f"alerts.yml: {r['record']}", r["expr"]) for r in load_recording_rules()]
    assert len(exprs) > 20
    rules = {
        "groups": [
            {
                "name": "expr-check",
                "rules": [
                    {"record": f"wabot_expr_check:{i}", "expr": expr}
                    for i, (_, expr) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "exprs.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if proc.returncode != 0:
        index = "\n".join(f"  {i}: {where}" for i, (where, _) in enumerate(exprs))
        pytest.fail(
            f"promtool rejected expressions:\n{proc.stdout}{proc.stderr}\nrule index:\n{index}"
        )


def test_promql_uses_only_known_metric_names() -> None:
    """Raw names are ones the collector really exports; names with colons are
    recording rules of alerts.yml."""
    known = APP_METRICS | COLLECTOR_METRICS | PROMETHEUS_METRICS | INFRA_METRICS
    known |= {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "count", "sum")}
    recorded = {r["record"] for r in load_recording_rules()}
    exprs = [(w, e) for w, e in dashboard_prom_exprs()]
    exprs += [(f"alerts.yml: {r['alert']}", r["expr"]) for r in load_alert_rules()]
    exprs += [(f"alerts.yml: {r['record']}", r["expr"]) for r in load_recording_rules()]
    for where, expr in exprs:
        # Drop strings, label matchers, range selectors and grouping clauses:
        # the identifiers left are metric names and function names.
        bare = re.sub(r'"[^"]*"', '""', expr)
        bare = re.sub(r"\{[^}]*\}", "", bare)
        bare = re.sub(r"\[[^\]]*\]", "", bare)
        bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
        for name in re.findall(r"(?<![\w:])[a-zA-Z_:][a-zA-Z0-9_:]*", bare):
            if ":" in name:
                assert name in recorded, f"{where}: {name!r} is not a recording rule"
            elif name.startswith(CHECKED_PREFIXES):
                assert name in known, f"{where}: unknown metric {name!r}"
