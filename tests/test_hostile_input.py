"""The hostile review's reproductions, against real processes: every body is
either refused with a 4xx at ingest or stored, none is dead-lettered, the
message sent right after each one is stored within seconds, and nothing of
their content reaches telemetry or logs, database errors included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.evolution import EvolutionStub
from tests.support.leaks import assert_no_leaks, sensitive_values
from tests.support.messages import upsert
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack

TEXT = "Tenho dor no peito e falta de ar desde ontem"


def raw_with(body: dict[str, Any], marker: str, literal: str) -> bytes:
    return json.dumps(body).encode().replace(f'"{marker}"'.encode(), literal.encode())


def cases(template: dict[str, Any]) -> list[tuple[str, bytes, int]]:
    """(message id, raw body, expected status)."""

    def body(message_id: str, **data: Any) -> dict[str, Any]:
        b = upsert(template, message_id=message_id, text=TEXT)
        b["data"].update(data)
        return b

    long_id = upsert(template, message_id="x" * 8000)
    return [
        ("long-id", json.dumps(long_id).encode(), 422),
        ("nan", raw_with(body("nan", extra="@"), "@", "NaN"), 400),
        ("infinity", raw_with(body("infinity", extra="@"), "@", "-Infinity"), 400),
        ("overflow", raw_with(body("overflow", extra="@"), "@", "1e400"), 202),
        ("huge-int", raw_with(body("huge-int", extra="@"), "@", "9" * 40), 202),
        ("ts-low-x", json.dumps(body("ts-low-x", messageTimestamp={"low": "x"})).encode(), 202),
        ("ts-high", raw_with(body("ts-high", messageTimestamp="@"), "@", '{"high": 1e300}'), 202),
        (
            "ts-long",
            json.dumps(body("ts-long", messageTimestamp={"low": 1764321302, "high": 0})).encode(),
            202,
        ),
        ("nul\u0000id", json.dumps(body("nul\u0000id", pushName="Ana\u0000Paula")).encode(), 202),
        ("surrogate", raw_with(body("surrogate", pushName="@"), "@", '"\\ud800"'), 202),
        ("deep", json.dumps(body("deep", extra=nest(150))).encode(), 202),
    ]


def nest(depth: int) -> Any:
    node: Any = TEXT
    for _ in range(depth):
        node = {"quoted": node}
    return node


def test_hostile_bodies_are_refused_or_stored_and_never_block_the_next_message(
    stack: Stack, samples: dict[str, dict[str, Any]], evolution_stub: EvolutionStub
) -> None:
    template = samples["messages-upsert-text"]
    stack.register_instance(template["instance"])
    stack.start_ingest()
    stack.start_worker(
        REPLY_ENABLED="true",
        EVOLUTION_API_URL=evolution_stub.url,
        EVOLUTION_API_KEY="evolution-key-0123456789",
    )
    stored = []
    for index, (message_id, raw, expected) in enumerate(cases(template)):
        resp = stack.post(None, raw=raw)
        assert resp.status_code == expected, (message_id, resp.text)
        assert TEXT not in resp.text
        if expected == 202:
            stored.append(message_id.replace("\u0000", "\ufffd"))
        # The next message is stored within seconds, whatever came before it.
        follow = f"after-{index}"
        assert stack.post(upsert(template, message_id=follow)).status_code == 202
        stack.wait_rows(1, timeout=15, where="message_id = %s", params=(follow,))
    rows = {r["message_id"]: r for r in stack.rows()}
    for message_id in stored:
        assert message_id in rows, message_id
    assert "nul\ufffdid" in rows
    assert rows["ts-long"]["message_timestamp"].timestamp() == 1764321302
    for message_id, issue in [
        ("overflow", "number_out_of_range"),
        ("huge-int", "number_out_of_range"),
        ("ts-low-x", "timestamp_unreadable"),
        ("ts-high", "timestamp_unreadable"),
        ("nul\ufffdid", "nul_replaced"),
        ("surrogate", "surrogate_replaced"),
    ]:
        assert issue in rows[message_id]["parse_issues"], message_id
    assert rows["overflow"]["raw_payload"]["data"]["extra"] is None
    wait_for(lambda: stack.queue.unacknowledged() == 0, timeout=20, what="nothing waiting")
    assert stack.queue.dead_letters() == []


@pytest.mark.parametrize("from_me", ["false", "FALSE", False])
def test_from_me_false_as_a_string_is_read_alike_by_both_services(
    stack: Stack,
    samples: dict[str, dict[str, Any]],
    evolution_stub: EvolutionStub,
    from_me: Any,
) -> None:
    """It once was False for ingest and True for the worker, which changed the
    dedupe key and suppressed the reply."""
    template = samples["messages-upsert-text"]
    stack.register_instance(template["instance"])
    stack.start_ingest()
    stack.start_worker(
        REPLY_ENABLED="true",
        EVOLUTION_API_URL=evolution_stub.url,
        EVOLUTION_API_KEY="evolution-key-0123456789",
    )
    message_id = f"from-me-{from_me}"
    jid = "5511911112222@s.whatsapp.net"
    body = upsert(template, message_id=message_id, remote_jid=jid, from_me=from_me)
    assert stack.post(body).status_code == 202
    [row] = stack.wait_rows(1, where="message_id = %s", params=(message_id,))
    assert row["from_me"] is False
    wait_for(
        lambda: any(r["json"].get("number") == "5511911112222" for r in evolution_stub.requests),
        timeout=10,
        what="the auto-reply to a message that was not sent by us",
    )


def test_database_errors_never_carry_the_message_into_telemetry(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    """PostgreSQL quotes what it refuses (a trigger here does it on purpose):
    the span, the log record and the stdout traceback keep type and SQLSTATE."""
    template = samples["messages-upsert-text"]
    stack.sql(
        """
        CREATE FUNCTION healthcare.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.message_id = 'refused' THEN
                RAISE EXCEPTION 'cannot store %%', NEW.text_body USING ERRCODE = '22023';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_refuse BEFORE INSERT ON healthcare.whatsapp_messages
            FOR EACH ROW EXECUTE FUNCTION healthcare.test_refuse();
        """
    )
    stack.start_ingest(LOG_LEVEL="DEBUG")
    stack.start_worker(MAX_DELIVERIES="2", LOG_LEVEL="DEBUG")
    bodies = [upsert(template, message_id="refused", text=TEXT)]
    bodies += [raw for _, raw, code in cases(template) if code == 202]  # type: ignore[misc]
    for body in bodies:
        resp = stack.post(body) if isinstance(body, dict) else stack.post(None, raw=body)
        assert resp.status_code == 202
    wait_for(
        lambda: len(stack.queue.dead_letters()) == 1,
        timeout=30,
        what="the refused row dead-lettered",
    )
    [(_, dead)] = stack.queue.dead_letters()
    assert dead["error_type"] == "InvalidParameterValue 22023"
    wait_for(lambda: stack.queue.unacknowledged() == 0, timeout=20, what="nothing waiting")
    needles = {TEXT, *sensitive_values(template)}
    assert_no_leaks(stack, needles)
