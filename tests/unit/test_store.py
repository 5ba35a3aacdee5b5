"""The store in-process against real PostgreSQL: a batch of messages goes as one
multi-row statement, and still says per message whether it was new, keeps
order, stores what a single-row insert stores, and isolates a bad row."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import psycopg
from opentelemetry import trace

from tests.support.messages import upsert
from tests.support.stack.env import CONTENT_KEYS
from wabot_shared.content import seal_row
from wabot_shared.crypto import Keyring
from wabot_shared.db import open_pool
from wabot_shared.message import Message, Receipt, parse_webhook, read_event
from wabot_worker.instances import Resolution
from wabot_worker.store import MessageStore, Write, Written
from wabot_worker.writes import Context, message_write, receipt_write

KEYRING = Keyring.parse(CONTENT_KEYS)
TRACER = trace.get_tracer("test")


def event(body: dict[str, Any]) -> Any:
    found = read_event(parse_webhook(json.dumps(body).encode()))
    assert found is not None
    return found


def write_of(body: dict[str, Any], stream_id: str, keyring: Keyring | None = KEYRING) -> Write:
    ev = event(body)
    span = TRACER.start_span("process")
    ctx = Context(
        stream_id=stream_id,
        received_at=datetime.now(UTC),
        span=span,
        resolution=Resolution("unresolved"),
        keyring=keyring,
    )
    if isinstance(ev, Receipt):
        return receipt_write(ctx, ev)
    assert isinstance(ev, Message)
    content = seal_row(
        keyring,
        (ev.instance, ev.remote_jid, ev.from_me, ev.message_id),
        ev.text,
        ev.push_name,
        json.dumps(body),
    )
    return message_write(ctx, ev, content, None)


def store_rounds(dsn: str, rounds: list[list[Write]]) -> list[Written]:
    """Hand every round in at once (one group commit), as concurrent chats do."""

    async def main() -> list[Written]:
        pool = await open_pool(dsn, max_size=2, name="test-store")
        store = MessageStore(pool, TRACER, {}, max_rows=1000)
        runner = asyncio.create_task(store.run())
        try:
            return list(await asyncio.gather(*(store.write(r) for r in rounds)))
        finally:
            store.close()
            await runner
            await pool.close()

    return asyncio.run(main())


def stored(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT message_id, stream_id, parse_issues, text_body, text_body_enc IS NOT NULL,"
            " raw_payload_enc IS NOT NULL, media_id FROM healthcare.whatsapp_messages ORDER BY id"
        ).fetchall()


def test_a_batch_says_which_messages_were_new_in_order(
    db_dsn: str, samples: dict[str, dict[str, Any]]
) -> None:
    text = samples["messages-upsert-text"]
    [[first]] = [
        w.inserted for w in store_rounds(db_dsn, [[write_of(upsert(text, message_id="A"), "1-0")]])
    ]
    assert first is True

    chat = [
        write_of(upsert(text, message_id="B"), "2-0"),
        write_of(upsert(text, message_id="A"), "2-1"),  # stored before: a duplicate
        write_of(upsert(text, message_id="C"), "2-2"),
        write_of(upsert(text, message_id="B"), "2-3"),  # twice in the same statement
        write_of(upsert(text, message_id="D"), "2-4"),
    ]
    other = [
        write_of(upsert(text, message_id="E", remote_jid="5511900000077@s.whatsapp.net"), "3-0")
    ]
    results = store_rounds(db_dsn, [chat, other])
    assert [r.inserted for r in results] == [[True, False, True, False, True], [True]]
    assert all(r.failure is None for r in results)
    rows = stored(db_dsn)
    # Row ids follow the order the rounds were handed in; the first of a twice-sent
    # message is the one stored; content sealed as by a single-row insert.
    assert [(r[0], r[1]) for r in rows] == [
        ("A", "1-0"),
        ("B", "2-0"),
        ("C", "2-2"),
        ("D", "2-4"),
        ("E", "3-0"),
    ]
    for row in rows:
        assert row[2:] == ([], None, True, True, None), row


def test_parse_issues_and_receipts_in_a_batch(
    db_dsn: str, samples: dict[str, dict[str, Any]]
) -> None:
    text = samples["messages-upsert-text"]
    odd = upsert(text, message_id="ODD")
    odd["data"]["messageTimestamp"] = "not a time"
    odd["data"]["pushName"] = "x" * 500
    receipt = samples["messages-update-status"]
    results = store_rounds(
        db_dsn,
        [
            [
                write_of(upsert(text, message_id="P1"), "1-0"),
                write_of(odd, "1-1"),
                write_of(receipt, "1-2"),  # breaks the run: its own statements, in place
                write_of(upsert(text, message_id="P2"), "1-3"),
            ]
        ],
    )
    assert results[0].failure is None
    assert results[0].inserted[:2] == [True, True]
    assert results[0].inserted[3] is True
    by_id = {r[0]: r for r in stored(db_dsn)}
    assert sorted(by_id) == ["ODD", "P1", "P2"]
    assert sorted(by_id["ODD"][2]) == sorted(event(odd).issues)
    assert by_id["ODD"][2], "the odd message has parse issues"
    assert by_id["P1"][2] == []


def test_a_bad_row_fails_only_its_own_round(
    db_dsn: str, samples: dict[str, dict[str, Any]]
) -> None:
    text = samples["messages-upsert-text"]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            """
            CREATE FUNCTION healthcare.test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.message_id = 'BAD' THEN
                    RAISE EXCEPTION 'refused' USING ERRCODE = '22023';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse BEFORE INSERT ON healthcare.whatsapp_messages
                FOR EACH ROW EXECUTE FUNCTION healthcare.test_refuse();
            """
        )
    bad_chat = [
        write_of(upsert(text, message_id="OK1"), "1-0"),
        write_of(upsert(text, message_id="BAD"), "1-1"),
        write_of(upsert(text, message_id="AFTER"), "1-2"),
    ]
    good_chat = [
        write_of(
            upsert(text, message_id=f"G{i}", remote_jid="5511900000088@s.whatsapp.net"), f"2-{i}"
        )
        for i in range(3)
    ]
    bad, good = store_rounds(db_dsn, [bad_chat, good_chat])
    # The batch failed as a whole and was replayed round by round: the bad
    # chat stops at its bad row (AFTER waits behind it), the other is stored.
    assert bad.inserted == [True]
    assert bad.failure is not None
    assert bad.failure.code == "22023"
    assert good == Written([True, True, True])
    assert sorted(r[0] for r in stored(db_dsn)) == ["G0", "G1", "G2", "OK1"]


TRICKY = [
    'quotes " and \\ backslashes \\" and {"json": [1, 2]} inside',
    "emoji \U0001f9d1\u200d\u2695\ufe0f, accents ção, RTL \u05e9\u05dc\u05d5\u05dd",
    "line\nbreaks\r\n\t and \u2028 separators, a replacement \ufffd",
    "",
]


def test_a_batch_stores_every_value_as_a_single_row_insert_does(
    db_dsn: str, samples: dict[str, dict[str, Any]]
) -> None:
    # Unsealed, so the text columns themselves show what the JSON row transport did.
    text = samples["messages-upsert-text"]
    bodies = []
    for i, tricky in enumerate(TRICKY):
        body = upsert(text, message_id=f"T{i}")
        body["data"]["message"] = {"conversation": tricky}
        body["data"]["pushName"] = tricky or None
        body["data"]["messageTimestamp"] = 1733000000 + i
        bodies.append(body)
    alone = store_rounds(db_dsn, [[write_of(bodies[0], "1-0", keyring=None)]])
    batch = store_rounds(
        db_dsn, [[write_of(b, f"2-{i}", keyring=None) for i, b in enumerate(bodies[1:])]]
    )
    assert alone[0].inserted == [True]
    assert batch[0].inserted == [True] * (len(TRICKY) - 1)
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT message_id, text_body, push_name, raw_payload, message_timestamp,"
            " from_me, parse_issues, received_at IS NOT NULL"
            " FROM healthcare.whatsapp_messages ORDER BY id"
        ).fetchall()
    assert [r[0] for r in rows] == [f"T{i}" for i in range(len(TRICKY))]
    for body, row in zip(bodies, rows, strict=True):
        ev = event(body)
        assert row[1] == ev.text, row
        assert row[2] == ev.push_name, row
        assert row[3] == json.loads(json.dumps(body)), row  # the payload as received
        assert row[4] == ev.timestamp, row
        assert row[5] is ev.from_me, row
        assert row[6] == sorted(ev.issues), row
        assert row[7], row
