"""The reply sender in-process against real PostgreSQL and the Evolution stub:
a reply whose send ends while the next heads query is running is not sent
again from that query's stale row (found: the outage-and-restart test saw a
reply accepted twice)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from tests.support.evolution import EvolutionStub
from wabot_shared.db import open_pool
from wabot_worker.outbox import ReplySender, SenderSettings
from wabot_worker.reply import EvolutionClient
from wabot_worker.telemetry import WorkerTelemetry

SETTINGS = SenderSettings(
    concurrency=4,
    max_attempts=5,
    budget_s=60,
    backoff_initial=0.1,
    backoff_max=1,
    poll_interval=0.05,
)


class GatedSender(ReplySender):
    """Its heads query returns only once ``gate`` is set: the rows it read may
    have changed meanwhile, as on a busy database."""

    gate: asyncio.Event | None = None
    queried: asyncio.Event | None = None

    async def _heads(self, partitions: list[int], limit: int) -> list[dict[str, Any]]:
        rows = await super()._heads(partitions, limit)
        if self.gate is not None and self.queried is not None:
            self.queried.set()
            await self.gate.wait()
        return rows


def add_replies(dsn: str, chat: str, count: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for seq in range(1, count + 1):
            conn.execute(
                "INSERT INTO healthcare.whatsapp_outbox (instance_name, remote_jid, partition,"
                " inbound_message_id, seq, text_body, accepted_at)"
                " VALUES ('clinic', %s, 0, 'in-1', %s, %s, now())",
                (chat, seq, f"reply {seq}"),
            )


def statuses(dsn: str) -> list[tuple[int, str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT seq, status, attempts FROM healthcare.whatsapp_outbox ORDER BY id"
        ).fetchall()
    return [(int(a), str(b), int(c)) for a, b, c in rows]


def test_a_reply_sent_during_a_heads_query_is_not_sent_again(
    db_dsn: str, evolution_stub: EvolutionStub
) -> None:
    chat = "5511900000001@s.whatsapp.net"
    add_replies(db_dsn, chat, 2)

    async def scenario() -> None:
        pool = await open_pool(db_dsn, max_size=4, name="test-outbox")
        evolution = EvolutionClient(evolution_stub.url, "key-0123456789", timeout=10)
        sender = GatedSender(
            pool,
            evolution=evolution,
            keyring=None,
            telemetry=WorkerTelemetry("stream", "group", "consumer", "test"),
            owned=lambda: [0],
            settings=SETTINGS,
        )
        try:
            evolution_stub.hold()
            await sender._round()  # reply 1 goes out and waits for its answer
            first = set(sender._tasks)
            assert len(first) == 1
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            sender.gate, sender.queried = asyncio.Event(), asyncio.Event()
            # The next round reads reply 1 as pending, then its send ends.
            second = asyncio.create_task(sender._round())
            await asyncio.wait_for(sender.queried.wait(), 10)
            evolution_stub.answer()
            await asyncio.wait_for(asyncio.gather(*first), 10)  # reply 1 answered and marked
            assert statuses(db_dsn)[0][1] == "sent", statuses(db_dsn)
            sender.gate.set()
            await second
            sender.gate = None
            while len(evolution_stub.accepted) < 2 and loop.time() < deadline:
                await sender._round()
                await asyncio.sleep(0.02)  # polling interval; the loop is deadline-bounded
            await asyncio.gather(*sender._tasks)
        finally:
            await evolution.close()
            await pool.close()

    asyncio.run(scenario())
    texts = [r["json"]["text"] for r in evolution_stub.accepted]
    assert texts == ["reply 1", "reply 2"], texts  # each once, in order
    assert statuses(db_dsn) == [(1, "sent", 1), (2, "sent", 1)]
