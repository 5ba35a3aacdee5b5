"""The pipeline's metrics are exported with semantic-convention names and attributes."""

from __future__ import annotations

from typing import Any

from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack
from wabot_shared import names
from wabot_shared.message import CHAT_EVENTS


def latest(points: list[dict[str, Any]]) -> dict[str, Any]:
    return points[-1]


def test_pipeline_metrics_are_exported(stack: Stack, samples: dict[str, dict[str, Any]]) -> None:
    stack.start_ingest()
    stack.start_worker()
    for sample in samples.values():
        assert stack.post(sample).status_code == 202
    assert stack.post(samples["messages-upsert-text"]).status_code == 202  # a duplicate
    upserts = sum(1 for s in samples.values() if s["event"] == "messages.upsert")
    # Receipts, edits and deletions are queued too; connection updates are not.
    queued = sum(1 for s in samples.values() if s["event"] in CHAT_EVENTS) + 1
    ignored = len(samples) - queued + 1
    stack.wait_rows(upserts)

    def points(name: str, service: str) -> list[dict[str, Any]]:
        return wait_for(
            lambda: stack.metric_points(name, service),
            timeout=15,
            what=f"metric {name} from {service}",
        )

    sent = points("messaging.client.sent.messages", "ingest")
    assert sent[-1]["attributes"] == {
        "messaging.system": "redis",
        "messaging.destination.name": stack.stream,
        "messaging.operation.name": "send",
    }
    wait_for(
        lambda: stack.cumulative("messaging.client.sent.messages", "ingest") == queued,
        timeout=15,
        what="sent count",
    )
    wait_for(
        lambda: (
            stack.cumulative("whatsapp.webhook.events", "ingest", **{names.ATTR_OUTCOME: "ignored"})
            == ignored
        ),
        timeout=15,
        what="ignored events counted",
    )
    wait_for(
        lambda: stack.cumulative("messaging.client.consumed.messages", "worker") == queued,
        timeout=15,
        what="consumed count",
    )
    consumed = latest(points("messaging.client.consumed.messages", "worker"))
    assert consumed["attributes"]["messaging.consumer.group.name"] == names.DEFAULT_GROUP
    wait_for(
        lambda: (
            stack.cumulative(names.METRIC_OUTCOMES, "worker", **{names.ATTR_OUTCOME: "processed"})
            == upserts
            and stack.cumulative(
                names.METRIC_OUTCOMES, "worker", **{names.ATTR_OUTCOME: "duplicate"}
            )
            == 1
        ),
        timeout=15,
        what="processed and duplicate outcomes",
    )

    duration = latest(points("messaging.process.duration", "worker"))
    assert duration["kind"] == "histogram"
    assert duration["unit"] == "s"
    e2e = wait_for(
        lambda: [
            p
            for p in stack.metric_points("whatsapp.message.end_to_end.duration", "worker")
            if p["count"] == upserts
        ],
        timeout=15,
        what="end-to-end histogram",
    )
    assert 0 < e2e[-1]["sum"] / e2e[-1]["count"] < 10
    exemplar_traces = {
        e["trace_id"]
        for p in stack.metric_points("whatsapp.message.end_to_end.duration", "worker")
        for e in p["exemplars"]
    }
    assert exemplar_traces, "the end-to-end histogram carries no exemplars"
    assert {r["trace_id"] for r in stack.rows()} >= exemplar_traces

    # Queue gauges settle at: nothing pending, nothing lagging, every entry still in the stream.
    wait_for(
        lambda: (
            stack.cumulative("whatsapp.queue.pending", "worker") == 0
            and stack.cumulative("whatsapp.queue.lag", "worker") == 0
            and stack.cumulative("whatsapp.queue.length", "worker") == queued
        ),
        timeout=15,
        what="queue gauges",
    )
    heartbeat = latest(points("whatsapp.worker.heartbeat", "worker"))
    assert heartbeat["value"] > 1_700_000_000
    resolutions = points("whatsapp.instance.resolutions", "worker")
    assert {p["attributes"]["whatsapp.resolution"] for p in resolutions} == {"unresolved"}
    http = points("http.server.request.duration", "ingest")
    assert any(p["attributes"].get("http.route") == "/webhooks/evolution" for p in http)
