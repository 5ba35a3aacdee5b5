"""Peer of ``worker``: arq, tuned, draining a preloaded queue of no-op jobs
that each ``INCR`` a Redis counter; the job's argument is the Evolution webhook.

Tuned for a backlog of tiny jobs: up to 500 jobs at once, read 500 at a time,
no results kept, a 10 ms poll delay, no retries, no aborts, health checks off.
arq has no OpenTelemetry instrumentation, so it runs without telemetry.

It runs from its own environment (arq pins redis < 6; the services use redis
8), built by scripts/bench-bootstrap.sh from bench/peers/arq-requirements.txt:

    <venv>/bin/python -m bench.peers.arq_noop preload <redis-url> <queue> <count> <chats> <sample>
    <venv>/bin/python -m bench.peers.arq_noop work <redis-url> <queue> <counter>
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

from bench.peers.payloads import webhooks


async def noop_incr(ctx: dict[str, Any], webhook: dict[str, Any]) -> None:
    await ctx["redis"].incr(ctx["counter"])


async def preload(url: str, queue: str, count: int, chats: int, template: dict[str, Any]) -> int:
    pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue)
    n = 0
    try:
        batch: list[Any] = []
        for body in webhooks(template, count, chats, prefix="A"):
            batch.append(pool.enqueue_job("noop_incr", body, _queue_name=queue))
            if len(batch) == 200:
                n += sum(job is not None for job in await asyncio.gather(*batch))
                batch = []
        n += sum(job is not None for job in await asyncio.gather(*batch))
    finally:
        await pool.aclose()
    return n


def work(url: str, queue: str, counter: str) -> None:
    async def startup(ctx: dict[str, Any]) -> None:
        ctx["counter"] = counter

    worker = Worker(
        functions=[noop_incr],  # type: ignore[list-item]
        queue_name=queue,
        redis_settings=RedisSettings.from_dsn(url),
        on_startup=startup,
        max_jobs=500,
        queue_read_limit=500,
        keep_result=0,
        poll_delay=0.01,
        max_tries=1,
        allow_abort_jobs=False,
        health_check_interval=3600,
        handle_signals=True,
    )
    worker.run()


def main() -> None:
    command, url, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    if command == "preload":
        count, chats, sample = int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6])
        template = json.loads(sample.read_text())
        print(asyncio.run(preload(url, queue, count, chats, template)))
    elif command == "work":
        work(url, queue, sys.argv[4])
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
