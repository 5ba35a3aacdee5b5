"""The Redis stream that carries accepted webhooks from ingest to worker.

At-least-once: an entry is acknowledged only after its row is committed;
entries left pending are read again by the same consumer after a restart, or
claimed by another worker once idle for longer than any legitimate handling
time. Trimming never removes an entry that is pending or not yet delivered.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from wabot_shared import names


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stream entry: its id and its (decoded) fields."""

    id: str
    fields: dict[str, str]

    @property
    def enqueued_at_ms(self) -> int:
        """The Redis server time of the XADD, taken from the entry id."""
        return int(self.id.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Queue depth figures for metrics and health."""

    length: int
    pending: int
    lag: int
    dead_letters: int


def connect(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio Redis client that returns ``str`` values."""
    client: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True, **kwargs)
    return client


class StreamQueue:
    """Operations on one stream and its consumer group."""

    def __init__(self, client: aioredis.Redis, stream: str, group: str) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.dead_stream = stream + names.DEAD_LETTER_SUFFIX
        self.failures_key = stream + names.FAILURES_SUFFIX
        self.worker_prefix = stream + names.WORKER_KEY_INFIX

    async def ensure_group(self) -> None:
        """Create the stream and group if missing.

        The group starts at id ``0`` so entries added before any worker ever ran
        are still delivered.
        """
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def add(self, fields: Mapping[str, str]) -> str:
        """XADD an entry; returns its id."""
        entry_id = await self.client.xadd(self.stream, _encodable(fields))
        return str(entry_id)

    async def read(
        self, consumer: str, count: int, block_ms: int | None, *, pending: bool, start: str = "0"
    ) -> list[StreamEntry]:
        """Read a batch: this consumer's pending entries after ``start``
        (``pending=True``) or new ones."""
        response = await self.client.xreadgroup(
            self.group,
            consumer,
            {self.stream: start if pending else ">"},
            count=count,
            block=None if pending else block_ms,
        )
        return _entries(response)

    async def claim_idle(
        self, consumer: str, min_idle_ms: int, count: int, start: str = "0-0"
    ) -> tuple[str, list[StreamEntry]]:
        """XAUTOCLAIM entries idle for ``min_idle_ms`` (a dead consumer's); returns
        the next cursor (``0-0`` when the scan is complete) and the entries."""
        response = await self.client.xautoclaim(
            self.stream, self.group, consumer, min_idle_ms, start_id=start, count=count
        )
        cursor, items = str(response[0]), response[1]
        return cursor, [StreamEntry(str(i), dict(f or {})) for i, f in items]

    async def ack(self, *entry_ids: str) -> int:
        """XACK entries of this group (and forget their failure counts)."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, *entry_ids)
            pipe.hdel(self.failures_key, *entry_ids)
            acked, _ = await pipe.execute()
        return int(acked)

    async def count_failure(self, entry_id: str) -> int:
        """Count one non-transient failure of ``entry_id``; returns the total so far.

        Kept in Redis so the count survives restarts and is shared by workers;
        transient failures (outages) are never counted.
        """
        return int(await self.client.hincrby(self.failures_key, entry_id, 1))

    async def dead_letter(self, entry: StreamEntry, fields: Mapping[str, str]) -> str:
        """Move ``entry`` to the dead-letter stream and acknowledge it atomically."""
        dead_fields = {**entry.fields, **fields, names.FIELD_DEAD_AT: str(int(time.time()))}
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, _encodable(dead_fields))
            pipe.xack(self.stream, self.group, entry.id)
            pipe.hdel(self.failures_key, entry.id)
            dead_id, _, _ = await pipe.execute()
        return str(dead_id)

    async def redrive(self, count: int, entry_ids: list[str] | None = None) -> list[str]:
        """Move dead letters back onto the stream (oldest first, or the given ids).

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
        for dead_id, fields in items:
            original = {
                str(k): str(v)
                for k, v in (fields or {}).items()
                if k not in names.DEAD_LETTER_FIELDS
            }
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xadd(self.stream, _encodable(original))
                pipe.xdel(self.dead_stream, dead_id)
                new_id, _ = await pipe.execute()
            moved.append(str(new_id))
        return moved

    async def trim(self, keep_ms: int) -> int:
        """Delete entries that every group has acknowledged and that are older
        than ``keep_ms``; returns how many were removed.

        The cut-off is the smallest of: each group's oldest pending entry, the
        entry after each group's last delivered one, and ``now - keep_ms``, so
        nothing unacknowledged or undelivered is ever removed.
        """
        cutoff_ms = int(time.time() * 1000) - keep_ms
        cutoff = (cutoff_ms, 0)
        try:
            groups: list[dict[str, Any]] = await self.client.xinfo_groups(self.stream)
        except ResponseError:
            return 0  # no stream yet
        for group in groups:
            last = _parse_id(str(group.get("last-delivered-id") or "0-0"))
            cutoff = min(cutoff, (last[0], last[1] + 1))
            if int(group.get("pending") or 0) > 0:
                summary = await self.client.xpending(self.stream, str(group["name"]))
                if summary.get("min"):
                    cutoff = min(cutoff, _parse_id(str(summary["min"])))
        if cutoff <= (0, 0):
            return 0
        return int(await self.client.xtrim(self.stream, minid=f"{cutoff[0]}-{cutoff[1]}"))

    # --- worker leases / heartbeats ------------------------------------------
    async def acquire_worker(self, consumer: str, token: str, ttl_ms: int) -> bool:
        """Take or refresh the lease on ``consumer``; False if another live process
        holds it. The key doubles as this worker's heartbeat."""
        key = self.worker_prefix + consumer
        if await self.client.set(key, token, nx=True, px=ttl_ms):
            return True
        if await self.client.get(key) == token:
            await self.client.pexpire(key, ttl_ms)
            return True
        return False

    async def release_worker(self, consumer: str, token: str) -> None:
        """Drop the lease if it is still ours."""
        key = self.worker_prefix + consumer
        if await self.client.get(key) == token:
            await self.client.delete(key)

    async def live_workers(self) -> list[str]:
        """Consumer names with a live heartbeat."""
        prefix = self.worker_prefix
        return [str(k)[len(prefix) :] async for k in self.client.scan_iter(prefix + "*", count=100)]

    async def stats(self) -> QueueStats:
        """Stream length, pending and not-yet-delivered counts for the group."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xlen(self.stream)
            pipe.xinfo_groups(self.stream)
            pipe.xlen(self.dead_stream)
            length, groups, dead = await pipe.execute(raise_on_error=False)
        pending = lag = 0
        if isinstance(groups, list):
            for group in cast(list[dict[str, Any]], groups):
                if group.get("name") == self.group:
                    pending = int(group.get("pending") or 0)
                    lag = int(group.get("lag") or 0)
        return QueueStats(
            length=length if isinstance(length, int) else 0,
            pending=pending,
            lag=lag,
            dead_letters=dead if isinstance(dead, int) else 0,
        )


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _encodable(fields: Mapping[str, str]) -> dict[FieldT, EncodableT]:
    return dict(fields.items())


def _entries(response: Any) -> list[StreamEntry]:
    entries: list[StreamEntry] = []
    if not response:
        return entries
    # redis-py returns [[stream, [(id, fields), ...]]] (RESP2) or a dict (RESP3).
    streams = response.items() if isinstance(response, dict) else response
    for _stream, items in streams:
        for entry_id, fields in items:
            # A pending entry trimmed from the stream comes back with no fields.
            entries.append(StreamEntry(id=str(entry_id), fields=dict(fields or {})))
    return entries
