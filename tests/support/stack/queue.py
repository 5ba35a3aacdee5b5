"""The test's stream and consumer group seen from outside, through a plain
synchronous client (a new connection per call, so it works across restarts of
the Redis server). Stream and group names come from ``wabot_shared.names``.

The stream is partitioned (``<stream>:<n>``); every figure here is summed over
the partitions, and entry ids are looked up in all of them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from wabot_shared import names

NO_GROUP = {"pending": 0, "lag": 0, "entries-read": 0}


class _Redis(Protocol):
    url: str


class QueueTarget(Protocol):
    """What a view needs: where Redis is and which stream (a Stack has both)."""

    @property
    def redis(self) -> _Redis: ...

    @property
    def stream(self) -> str: ...


@dataclass(frozen=True)
class _Url:
    url: str


@dataclass(frozen=True)
class Where:
    """A fixed target: a Redis URL, a stream and its partition count."""

    redis: _Url
    stream: str
    partitions: int = names.DEFAULT_PARTITIONS


class QueueView:
    """Figures of ``target``'s stream, read when asked (``target`` may be re-pointed)."""

    def __init__(self, target: QueueTarget, group: str = names.DEFAULT_GROUP) -> None:
        self.target = target
        self.group_name = group

    @classmethod
    def at(
        cls, redis_url: str, stream: str, partitions: int = names.DEFAULT_PARTITIONS
    ) -> QueueView:
        """A view of ``stream`` at ``redis_url`` without a Stack (in-process tests)."""
        return cls(Where(_Url(redis_url), stream, partitions))

    @contextlib.contextmanager
    def client(self) -> Iterator[redis.Redis]:
        client = redis.Redis.from_url(
            self.target.redis.url,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=2,
        )
        try:
            yield client
        finally:
            client.close()

    @property
    def stream(self) -> str:
        return self.target.stream

    @property
    def partitions(self) -> int:
        return int(getattr(self.target, "partitions", names.DEFAULT_PARTITIONS))

    @property
    def keys(self) -> list[str]:
        """The partition streams."""
        return [names.partition_stream(self.stream, p) for p in range(self.partitions)]

    @property
    def dead_stream(self) -> str:
        return self.stream + names.DEAD_LETTER_SUFFIX

    def partition_of(self, instance: str, remote_jid: str) -> int:
        return names.partition_of(instance, remote_jid, self.partitions)

    def _group(self, c: redis.Redis, key: str) -> dict[str, Any]:
        try:
            groups = c.xinfo_groups(key)
        except redis.ResponseError:
            return dict(NO_GROUP)
        for g in groups:
            if g["name"] == self.group_name:
                return dict(g)
        return dict(NO_GROUP)

    def group(self) -> dict[str, Any]:
        """XINFO GROUPS of our group, summed over partitions: pending, lag,
        entries-read (zeros before the streams or the groups exist)."""
        total = dict(NO_GROUP)
        with self.client() as c:
            for key in self.keys:
                g = self._group(c, key)
                for field in NO_GROUP:
                    total[field] += int(g.get(field) or 0)
        return total

    def pending(self, consumer: str | None = None) -> int:
        """Entries delivered and not acknowledged (of ``consumer`` only, if given)."""
        if consumer is None:
            return int(self.group()["pending"])
        count = 0
        with self.client() as c:
            for key in self.keys:
                try:
                    summary = c.xpending(key, self.group_name)
                except redis.ResponseError:
                    continue
                count += sum(
                    int(s["pending"]) for s in summary["consumers"] if s["name"] == consumer
                )
        return count

    def lag(self) -> int:
        """Entries in the stream the group has not read yet."""
        return int(self.group().get("lag") or 0)

    def unacknowledged(self) -> int:
        """Pending plus not yet delivered: what still has to be stored."""
        return self.pending() + self.lag()

    def acked(self) -> int:
        """Entries delivered to the group and acknowledged (no trimming in tests)."""
        g = self.group()
        return int(g.get("entries-read") or 0) - int(g["pending"])

    def pending_ids(self, consumer: str | None = None) -> list[str]:
        ids: list[str] = []
        kwargs: dict[str, Any] = {"consumername": consumer} if consumer else {}
        with self.client() as c:
            for key in self.keys:
                try:
                    rows = c.xpending_range(key, self.group_name, "-", "+", 100_000, **kwargs)
                except redis.ResponseError:
                    continue
                ids.extend(str(r["message_id"]) for r in rows)
        return ids

    def length(self) -> int:
        with self.client() as c:
            return sum(int(c.xlen(key)) for key in self.keys)

    def entries(self) -> list[tuple[str, dict[str, str]]]:
        """Every entry of every partition (id, fields), oldest first."""
        out: list[tuple[str, dict[str, str]]] = []
        with self.client() as c:
            for key in self.keys:
                for i, f in c.xrange(key) or []:
                    out.append((str(i), {str(k): str(v) for k, v in (f or {}).items()}))
        return sorted(out, key=lambda item: tuple(int(x) for x in item[0].split("-")))

    def entry(self, entry_id: str, stream: str | None = None) -> dict[str, str]:
        with self.client() as c:
            for key in [stream] if stream else self.keys:
                found = c.xrange(key, entry_id, entry_id)
                if found:
                    return {str(k): str(v) for k, v in (found[0][1] or {}).items()}
        raise AssertionError(f"entry {entry_id} not found")

    def dead_letters(self) -> list[tuple[str, dict[str, str]]]:
        with self.client() as c:
            items = c.xrange(self.dead_stream) or []
        return [(str(i), {str(k): str(v) for k, v in (f or {}).items()}) for i, f in items]

    def xadd(self, fields: dict[str, str], partition: int = 0) -> str:
        """Append an entry to ``partition`` directly (bypassing ingest)."""
        with self.client() as c:
            return str(c.xadd(self.keys[partition], dict(fields)))
