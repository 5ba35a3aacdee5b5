"""The Redis stream that carries accepted webhooks from ingest to worker.

At-least-once: an entry is acknowledged only after its row is committed, and
entries left pending are read again (by the same consumer after a restart).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT


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

    def __init__(self, client: aioredis.Redis, stream: str, group: str, dead_stream: str) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.dead_stream = dead_stream

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

    async def ack(self, *entry_ids: str) -> int:
        """XACK entries of this group."""
        return int(await self.client.xack(self.stream, self.group, *entry_ids))

    async def dead_letter(self, entry: StreamEntry, fields: Mapping[str, str]) -> str:
        """Move ``entry`` to the dead-letter stream and acknowledge it atomically."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.dead_stream, _encodable({**entry.fields, **fields}))
            pipe.xack(self.stream, self.group, entry.id)
            dead_id, _ = await pipe.execute()
        return str(dead_id)

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
