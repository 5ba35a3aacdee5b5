"""Partition hand-overs between workers, in-process against a real Redis:
readiness waits for the first assignment tick, a departing worker drops its
own lease before its partitions, and a release wakes the other workers at once
instead of at their next periodic tick."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg

from tests.support.messages import stream_entry, upsert
from tests.support.stack.env import CONTENT_KEYS
from tests.support.stack.queue import QueueView
from tests.support.stack.servers import RedisServer
from tests.support.telemetry import InMemoryTelemetry
from wabot_shared import queue as q
from wabot_shared.leases import Leases
from wabot_worker.assignment import Assignment
from wabot_worker.health import assignment_check
from wabot_worker.settings import WorkerSettings
from wabot_worker.worker import Worker

PARTITIONS = 4
TTL_MS = 60_000  # a periodic tick every 15 s: longer than any wait below


def assignment(leases: Leases, consumer: str) -> Assignment:
    return Assignment(leases, PARTITIONS, consumer, uuid.uuid4().hex, TTL_MS)


async def deadline_poll(what: str, done: Any, timeout: float) -> float:
    """Poll ``done()`` until true; the seconds it took (fails after ``timeout``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not done():
        assert loop.time() - started < timeout, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.01)  # polling interval of a deadline-bounded poll
    return loop.time() - started


def test_not_ready_before_the_first_tick_then_ready_even_owning_nothing(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        client = q.connect(redis_server.url)
        leases = Leases(client, "unit:" + uuid.uuid4().hex[:8])
        try:
            first, second = assignment(leases, "w-1"), assignment(leases, "w-2")
            check = assignment_check(second)
            assert not second.ready()
            assert (await check())["status"] == "fail"
            await first.tick()
            assert first.owned == set(range(PARTITIONS))
            # Joining while another worker holds every partition: nothing to
            # take yet, but counted (its share is given up at the other's next
            # tick), which is what readiness means.
            await second.tick()
            assert second.owned == set()
            assert second.ready()
            result = await check()
            assert result["status"] == "pass"
            assert result["partitions"] == 0
            assert result["live_workers"] == 2
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_departing_worker_drops_its_lease_before_its_partitions(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        client = q.connect(redis_server.url)
        leases = Leases(client, "unit:" + uuid.uuid4().hex[:8])
        try:
            leaving, staying = assignment(leases, "w-1"), assignment(leases, "w-2")
            await leaving.tick()
            await staying.tick()
            # Rebalance to two each, the way the worker's loop does it.
            await leaving.tick()
            await leaving.release(set(leaving.releasing))
            await staying.tick()
            assert len(leaving.owned) == len(staying.owned) == PARTITIONS // 2

            seen_live: list[list[str]] = []
            real_release = leases.release_partitions

            async def release_partitions(partitions: Any, token: str) -> int:
                seen_live.append(sorted(await leases.live_workers()))
                return await real_release(partitions, token)

            # A probe around the real call (not a mock): it records who is live at
            # the moment partitions are released; mypy forbids assigning methods.
            leases.release_partitions = release_partitions  # type: ignore[method-assign]
            await leaving.release_all()
            assert seen_live == [["w-2"]], "partitions were released while still counted"
            # The tick the release wakes takes the full share at once.
            await staying.tick()
            assert staying.live_workers == 1
            assert staying.owned == set(range(PARTITIONS))
        finally:
            await client.aclose()

    asyncio.run(main())


def settings(redis_server: RedisServer, dsn: str, stream: str, consumer: str) -> WorkerSettings:
    return WorkerSettings(
        app_env="test",
        redis_url=redis_server.url,
        database_url=dsn,
        stream_name=stream,
        stream_partitions=PARTITIONS,
        consumer_name=consumer,
        health_host="127.0.0.1",
        health_port=0,
        block_ms=50,
        stats_interval=0.2,
        partition_lease_ms=TTL_MS,
        shutdown_timeout=5,
        message_encryption_keys=CONTENT_KEYS,
    )


@dataclass
class HandOver:
    old: Worker
    new: Worker
    old_task: asyncio.Task[int]

    async def stop_old(self) -> None:
        self.old.shutdown_signal.request("test")
        assert await asyncio.wait_for(self.old_task, 20) == 0


@contextlib.asynccontextmanager
async def handing_over(old_s: WorkerSettings, new_s: WorkerSettings) -> AsyncIterator[HandOver]:
    """An old worker owning every partition and a new one ready beside it
    (the rolling deploy's moment before the old one stops); both stopped after."""
    old = Worker(old_s, "test")
    old_task = asyncio.create_task(old.serve())
    new = Worker(new_s, "test")
    new_task: asyncio.Task[int] | None = None
    try:
        await deadline_poll(
            "old worker owns every partition",
            lambda: hasattr(old, "assignment") and len(old.assignment.owned) == PARTITIONS,
            20,
        )
        new_task = asyncio.create_task(new.serve())
        await deadline_poll(
            "new worker ready",
            lambda: hasattr(new, "assignment") and new.assignment.ready(),
            20,
        )
        yield HandOver(old, new, old_task)
    finally:
        old.shutdown_signal.request("test")
        new.shutdown_signal.request("test")
        await asyncio.wait_for(old_task, 20)
        if new_task is not None:
            await asyncio.wait_for(new_task, 20)


def test_released_partitions_are_taken_at_once_not_at_the_next_tick(
    redis_server: RedisServer, db_dsn: str, telemetry: InMemoryTelemetry
) -> None:
    """The rolling deploy's hand-over: the old worker stops once the new one is
    ready; the new one takes everything long before its periodic tick (15 s
    away), so only the release's wake can explain it."""
    stream = "unit:" + uuid.uuid4().hex[:8]

    async def main() -> float:
        async with handing_over(
            settings(redis_server, db_dsn, stream, "w-old"),
            settings(redis_server, db_dsn, stream, "w-new"),
        ) as h:
            new = h.new
            healthy, body = await new.health()
            assert healthy, body
            # (It may own two already if the old worker's rebalance ran.)
            assert body["checks"]["assignment"]["status"] == "pass"
            # Let the new worker settle into its 15 s wait: its first tick and
            # the one it runs once subscribed (covering releases announced
            # before) are done, and nothing else is due.
            await deadline_poll(
                "new worker idle",
                lambda: new.assignment.ticks >= 2 and not new.assignment.wakeup.is_set(),
                20,
            )
            ticks = new.assignment.ticks
            await h.stop_old()
            took = await deadline_poll(
                "new worker takes the released partitions",
                lambda: new.assignment.owned == set(range(PARTITIONS)),
                5,
            )
            assert new.assignment.ticks > ticks
            assert new.assignment.live_workers == 1
            return took

    took = asyncio.run(main())
    assert took < 5  # the periodic tick is 15 s away


def test_a_worker_reads_the_partitions_it_takes_over_at_once(
    redis_server: RedisServer,
    db_dsn: str,
    telemetry: InMemoryTelemetry,
    samples: dict[str, dict[str, Any]],
) -> None:
    """A worker that joined owning nothing idles for a read period (here 10 s)
    between looks at its partitions; taking some over ends that wait (found:
    the rolling deploy paused commits for up to that second after the hand-over)."""
    stream = "unit:" + uuid.uuid4().hex[:8]
    idle = settings(redis_server, db_dsn, stream, "w-new").model_copy(update={"block_ms": 10_000})
    body = upsert(samples["messages-upsert-text"], message_id="after-hand-over")

    async def main() -> float:
        async with handing_over(settings(redis_server, db_dsn, stream, "w-old"), idle) as h:
            await h.stop_old()
            await deadline_poll(
                "new worker takes the released partitions",
                lambda: h.new.assignment.owned == set(range(PARTITIONS)),
                5,
            )
            partition, fields = stream_entry(body, PARTITIONS, idle.keyring())
            QueueView.at(redis_server.url, stream, PARTITIONS).xadd(fields, partition)
            return await deadline_poll(
                "the message after the hand-over stored",
                lambda: stored(db_dsn, "after-hand-over"),
                9,
            )

    took = asyncio.run(main())
    assert took < 3, f"stored {took:.1f}s after the hand-over: the reader waited out its idle read"


def stored(dsn: str, message_id: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT 1 FROM healthcare.whatsapp_messages WHERE message_id = %s", (message_id,)
        ).fetchone()
    return row is not None
