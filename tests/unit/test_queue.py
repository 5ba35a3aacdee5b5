"""The partitioned stream and the leases, against a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from tests.support.stack.servers import RedisServer
from wabot_shared import names
from wabot_shared.leases import Leases
from wabot_shared.queue import StreamQueue, connect

T = TypeVar("T")


def run(
    redis_server: RedisServer, body: Callable[[StreamQueue], Awaitable[T]], partitions: int = 4
) -> T:
    async def main() -> T:
        client = connect(redis_server.url)
        queue = StreamQueue(client, "t:" + uuid.uuid4().hex[:8], names.DEFAULT_GROUP, partitions)
        await queue.ensure_groups()
        try:
            return await body(queue)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_partitions_are_stable_and_spread() -> None:
    assert names.partition_of("clinic", "5511@s.whatsapp.net", 16) == names.partition_of(
        "clinic", "5511@s.whatsapp.net", 16
    )
    used = {names.partition_of("clinic", f"55119876{i:05d}@s.whatsapp.net", 16) for i in range(500)}
    assert used == set(range(16))


def test_read_ack_and_pending(redis_server: RedisServer) -> None:
    async def body(q: StreamQueue) -> None:
        ids = [await q.add(p, {"n": str(p)}) for p in (0, 1, 1, 3)]
        entries = await q.read_new("c1", [0, 1, 2, 3], 10, None)
        assert sorted((e.partition, e.id) for e in entries) == sorted(
            zip([0, 1, 1, 3], ids, strict=True)
        )
        assert (await q.stats()).pending == 4
        assert await q.ack(entries[:2]) == 2
        stats = await q.stats()
        assert (stats.length, stats.pending, stats.lag) == (4, 2, 0)
        # Only the partitions asked for are read.
        await q.add(2, {"n": "2"})
        assert await q.read_new("c1", [0, 1, 3], 10, 10) == []

    run(redis_server, body)


def test_claim_pending_takes_over_another_consumers_entries_in_order(
    redis_server: RedisServer,
) -> None:
    async def body(q: StreamQueue) -> None:
        for i in range(5):
            await q.add(1, {"i": str(i)})
        read = await q.read_new("dead-worker", [1], 10, None)
        assert len(read) == 5
        cursor, claimed = await q.claim_pending(1, "new-owner", 3)
        cursor, rest = await q.claim_pending(1, "new-owner", 3, cursor)
        assert cursor == "0-0"
        assert [e.fields["i"] for e in claimed + rest] == ["0", "1", "2", "3", "4"]

    run(redis_server, body)


def test_dead_letter_and_redrive_keep_fields_and_partition(redis_server: RedisServer) -> None:
    async def body(q: StreamQueue) -> None:
        await q.add(
            2, {names.FIELD_PAYLOAD: "x", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
        )
        [entry] = await q.read_new("c", [2], 10, None)
        assert await q.count_failure(entry) == 1
        await q.dead_letter(entry, {names.FIELD_ERROR_TYPE: "X"})
        stats = await q.stats()
        assert (stats.pending, stats.dead_letters) == (0, 1)
        [new_id] = await q.redrive(10)
        [again] = await q.read_new("c", [2], 10, None)
        assert again.id == new_id
        assert again.fields["traceparent"].startswith("00-111")
        assert names.FIELD_ERROR_TYPE not in again.fields
        assert (await q.stats()).dead_letters == 0

    run(redis_server, body)


def test_trim_removes_only_acknowledged_entries(redis_server: RedisServer) -> None:
    async def body(q: StreamQueue) -> None:
        for _ in range(6):
            await q.add(0, {"x": "1"})
        entries = await q.read_new("c", [0], 3, None)  # 3 delivered, 3 undelivered
        await q.ack(entries[:2])  # 2 acknowledged, 1 pending
        # keep_ms=0 keeps what was added in the current millisecond (found: a
        # fast run trimmed 1 of the 2); wait for the clock to pass the entries.
        newest = int(entries[-1].id.split("-")[0])
        for _ in range(1000):
            if int(time.time() * 1000) > newest:
                break
            await asyncio.sleep(0.001)  # polling the clock, at most 1,000 times
        assert await q.trim(keep_ms=0) == 2
        stats = await q.stats()
        assert (stats.length, stats.pending, stats.lag) == (4, 1, 3)
        # Nothing is removed within the retention window.
        await q.ack(entries[2:])
        assert await q.trim(keep_ms=3_600_000) == 0

    run(redis_server, body)


def test_oldest_age_covers_pending_and_undelivered(redis_server: RedisServer) -> None:
    async def body(q: StreamQueue) -> None:
        assert (await q.stats()).oldest_age_s == 0
        await q.add(0, {"x": "1"})
        await q.add(3, {"x": "2"})
        # The age grows while nothing is acknowledged.
        first = (await q.stats()).oldest_age_s
        started = time.monotonic()
        while (await q.stats()).oldest_age_s <= first + 0.05:
            assert time.monotonic() - started < 5, "oldest age did not grow"
            await asyncio.sleep(0.01)
        entries = await q.read_new("c", [0, 3], 10, None)
        assert (await q.stats()).oldest_age_s > 0  # delivered, still pending
        await q.ack(entries)
        assert (await q.stats()).oldest_age_s == 0

    run(redis_server, body)


def test_partition_leases(redis_server: RedisServer) -> None:
    async def body(q: StreamQueue) -> None:
        leases = Leases(q.client, q.stream)
        assert await leases.acquire_partitions([0, 1, 2, 3], "a", 5000, 3) == [0, 1, 2]
        assert await leases.acquire_partitions([0, 1, 2, 3], "b", 5000, 3) == [3]
        assert await leases.renew_partitions([0, 1, 3], "a", 5000) == {0, 1}
        assert await leases.release_partitions([0, 3], "a") == 1  # 3 is b's
        assert await leases.partition_owners(4) == [None, "a", "a", "b"]
        assert await leases.acquire_worker("w", "a", 5000)
        assert not await leases.acquire_worker("w", "b", 5000)
        assert await leases.live_workers() == ["w"]
        await leases.release_worker("w", "a")
        assert await leases.live_workers() == []

    run(redis_server, body)


def test_queue_needs_a_partition() -> None:
    with pytest.raises(ValueError):
        StreamQueue(None, "s", "g", 0)  # type: ignore[arg-type]
