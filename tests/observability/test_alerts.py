"""Failure -> alert -> notification, end to end, with the committed rules.

Prometheus evaluates a test copy of prometheus/alerts.yml whose only change is
shorter `for:` durations (checked below), and Alertmanager a copy of
prometheus/alertmanager.yml with the webhook URL pointing at a local receiver
and shorter grouping delays. So:
  * stopping the worker while webhooks keep arriving fires WorkerDown, and
    Alertmanager posts it to the receiver; restarting the worker resolves it
    (a resolved notification), and the queued messages are stored;
  * a poison stream entry is dead-lettered at once and fires DeadLettersGrowing.

This module sorts first among the live tests on purpose: DeadLettersGrowing
looks back 15 minutes, so it must be quiet before the poison entry here, i.e.
no earlier test of the session may have dead-lettered anything.
"""

from __future__ import annotations

from typing import Any

import yaml

from tests.support.alerts import AlertReceiver
from tests.support.stack.alerting import Alertmanager, Prometheus
from tests.support.stack.backend import ObsStack
from tests.support.stack.configs import (
    AM_WEBHOOK_PLACEHOLDER,
    RULE_FOR,
    alert_rules_test_copy,
    alertmanager_test_config,
    prometheus_test_config,
)
from tests.support.stack.net import wait_for
from tests.support.stack.paths import PROM_DIR

TIMEOUT = 45  # seconds for any alert transition (each takes a few seconds)


def test_test_copies_change_only_addresses_and_timings() -> None:
    committed = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    copy = alert_rules_test_copy()
    assert [g["name"] for g in copy["groups"]] == [g["name"] for g in committed["groups"]]
    for group, committed_group in zip(copy["groups"], committed["groups"], strict=True):
        for rule, original in zip(group["rules"], committed_group["rules"], strict=True):
            # Identical expression, labels and annotations; only `for` differs.
            name = rule.get("alert") or rule["record"]
            assert rule["expr"] == original["expr"], name
            assert {k: v for k, v in rule.items() if k != "for"} == {
                k: v for k, v in original.items() if k != "for"
            }
            assert rule.get("for", RULE_FOR) == RULE_FOR

    def untimed(route: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in route.items() if k not in ("group_wait", "group_interval")}
        out["routes"] = [untimed(r) for r in route.get("routes", [])]
        return out

    am_committed = yaml.safe_load((PROM_DIR / "alertmanager.yml").read_text())
    am_copy = alertmanager_test_config(AM_WEBHOOK_PLACEHOLDER)
    assert untimed(am_copy["route"]) == untimed(am_committed["route"])
    assert {k: v for k, v in am_copy.items() if k != "route"} == {
        k: v for k, v in am_committed.items() if k != "route"
    }

    prom_copy = yaml.safe_load(
        prometheus_test_config("a:1", "b:2", "c:3", redis_exporter="d:4", postgres_exporter="e:5")
    )
    prom_committed = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    assert prom_copy["rule_files"] == prom_committed["rule_files"]
    assert [j["job_name"] for j in prom_copy["scrape_configs"]] == [
        "wabot",
        "otel-collector",
        "redis",
        "postgres",
    ]
    for job, original in zip(
        prom_copy["scrape_configs"], prom_committed["scrape_configs"], strict=True
    ):
        assert {k: v for k, v in job.items() if k != "static_configs"} == {
            k: v for k, v in original.items() if k != "static_configs"
        }


def wait_inactive(prometheus: Prometheus, alertname: str) -> None:
    wait_for(
        lambda: not prometheus.alert_states(alertname),
        timeout=TIMEOUT,
        what=f"{alertname} to be inactive in Prometheus",
        interval=0.25,
    )


def check_alert(alert: dict[str, Any], severity: str) -> None:
    assert alert["labels"]["severity"] == severity
    assert alert["labels"]["service"] == "worker"
    anchor = alert["labels"]["alertname"].lower()
    assert alert["annotations"]["runbook_url"].endswith(f"docs/observability.md#runbook-{anchor}")
    assert alert["annotations"]["summary"]


def test_worker_down_fires_notifies_and_resolves(
    obs_stack: ObsStack,
    samples: dict[str, dict[str, Any]],
    prometheus: Prometheus,
    alertmanager: Alertmanager,
    alert_receiver: AlertReceiver,
) -> None:
    obs_stack.start_ingest()
    worker = obs_stack.start_worker(name="w-down")
    # Healthy first (WorkerDown fires whenever no worker runs, e.g. at start).
    wait_inactive(prometheus, "WorkerDown")
    mark = alert_receiver.mark()

    worker.terminate()
    trace_ids = [obs_stack.post_message(samples["messages-upsert-text"]) for _ in range(3)]

    note, alert = alert_receiver.wait_for("WorkerDown", "firing", after=mark, timeout=TIMEOUT)
    check_alert(alert, "critical")
    assert note.body["receiver"] == "webhook-critical"
    assert "firing" in prometheus.alert_states("WorkerDown")
    assert any(a["labels"]["alertname"] == "WorkerDown" for a in alertmanager.alerts())
    assert obs_stack.rows() == [], "messages were stored without a worker"

    # Same consumer name: the restarted worker takes over the queued entries.
    obs_stack.start_worker(name="w-down")
    _, resolved = alert_receiver.wait_for(
        "WorkerDown", "resolved", after=note.index + 1, timeout=TIMEOUT
    )
    assert resolved["labels"] == alert["labels"]
    rows = obs_stack.wait_rows(3)
    assert {r["trace_id"] for r in rows} == set(trace_ids)


def test_poison_message_is_dead_lettered_and_fires_dead_letters_growing(
    obs_stack: ObsStack, prometheus: Prometheus, alert_receiver: AlertReceiver
) -> None:
    assert not prometheus.alert_states("DeadLettersGrowing"), (
        "DeadLettersGrowing already fires (it looks back 15m): another test of this "
        "session dead-lettered a message before this one"
    )
    obs_stack.start_worker()
    env = f'deployment_environment_name="{obs_stack.environment}"'
    dead_length = f"whatsapp_queue_dead_letter_length{{{env}}}"
    # The alert takes delta() of the recorded series, which needs a "before"
    # sample: wait until it has been recorded as 0 twice.
    recorded = f"env_destination:whatsapp_queue_dead_letter_length:max{{{env}}}"
    wait_for(
        lambda: prometheus.query(f"count_over_time({recorded}[1m]) >= 2 and {recorded} == 0"),
        timeout=TIMEOUT,
        what=f"two evaluations of {recorded} == 0",
        interval=0.25,
    )
    mark = alert_receiver.mark()

    poison_id = obs_stack.xadd({"payload": "this is not JSON", "event": "messages.upsert"})

    dead = wait_for(
        obs_stack.queue.dead_letters,
        timeout=10,
        what="the poison entry in the dead-letter stream",
    )
    [(_, fields)] = dead
    assert fields["original_id"] == poison_id
    # Never processable: dead-lettered on its first delivery, with its cause.
    assert fields["deliveries"] == "1", fields
    assert fields["error_type"], fields

    wait_for(
        lambda: (
            prometheus.query(
                f'whatsapp_message_outcomes_total{{{env}, whatsapp_outcome="dead_lettered"}} == 1'
            )
            and prometheus.query(f"{dead_length} == 1")
        ),
        timeout=TIMEOUT,
        what="the dead-letter outcome and gauge in Prometheus",
        interval=0.25,
    )
    note, alert = alert_receiver.wait_for(
        "DeadLettersGrowing", "firing", after=mark, timeout=TIMEOUT
    )
    check_alert(alert, "warning")
    assert note.body["receiver"] == "webhook-warning"
