"""Redis must not evict: an evicting Redis silently drops queued messages.

The services read ``maxmemory-policy`` (from ``INFO memory``, which managed
Redis services allow where ``CONFIG GET`` is refused) at start and refuse to
run unless it is ``noeviction`` or ``REDIS_ALLOW_EVICTION=true`` says
otherwise (then with a warning); /health reports it too.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import redis
import redis.asyncio as aioredis

SAFE_POLICY = "noeviction"


class EvictingRedis(RuntimeError):
    """Redis is configured to evict keys, queued messages included."""


def _policy(info: dict[str, Any]) -> str:
    return str(info.get("maxmemory_policy", SAFE_POLICY))


async def eviction_policy(client: aioredis.Redis) -> str:
    """The server's ``maxmemory-policy``."""
    return _policy(await client.info("memory"))


def check_at_start(url: str, allow: bool, log: logging.Logger, program: str) -> None:
    """Exit with one clear line if Redis evicts (and eviction is not allowed).

    An unreachable Redis is not an error here: the service starts, reports it
    on /health and checks the policy there.
    """
    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        policy = _policy(client.info("memory"))
    except redis.RedisError:
        return
    finally:
        client.close()
    if policy == SAFE_POLICY:
        return
    if allow:
        log.warning(
            "redis maxmemory-policy is %s: queued messages can be evicted (REDIS_ALLOW_EVICTION)",
            policy,
        )
        return
    print(
        f"{program}: redis maxmemory-policy is {policy!r}; an evicting Redis silently drops "
        f"queued messages. Set it to {SAFE_POLICY!r} (or REDIS_ALLOW_EVICTION=true to run anyway)",
        file=sys.stderr,
    )
    raise SystemExit(2)


async def health_check(client: aioredis.Redis, allow: bool) -> dict[str, Any]:
    """PING and the eviction policy, as a health check result."""
    await client.ping()
    policy = await eviction_policy(client)
    ok = policy == SAFE_POLICY or allow
    return {"status": "pass" if ok else "fail", "maxmemory_policy": policy}
