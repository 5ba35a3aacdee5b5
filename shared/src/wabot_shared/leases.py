"""TTL leases in Redis: one per live worker (its heartbeat and consumer name)
and one per partition (which worker reads it).

A lease is a key holding its owner's random token with a TTL; only the owner
renews or releases it (compare-and-set in a Lua script, one round trip for all
of a worker's partitions). A worker that dies stops renewing, and its leases
expire after their TTL; a worker that stops cleanly releases them at once.

A release is also announced on a pub/sub channel (:meth:`Leases.announce_release`),
so the other workers can look for free partitions at once; the announcement is
only a hint (a missed one costs a periodic tick), the keys decide who owns what.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from wabot_shared import names

# KEYS: lease keys; ARGV: token, ttl_ms. Returns, per key, 1 if still ours.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
# KEYS: candidate lease keys in preference order; ARGV: token, ttl_ms, limit.
# Returns the indexes (1-based) of the keys taken, at most `limit`.
_ACQUIRE = """
local out = {}
local limit = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  if #out >= limit then break end
  if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[#out + 1] = i
  end
end
return out
"""
_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""


class Leases:
    """Worker and partition leases of one stream."""

    def __init__(self, client: aioredis.Redis, stream: str) -> None:
        self.client = client
        self.worker_prefix = stream + names.WORKER_KEY_INFIX
        self.lease_prefix = stream + names.LEASE_KEY_INFIX
        self.releases_channel = stream + names.RELEASES_CHANNEL_SUFFIX
        self._renew = client.register_script(_RENEW)
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    def partition_key(self, partition: int) -> str:
        return f"{self.lease_prefix}{partition}"

    # --- workers --------------------------------------------------------------
    async def acquire_worker(self, consumer: str, token: str, ttl_ms: int) -> bool:
        """Take or refresh the lease on ``consumer``; False if another live
        process holds it. The key doubles as this worker's heartbeat."""
        key = self.worker_prefix + consumer
        if await self.client.set(key, token, nx=True, px=ttl_ms):
            return True
        renewed = await self._renew(keys=[key], args=[token, ttl_ms])
        return bool(renewed and int(renewed[0]))

    async def release_worker(self, consumer: str, token: str) -> None:
        """Drop the worker lease if it is still ours."""
        await self._release(keys=[self.worker_prefix + consumer], args=[token])

    async def live_workers(self) -> list[str]:
        """Consumer names with a live heartbeat."""
        prefix = self.worker_prefix
        return [str(k)[len(prefix) :] async for k in self.client.scan_iter(prefix + "*", count=100)]

    # --- partitions -------------------------------------------------------------
    async def acquire_partitions(
        self, candidates: Iterable[int], token: str, ttl_ms: int, limit: int
    ) -> list[int]:
        """Take up to ``limit`` free partitions among ``candidates`` (in order)."""
        wanted = list(candidates)
        if not wanted or limit <= 0:
            return []
        keys = [self.partition_key(p) for p in wanted]
        taken = await self._acquire(keys=keys, args=[token, ttl_ms, limit])
        return [wanted[int(i) - 1] for i in taken or []]

    async def renew_partitions(
        self, partitions: Iterable[int], token: str, ttl_ms: int
    ) -> set[int]:
        """Extend our leases; returns the partitions that are still ours."""
        owned = list(partitions)
        if not owned:
            return set()
        keys = [self.partition_key(p) for p in owned]
        result = await self._renew(keys=keys, args=[token, ttl_ms])
        return {p for p, ok in zip(owned, result, strict=True) if int(ok)}

    async def release_partitions(self, partitions: Iterable[int], token: str) -> int:
        """Give partitions up (only those still ours); returns how many."""
        keys = [self.partition_key(p) for p in partitions]
        if not keys:
            return 0
        return int(await self._release(keys=keys, args=[token]))

    async def announce_release(self, token: str) -> None:
        """Tell the other workers that ``token`` just gave partitions up."""
        await self.client.publish(self.releases_channel, token)

    @contextlib.asynccontextmanager
    async def releases(self) -> AsyncIterator[PubSub]:
        """A subscription to :meth:`announce_release` messages, closed on exit."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.releases_channel)
            yield pubsub
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    async def partition_owners(self, partitions: int) -> list[str | None]:
        """The token holding each partition (None when free)."""
        values = await self.client.mget([self.partition_key(p) for p in range(partitions)])
        return [str(v) if v is not None else None for v in values]
