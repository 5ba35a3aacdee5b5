"""Poison messages go to the dead-letter stream with their trace context, are
counted, leave the other messages alone, and can be re-driven."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

from tests.support.load import EvolutionLoad
from tests.support.oracle import Oracle
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack
from tests.support.stack.queue import QueueView
from wabot_shared import names

MAX_DELIVERIES = 3


def traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def too_deep_payload(message_id: str) -> str:
    """A webhook body with a valid ``data.key`` whose message content is nested
    deeper than any JSON parser will go: parsing it fails the same way every time
    (the parser's recursion limit), so it is dead-lettered at once."""
    head = json.dumps(
        {
            "event": "messages.upsert",
            "instance": "clinic-sao-paulo",
            "data": {
                "key": {
                    "remoteJid": "5511900000000@s.whatsapp.net",
                    "fromMe": False,
                    "id": message_id,
                }
            },
        }
    )
    depth = 100_000
    return head[:-2] + ', "message": ' + "[" * depth + "]" * depth + "}}"


def test_poison_messages_are_dead_lettered_counted_and_redriven(
    stack: Stack, make_load: Callable[..., EvolutionLoad], oracle: Oracle, queue: QueueView
) -> None:
    stack.start_ingest()
    stack.start_worker(MAX_DELIVERIES=str(MAX_DELIVERIES))
    load = make_load(rate=30, count=60).start()

    poison = {
        "POISON-NOT-JSON": ("{not json", traceparent()),
        "POISON-TOO-DEEP": (too_deep_payload("POISON-TOO-DEEP"), traceparent()),
    }
    original: dict[str, str] = {}
    for message_id, (payload, parent) in poison.items():
        original[message_id] = queue.xadd(
            {
                names.FIELD_PAYLOAD: payload,
                names.FIELD_EVENT: "messages.upsert",
                names.FIELD_INSTANCE: "clinic-sao-paulo",
                names.FIELD_MESSAGE_ID: message_id,
                "traceparent": parent,
            }
        )
    load.finish(timeout=30)
    oracle.check(load, poison=set(poison))  # the other messages are unaffected

    dead = {f["message_id"]: (dead_id, f) for dead_id, f in queue.dead_letters()}
    expected = {
        # Neither can ever be read by the message model: dead-lettered at once.
        # (An entry that fails again and again is tested in test_poison_isolation.)
        "POISON-NOT-JSON": ("InvalidPayload", "1"),
        "POISON-TOO-DEEP": ("InvalidPayload", "1"),
    }
    for message_id, (error_type, deliveries) in expected.items():
        fields = dead[message_id][1]
        assert fields["payload"] == poison[message_id][0], message_id
        assert fields["traceparent"] == poison[message_id][1], message_id
        assert fields["error_type"] == error_type, fields
        assert fields["deliveries"] == deliveries, fields
        assert fields["original_id"] == original[message_id]
        assert fields["error"]

    def outcome(name: str) -> float:
        return stack.cumulative(names.METRIC_OUTCOMES, "worker", **{names.ATTR_OUTCOME: name})

    processed = len(load.accepted_ids)
    wait_for(
        lambda: (
            outcome("dead_lettered") == 2
            and outcome("failed") == 0
            and outcome("processed") == processed
        ),
        timeout=15,
        what=f"2 dead_lettered, 0 failed, {processed} processed outcomes",
    )

    # Re-drive the unparseable one: it goes back onto the stream, trace context kept.
    dead_id = dead["POISON-NOT-JSON"][0]
    result = stack.run_worker_cli("redrive", "--id", dead_id)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "re-drove 1 message(s)" in result.stdout
    [moved] = [
        json.loads(line)["new_ids"]
        for line in result.stdout.splitlines()
        if line.startswith("{") and "new_ids" in line
    ]
    assert len(moved) == 1
    redriven = queue.entry(moved[0])
    assert redriven["traceparent"] == poison["POISON-NOT-JSON"][1]
    assert redriven["payload"] == poison["POISON-NOT-JSON"][0]
    assert not names.DEAD_LETTER_FIELDS & set(redriven)
    assert dead_id not in {i for i, _ in queue.dead_letters()}

    # Still poison: the worker dead-letters it again, from its new entry.
    wait_for(
        lambda: any(f.get("original_id") == moved[0] for _, f in queue.dead_letters()),
        timeout=15,
        what="the re-driven entry to be dead-lettered again",
    )
    oracle.check(load, poison=set(poison))
