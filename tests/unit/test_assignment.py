"""Partition hand-overs between workers, in-process against a real Redis:
readiness waits for the first assignment tick, and a departing worker drops
its own lease before its partitions."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.support.stack.servers import RedisServer
from wabot_shared import queue as q
from wabot_shared.leases import Leases
from wabot_worker.assignment import Assignment
from wabot_worker.health import assignment_check

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
        await asyncio.sleep(0.01)
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
