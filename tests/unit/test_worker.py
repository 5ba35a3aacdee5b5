"""The worker in-process (burst mode) against real Redis and PostgreSQL: rows,
spans, order per chat, and poison that cannot block anything else."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from typing import Any

import psycopg
import pytest

from tests.support.messages import stream_entry, upsert
from tests.support.stack.env import CONTENT_KEYS
from tests.support.stack.queue import QueueView
from tests.support.stack.servers import RedisServer
from tests.support.telemetry import InMemoryTelemetry
from wabot_shared import names
from wabot_worker.faults import Faults
from wabot_worker.settings import WorkerSettings
from wabot_worker.worker import Worker

PARTITIONS = 4


def settings(redis_server: RedisServer, dsn: str, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "app_env": "test",
        "redis_url": redis_server.url,
        "database_url": dsn,
        "stream_name": "unit:" + uuid.uuid4().hex[:8],
        "stream_partitions": PARTITIONS,
        "consumer_name": "w-" + uuid.uuid4().hex[:6],
        "health_host": "127.0.0.1",
        "health_port": 0,
        "block_ms": 50,
        "stats_interval": 0.2,
        "partition_lease_ms": 1000,
        "retry_backoff_initial": 0.02,
        "retry_backoff_max": 0.1,
        "max_deliveries": 3,
        "shutdown_timeout": 5,
        "message_encryption_keys": CONTENT_KEYS,
    }
    values.update(overrides)
    return WorkerSettings(**values)


def enqueue(s: WorkerSettings, bodies: list[dict[str, Any]]) -> list[str]:
    view = queue_of(s)
    ids = []
    for body in bodies:
        partition, fields = stream_entry(body, s.stream_partitions, s.keyring())
        ids.append(view.xadd(fields, partition))
    return ids


def queue_of(s: WorkerSettings) -> QueueView:
    return QueueView.at(s.redis_url.get_secret_value(), s.stream_name, s.stream_partitions)


def burst(s: WorkerSettings, faults: Faults | None = None) -> int:
    async def main() -> int:
        return await asyncio.wait_for(Worker(s, "test", faults=faults, burst=True).serve(), 60)

    return asyncio.run(main())


def rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT message_id, remote_jid, stream_id, parse_issues"
            " FROM healthcare.whatsapp_messages ORDER BY id"
        ).fetchall()


def dead_letters(s: WorkerSettings) -> list[dict[str, str]]:
    return [fields for _, fields in queue_of(s).dead_letters()]


def pending(s: WorkerSettings) -> int:
    return queue_of(s).pending()


@pytest.fixture
def text_sample(samples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return samples["messages-upsert-text"]


def test_burst_stores_everything_once_with_a_trace_per_message(
    redis_server: RedisServer,
    db_dsn: str,
    text_sample: dict[str, Any],
    telemetry: InMemoryTelemetry,
) -> None:
    s = settings(redis_server, db_dsn)
    bodies = [
        upsert(text_sample, message_id=f"m{i}", remote_jid=f"55119876{i % 7:05d}@s.whatsapp.net")
        for i in range(60)
    ]
    ids = enqueue(s, bodies + bodies[:10])  # ten redeliveries
    assert burst(s) == 0
    stored = rows(db_dsn)
    assert sorted(r[0] for r in stored) == sorted(f"m{i}" for i in range(60))
    assert pending(s) == 0
    process = telemetry.finished(names.process_span_name(s.stream_name))
    assert len(process) == len(ids)
    by_parent: dict[int, set[str]] = {}
    for span in telemetry.finished():
        if span.parent is not None:
            by_parent.setdefault(span.parent.span_id, set()).add(span.name)
    for span in process:
        assert by_parent[span.context.span_id] == {
            "INSERT healthcare.whatsapp_messages",
            f"ack {s.stream_name}",
        }
    outcomes = telemetry.metric_points(names.METRIC_OUTCOMES)
    assert sum(p.value for p in outcomes if p.attributes["whatsapp.outcome"] == "processed") == 60
    assert sum(p.value for p in outcomes if p.attributes["whatsapp.outcome"] == "duplicate") == 10


def test_a_chats_rows_follow_stream_order(
    redis_server: RedisServer,
    db_dsn: str,
    text_sample: dict[str, Any],
    telemetry: InMemoryTelemetry,
) -> None:
    s = settings(redis_server, db_dsn, chat_batch_size=7)
    chats = [f"55119800{c:05d}@s.whatsapp.net" for c in range(5)]
    bodies = [
        upsert(text_sample, message_id=f"c{c}-{i:03d}", remote_jid=chats[c])
        for i in range(40)
        for c in range(5)
    ]
    enqueue(s, bodies)
    assert burst(s) == 0
    stored = rows(db_dsn)
    for chat in chats:
        ids = [r[0] for r in stored if r[1] == chat]
        assert ids == sorted(ids), chat
        assert len(ids) == 40


def add_trigger(dsn: str, message_id: str, sqlstate: str, with_text: bool = False) -> None:
    detail = "NEW.text_body" if with_text else "'x'"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE FUNCTION healthcare.test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.message_id = '{message_id}' THEN
                    RAISE EXCEPTION 'refusing %', {detail} USING ERRCODE = '{sqlstate}';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_poison BEFORE INSERT ON healthcare.whatsapp_messages
                FOR EACH ROW EXECUTE FUNCTION healthcare.test_poison();
            """
        )


@pytest.mark.parametrize("sqlstate", ["08006", "22023"])
def test_an_entry_failing_forever_is_set_aside_and_dead_lettered(
    redis_server: RedisServer,
    db_dsn: str,
    text_sample: dict[str, Any],
    telemetry: InMemoryTelemetry,
    sqlstate: str,
) -> None:
    """A connection-class error for one message while the database is up (the
    others are stored) counts like any failure; a permanent one does at once."""
    s = settings(redis_server, db_dsn)
    secret_text = "dor no peito desde ontem"
    add_trigger(db_dsn, "poison", sqlstate, with_text=True)
    poison_chat = "5511900000001@s.whatsapp.net"
    bodies = [upsert(text_sample, message_id="poison", remote_jid=poison_chat, text=secret_text)]
    bodies += [
        upsert(text_sample, message_id=f"ok{i}", remote_jid=f"55119{i:08d}@s.whatsapp.net")
        for i in range(30)
    ]
    bodies += [upsert(text_sample, message_id="after-poison", remote_jid=poison_chat)]
    enqueue(s, bodies)
    assert burst(s) == 0
    stored = [r[0] for r in rows(db_dsn)]
    assert sorted(stored) == sorted([f"ok{i}" for i in range(30)] + ["after-poison"])
    # The poison's chat waited behind it: its later message came after it failed.
    [dead] = dead_letters(s)
    assert dead[names.FIELD_MESSAGE_ID] == "poison"
    assert dead[names.FIELD_ERROR_TYPE].endswith(sqlstate)
    assert int(dead[names.FIELD_DELIVERIES]) == s.max_deliveries
    assert pending(s) == 0
    # Nothing of the database's message (which quotes the text) left the process.
    exported = " ".join(
        str(span.attributes) + str(span.events) + str(span.status.description)
        for span in telemetry.finished()
    ) + " ".join(str(r.body) + str(r.attributes) for r in telemetry.log_records())
    assert secret_text not in exported
    assert sqlstate in exported


def test_an_unreadable_entry_is_dead_lettered_at_once(
    redis_server: RedisServer,
    db_dsn: str,
    text_sample: dict[str, Any],
    telemetry: InMemoryTelemetry,
) -> None:
    s = settings(redis_server, db_dsn)
    queue_of(s).xadd({"junk": "1"}, 1)
    queue_of(s).xadd({names.FIELD_PAYLOAD: "{nope"}, 1)
    enqueue(s, [upsert(text_sample, message_id="fine")])
    assert burst(s) == 0
    assert [r[0] for r in rows(db_dsn)] == ["fine"]
    assert sorted(d[names.FIELD_ERROR_TYPE] for d in dead_letters(s)) == [
        "InvalidPayload",
        "MissingPayload",
    ]


def test_a_real_outage_dead_letters_nothing(
    redis_server: RedisServer,
    postgres_server: Any,
    text_sample: dict[str, Any],
    telemetry: InMemoryTelemetry,
) -> None:
    """Every entry fails alike (the database is not there): none is counted."""
    dsn = "postgresql://postgres@127.0.0.1:1/none"
    s = settings(redis_server, dsn, pool_timeout=0.2)
    enqueue(s, [upsert(text_sample, message_id=f"o{i}") for i in range(5)])

    async def main() -> None:
        worker = Worker(s, "test")
        task = asyncio.create_task(worker.serve())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        # Several rounds of failures, then stop.
        while sum(1 for r in telemetry.log_records() if "retrying it in" in str(r.body)) < 10:
            assert loop.time() < deadline, "the worker never retried"
            await asyncio.sleep(0.05)
        worker.shutdown_signal.request("test")
        assert await asyncio.wait_for(task, 20) == 0

    asyncio.run(main())
    assert dead_letters(s) == []
    assert pending(s) == 5


def test_a_crashed_loop_exits_1_after_a_complete_shutdown(
    redis_server: RedisServer, db_dsn: str, telemetry: InMemoryTelemetry
) -> None:
    s = settings(redis_server, db_dsn)

    async def main() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        before = loop._signal_handlers.copy() if hasattr(loop, "_signal_handlers") else {}  # type: ignore[attr-defined]
        code = await asyncio.wait_for(Worker(s, "test", faults=Faults("reader_crash")).serve(), 30)
        after = loop._signal_handlers.copy() if hasattr(loop, "_signal_handlers") else {}  # type: ignore[attr-defined]
        return code, before == after

    code, restored = asyncio.run(main())
    assert code == 1
    assert restored, "signal handlers were not restored"
    bodies = [str(r.body) for r in telemetry.log_records()]
    assert "reader loop crashed" in bodies
    assert "shutdown complete" in bodies
    [done] = [r for r in telemetry.log_records() if r.body == "shutdown complete"]
    assert dict(done.attributes or {})["exit_code"] == 1


def test_a_signal_drains_and_exits_0(
    redis_server: RedisServer,
    db_dsn: str,
    text_sample: dict[str, Any],
    telemetry: InMemoryTelemetry,
) -> None:
    s = settings(redis_server, db_dsn)
    enqueue(s, [upsert(text_sample, message_id=f"sig{i}") for i in range(20)])

    async def main() -> int:
        worker = Worker(s, "test")
        task = asyncio.create_task(worker.serve())
        deadline = asyncio.get_running_loop().time() + 20
        while len(rows(db_dsn)) < 20:
            assert asyncio.get_running_loop().time() < deadline, "messages not stored"
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(task, 15)

    assert asyncio.run(main()) == 0
    assert pending(s) == 0
    bodies = [str(r.body) for r in telemetry.log_records()]
    assert "SIGTERM received: draining" in bodies
    assert "shutdown complete" in bodies
