"""The partitioned Redis stream that carries accepted webhooks to the workers.

A chat's messages all go to one partition (``<stream>:<n>``, chosen by
:func:`wabot_shared.names.partition_of`), and each partition is read by one
worker at a time (see :mod:`wabot_shared.leases`), so a chat's messages are
handled in stream order whatever the number of workers.

At-least-once: an entry is acknowledged only after its row is committed. A
worker that takes over a partition first claims every entry still pending in
it, so a crashed owner's messages are handled before the later ones of their
chats. Trimming never removes an entry that is pending or not yet delivered.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from wabot_shared import names


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stream entry: its partition, id and (decoded) fields."""

    partition: int
    id: str
    fields: dict[str, str]

    @property
    def enqueued_at_ms(self) -> int:
        """The Redis server time of the XADD, taken from the entry id."""
        return int(self.id.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Queue depth figures for metrics and health, summed over partitions."""

    length: int
    pending: int
    lag: int
    dead_letters: int
    # Age of the oldest entry not yet acknowledged (pending or undelivered).
    oldest_age_s: float


def connect(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio Redis client that returns ``str`` values."""
    client: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True, **kwargs)
    return client


def parse_id(entry_id: str) -> tuple[int, int]:
    """An entry id as a comparable (milliseconds, sequence) pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class StreamQueue:
    """Operations on the partition streams of one stream and their consumer group."""

    def __init__(self, client: aioredis.Redis, stream: str, group: str, partitions: int) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.client = client
        self.stream = stream
        self.group = group
        self.partitions = partitions
        self.keys = [names.partition_stream(stream, p) for p in range(partitions)]
        self.dead_stream = stream + names.DEAD_LETTER_SUFFIX

    def key(self, partition: int) -> str:
        """The Redis key of ``partition``'s stream."""
        return self.keys[partition]

    def failures_key(self, partition: int) -> str:
        return self.keys[partition] + names.FAILURES_SUFFIX

    def partition_of(self, instance: str, remote_jid: str) -> int:
        return names.partition_of(instance, remote_jid, self.partitions)

    async def ensure_groups(self) -> None:
        """Create every partition stream and its group if missing.

        Groups start at id ``0`` so entries added before any worker ever ran
        are still delivered.
        """
        async with self.client.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.xgroup_create(key, self.group, id="0", mkstream=True)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, ResponseError) and "BUSYGROUP" not in str(result):
                raise result
            if isinstance(result, Exception) and not isinstance(result, ResponseError):
                raise result

    async def add(self, partition: int, fields: Mapping[str, str]) -> str:
        """XADD an entry to ``partition``; returns its id."""
        return str(await self.client.xadd(self.keys[partition], _encodable(fields)))

    async def add_many(
        self, items: Sequence[tuple[int, Mapping[str, str]]]
    ) -> list[str | BaseException]:
        """XADD several entries in one round trip; each result is an id or the
        error of that one command (a connection error fails them all)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for partition, fields in items:
                pipe.xadd(self.keys[partition], _encodable(fields))
            results = await pipe.execute(raise_on_error=False)
        return [r if isinstance(r, BaseException) else str(r) for r in results]

    async def read_new(
        self, consumer: str, partitions: Iterable[int], count: int, block_ms: int | None
    ) -> list[StreamEntry]:
        """Entries never delivered to the group, from ``partitions``, in stream
        order per partition."""
        streams: dict[FieldT, str] = {self.keys[p]: ">" for p in partitions}
        if not streams:
            return []
        response = await self.client.xreadgroup(
            self.group, consumer, cast(Any, streams), count=count, block=block_ms
        )
        return self._entries(response)

    async def claim_pending(
        self, partition: int, consumer: str, count: int, cursor: str = "0-0", min_idle_ms: int = 0
    ) -> tuple[str, list[StreamEntry]]:
        """XAUTOCLAIM ``partition``'s pending entries (whoever holds them) for
        ``consumer``; returns the next cursor (``0-0`` once the scan is complete)
        and the entries, oldest first. Entries trimmed meanwhile are skipped."""
        response = await self.client.xautoclaim(
            self.keys[partition], self.group, consumer, min_idle_ms, start_id=cursor, count=count
        )
        next_cursor, items = str(response[0]), response[1]
        entries = [StreamEntry(partition, str(i), dict(f)) for i, f in items if f]
        return next_cursor, entries

    async def ack(self, entries: Iterable[StreamEntry]) -> int:
        """XACK entries (any partitions) and forget their failure counts, atomically."""
        by_partition: dict[int, list[str]] = defaultdict(list)
        for entry in entries:
            by_partition[entry.partition].append(entry.id)
        if not by_partition:
            return 0
        async with self.client.pipeline(transaction=True) as pipe:
            for partition, ids in by_partition.items():
                pipe.xack(self.keys[partition], self.group, *ids)
                pipe.hdel(self.failures_key(partition), *ids)
            results = await pipe.execute()
        return sum(int(r) for r in results[::2])

    async def count_failure(self, entry: StreamEntry) -> int:
        """Count one failure of ``entry``; returns the total so far.

        Kept in Redis so the count survives restarts and is shared by workers.
        """
        return int(await self.client.hincrby(self.failures_key(entry.partition), entry.id, 1))

    async def dead_letter(self, entry: StreamEntry, fields: Mapping[str, str]) -> str:
        """Move ``entry`` to the dead-letter stream and acknowledge it atomically."""
        dead_fields = {
            **entry.fields,
            **fields,
            names.FIELD_PARTITION: str(entry.partition),
            names.FIELD_DEAD_AT: str(int(time.time())),
        }
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, _encodable(dead_fields))
            pipe.xack(self.keys[entry.partition], self.group, entry.id)
            pipe.hdel(self.failures_key(entry.partition), entry.id)
            dead_id, _, _ = await pipe.execute()
        return str(dead_id)

    def _home(self, fields: Mapping[str, str]) -> int:
        try:
            partition = int(fields.get(names.FIELD_PARTITION, "0"))
        except ValueError:
            return 0
        return partition if 0 <= partition < self.partitions else 0

    async def redrive(self, count: int, entry_ids: list[str] | None = None) -> list[str]:
        """Move dead letters back onto their partitions (oldest first, or the
        given ids).

        The original fields, trace context included, are kept, so a re-driven
        message is processed in its original trace. Returns the new entry ids.
        """
        items: list[Any] = []
        if entry_ids:
            for entry_id in entry_ids:
                items.extend(await self.client.xrange(self.dead_stream, entry_id, entry_id) or [])
        else:
            items = list(await self.client.xrange(self.dead_stream, count=count) or [])
        moved: list[str] = []
        for dead_id, raw_fields in items:
            fields = dict(raw_fields or {})
            original = {
                str(k): str(v) for k, v in fields.items() if k not in names.DEAD_LETTER_FIELDS
            }
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xadd(self.keys[self._home(fields)], _encodable(original))
                pipe.xdel(self.dead_stream, dead_id)
                new_id, _ = await pipe.execute()
            moved.append(str(new_id))
        return moved

    async def _groups(self) -> list[dict[str, Any] | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.xinfo_groups(key)
            results = await pipe.execute(raise_on_error=False)
        out: list[dict[str, Any] | None] = []
        for result in results:
            mine = None
            if isinstance(result, list):
                for group in cast(list[dict[str, Any]], result):
                    if group.get("name") == self.group:
                        mine = group
            out.append(mine)
        return out

    async def trim(self, keep_ms: int) -> int:
        """Delete entries that every group has acknowledged and that are older
        than ``keep_ms``; returns how many were removed.

        Per partition, the cut-off is the smallest of: each group's oldest
        pending entry, the entry after each group's last delivered one, and
        ``now - keep_ms``, so nothing unacknowledged or undelivered is removed.
        """
        removed = 0
        now_cutoff = (int(time.time() * 1000) - keep_ms, 0)
        for key in self.keys:
            try:
                groups: list[dict[str, Any]] = await self.client.xinfo_groups(key)
            except ResponseError:
                continue  # no stream yet
            cutoff = now_cutoff
            for group in groups:
                last = parse_id(str(group.get("last-delivered-id") or "0-0"))
                cutoff = min(cutoff, (last[0], last[1] + 1))
                if int(group.get("pending") or 0) > 0:
                    summary = await self.client.xpending(key, str(group["name"]))
                    if summary.get("min"):
                        cutoff = min(cutoff, parse_id(str(summary["min"])))
            if cutoff > (0, 0):
                # Exact, not "~": approximate trimming only drops whole radix
                # nodes (100 entries), so a quiet stream was never trimmed.
                removed += int(
                    await self.client.xtrim(
                        key, minid=f"{cutoff[0]}-{cutoff[1]}", approximate=False
                    )
                )
        return removed

    async def scan(self, key: str, chunk: int = 1000) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """Every entry of stream ``key`` (a partition or the dead letters), oldest
        first, read ``chunk`` at a time."""
        start = "-"
        while True:
            items: list[Any] = list(await self.client.xrange(key, start, "+", count=chunk) or [])
            for entry_id, fields in items:
                yield str(entry_id), {str(k): str(v) for k, v in (fields or {}).items()}
            if len(items) < chunk:
                return
            start = f"({items[-1][0]!s}"

    async def trim_dead_letters(self, keep_ms: int) -> int:
        """Remove dead letters older than ``keep_ms`` (their ids are times)."""
        cutoff = int(time.time() * 1000) - keep_ms
        if cutoff <= 0:
            return 0
        return int(
            await self.client.xtrim(self.dead_stream, minid=f"{cutoff}-0", approximate=False)
        )

    async def stats(self) -> QueueStats:
        """Stream length, pending, undelivered and the oldest unacknowledged age."""
        groups = await self._groups()
        async with self.client.pipeline(transaction=False) as pipe:
            for key, group in zip(self.keys, groups, strict=True):
                pipe.xlen(key)
                if group is not None and int(group.get("pending") or 0) > 0:
                    pipe.xpending(key, self.group)
                else:
                    pipe.echo("")
                # The first entry after the last delivered one is the oldest undelivered.
                last = str(group.get("last-delivered-id") or "0-0") if group else "0-0"
                pipe.xrange(key, f"({last}", "+", count=1)
            pipe.xlen(self.dead_stream)
            results = await pipe.execute(raise_on_error=False)
        length = pending = lag = 0
        oldest: tuple[int, int] | None = None
        for i, group in enumerate(groups):
            size, summary, first_new = results[3 * i : 3 * i + 3]
            length += size if isinstance(size, int) else 0
            if group is not None:
                pending += int(group.get("pending") or 0)
                # Redis reports a null lag when it cannot tell (after XDEL).
                lag += int(group.get("lag") or 0)
            candidates = []
            if isinstance(summary, dict) and summary.get("min"):
                candidates.append(parse_id(str(summary["min"])))
            if isinstance(first_new, list) and first_new:
                candidates.append(parse_id(str(first_new[0][0])))
            for candidate in candidates:
                oldest = candidate if oldest is None else min(oldest, candidate)
        dead = results[-1]
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest[0] / 1000)
        return QueueStats(
            length=length,
            pending=pending,
            lag=lag,
            dead_letters=dead if isinstance(dead, int) else 0,
            oldest_age_s=age,
        )

    def _entries(self, response: Any) -> list[StreamEntry]:
        entries: list[StreamEntry] = []
        if not response:
            return entries
        index = {key: p for p, key in enumerate(self.keys)}
        # redis-py returns [[stream, [(id, fields), ...]]] (RESP2) or a dict (RESP3).
        streams = response.items() if isinstance(response, dict) else response
        for stream, items in streams:
            partition = index[str(stream)]
            for entry_id, fields in items:
                # A pending entry trimmed from the stream comes back with no fields.
                entries.append(StreamEntry(partition, str(entry_id), dict(fields or {})))
        return entries


def _encodable(fields: Mapping[str, str]) -> dict[FieldT, EncodableT]:
    return dict(fields.items())
