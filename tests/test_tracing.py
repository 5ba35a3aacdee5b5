"""One W3C trace per message, across ingest, the Redis stream and the worker."""

from __future__ import annotations

import json
import secrets
from typing import Any

from tests.support.evolution import EvolutionStub
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack
from wabot_shared import names

INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def spans_by_kind(
    stack: Stack, trace_id: str, expect: dict[tuple[str, int], int]
) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        spans = stack.sink.spans_of(trace_id)
        counts = {key: sum(1 for s in spans if (s["service"], s["kind"]) == key) for key in expect}
        return spans if all(counts[k] >= n for k, n in expect.items()) else None

    return wait_for(ready, timeout=20, what=f"spans {expect} of trace {trace_id}")


def one(
    spans: list[dict[str, Any]], service: str, kind: int, name: str | None = None
) -> dict[str, Any]:
    found = [
        s
        for s in spans
        if s["service"] == service and s["kind"] == kind and (name is None or s["name"] == name)
    ]
    assert len(found) == 1, (service, kind, name, [(s["service"], s["name"]) for s in spans])
    return found[0]


def start_replying_pipeline(stack: Stack, evolution_stub: EvolutionStub) -> None:
    """Ingest and a worker that auto-replies through the Evolution stub, for a
    registered instance (replies are only sent for known instances)."""
    stack.register_instance("clinic-sao-paulo")
    stack.start_ingest()
    stack.start_worker(
        REPLY_ENABLED="true",
        EVOLUTION_API_URL=evolution_stub.url,
        EVOLUTION_API_KEY="evolution-key-" + secrets.token_hex(8),
    )


def test_one_trace_follows_the_message_across_every_hop(
    stack: Stack, samples: dict[str, dict[str, Any]], evolution_stub: EvolutionStub
) -> None:
    start_replying_pipeline(stack, evolution_stub)
    header, trace_id, caller_span = traceparent()
    tracestate = "vendor1=opaque-value,wabot=t61rcWkgMzE"
    baggage = "tenant.tier=gold,request.origin=evolution"
    resp = stack.post(
        samples["messages-upsert-text"],
        headers={"traceparent": header, "tracestate": tracestate, "baggage": baggage},
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["trace_id"] == trace_id

    # The stream entry carries the W3C context as separate fields; the caller's
    # baggage is neither stored nor forwarded (a sender could put anything there).
    [(entry_id, fields)] = stack.queue.entries()
    assert fields["traceparent"].split("-")[1] == trace_id
    assert fields["tracestate"] == tracestate
    assert "baggage" not in fields
    assert entry_id == resp.json()["stream_id"]

    spans = spans_by_kind(
        stack,
        trace_id,
        {
            ("ingest", SERVER): 1,
            ("ingest", PRODUCER): 1,
            ("worker", CONSUMER): 1,
            ("worker", CLIENT): 3,
        },
    )
    server = one(spans, "ingest", SERVER)
    send = one(spans, "ingest", PRODUCER, f"send {stack.stream}")
    process = one(spans, "worker", CONSUMER, f"process {stack.stream}")
    assert server["parent_span_id"] == caller_span
    assert server["attributes"]["http.request.method"] == "POST"
    assert server["attributes"]["http.route"] == "/webhooks/evolution"
    assert server["attributes"]["http.response.status_code"] == 202
    assert send["parent_span_id"] == server["span_id"]
    assert send["attributes"]["messaging.system"] == "redis"
    assert send["attributes"]["messaging.operation.type"] == "send"
    assert send["attributes"]["messaging.destination.name"] == stack.stream
    assert send["attributes"]["messaging.message.id"] == entry_id
    partition = send["attributes"]["messaging.destination.partition.id"]
    assert partition == fields["partition"]
    # Parent is the send span (one trace per message), plus a link to it.
    assert process["parent_span_id"] == send["span_id"]
    assert process["links"] == [{"trace_id": trace_id, "span_id": send["span_id"]}]
    attrs = process["attributes"]
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.operation.name"] == "process"
    assert attrs["messaging.consumer.group.name"] == names.DEFAULT_GROUP
    assert attrs["messaging.message.id"] == entry_id
    assert attrs["messaging.destination.name"] == stack.stream
    assert attrs["messaging.destination.partition.id"] == partition
    # tracestate survives the stream hop.
    assert process["trace_state"] == tracestate

    db_spans = [
        s
        for s in spans
        if s["service"] == "worker"
        and s["kind"] == CLIENT
        and s["attributes"].get("db.system.name") == "postgresql"
    ]
    assert db_spans, "no DB client spans"
    assert all(s["parent_span_id"] == process["span_id"] for s in db_spans)
    # Written by the worker itself: no query text, no parameters, no error text.
    [insert] = db_spans
    assert insert["name"] == "INSERT healthcare.whatsapp_messages"
    assert insert["attributes"]["db.operation.name"] == "INSERT"
    assert insert["attributes"]["db.collection.name"] == "healthcare.whatsapp_messages"
    assert "db.query.text" not in insert["attributes"]

    rows = stack.wait_rows(1)
    assert rows[0]["trace_id"] == trace_id
    assert rows[0]["resolution"] == "instance"

    # The acknowledgement is a messaging "settle" span inside the process span.
    [ack] = [s for s in spans if s["attributes"].get("messaging.operation.type") == "settle"]
    assert ack["parent_span_id"] == process["span_id"]
    assert ack["name"] == f"ack {stack.stream}"
    assert ack["attributes"]["messaging.operation.name"] == "ack"

    # The reply to Evolution continues the trace, with tracestate (and no baggage).
    wait_for(lambda: evolution_stub.requests, timeout=10, what="auto-reply request")
    reply = next(
        r for r in evolution_stub.requests if trace_id in r["headers"].get("traceparent", "")
    )
    assert reply["headers"]["tracestate"] == tracestate
    assert "baggage" not in reply["headers"]
    assert reply["path"] == "/message/sendText/clinic-sao-paulo"
    # The outbox sender's span for it is a child of the message's process span,
    # and the HTTP client span of the call to Evolution a child of that.
    spans = spans_by_kind(stack, trace_id, {("worker", CLIENT): 3, ("worker", INTERNAL): 2})
    [handled] = [s for s in spans if s["name"] == "handle whatsapp message"]
    assert handled["parent_span_id"] == process["span_id"]
    [sender] = [s for s in spans if s["name"] == "reply whatsapp"]
    assert sender["parent_span_id"] == process["span_id"]
    http_client = [
        s
        for s in spans
        if s["kind"] == CLIENT and s["attributes"].get("http.request.method") == "POST"
    ]
    assert http_client, "no HTTP client span for the reply"
    assert [(s["service"], s["name"], s["parent_span_id"]) for s in http_client] == [
        ("worker", "POST", sender["span_id"])
    ]

    # Log lines written while handling it carry the trace id, on stdout and over OTLP.
    def logged() -> bool:
        services = {
            r["service"]
            for svc in stack.services
            for r in svc.json_logs()
            if r.get("trace_id") == trace_id
        }
        return services == {"ingest", "worker"}

    wait_for(logged, timeout=10, what="stdout log lines with the trace id from both services")
    wait_for(
        lambda: {r["service"] for r in stack.sink.logs_of(trace_id)} == {"ingest", "worker"},
        timeout=10,
        what="OTLP log records with the trace id from both services",
    )
    for record in stack.sink.logs_of(trace_id):
        assert len(record["span_id"]) == 16
        assert record["span_id"] != "0" * 16


def test_garbage_traceparent_starts_a_new_valid_trace(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    stack.start_ingest()
    stack.start_worker()
    garbage = "00-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-0000000000000000-01"
    resp = stack.post(samples["messages-upsert-image"], headers={"traceparent": garbage})
    assert resp.status_code == 202, resp.text
    trace_id = resp.json()["trace_id"]
    assert len(trace_id) == 32
    assert int(trace_id, 16) != 0
    spans = spans_by_kind(stack, trace_id, {("ingest", SERVER): 1, ("worker", CONSUMER): 1})
    assert one(spans, "ingest", SERVER)["parent_span_id"] == ""
    assert stack.wait_rows(1)[0]["trace_id"] == trace_id


def test_from_me_messages_are_stored_but_never_replied_to(
    stack: Stack, samples: dict[str, dict[str, Any]], evolution_stub: EvolutionStub
) -> None:
    start_replying_pipeline(stack, evolution_stub)
    before = len(evolution_stub.requests)
    mine = stack.post(samples["messages-upsert-from-me"]).json()["trace_id"]
    theirs = stack.post(samples["messages-upsert-text"]).json()["trace_id"]
    stack.wait_rows(2)
    wait_for(
        lambda: any(
            theirs in r["headers"].get("traceparent", "") for r in evolution_stub.requests[before:]
        ),
        timeout=10,
        what="reply to the patient's message",
    )
    spans_by_kind(stack, mine, {("worker", CONSUMER): 1})  # fully processed
    assert not any(mine in r["headers"].get("traceparent", "") for r in evolution_stub.requests)
    reply = next(
        r for r in evolution_stub.requests[before:] if theirs in r["headers"].get("traceparent", "")
    )
    jid = samples["messages-upsert-text"]["data"]["key"]["remoteJid"]
    assert reply["json"]["number"] == jid.split("@")[0]
    assert json.dumps(reply["json"])  # a JSON body was sent
