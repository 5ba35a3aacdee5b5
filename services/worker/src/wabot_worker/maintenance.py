"""Periodic work beside the consumer loop: heartbeat, queue depth, trimming.

Runs every ``WORKER_STATS_INTERVAL`` seconds. Each step is best effort: a
failure is logged and retried at the next tick, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable

from opentelemetry.instrumentation.utils import suppress_instrumentation
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from wabot_shared.queue import StreamQueue
from wabot_shared.settings import WorkerSettings
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker.maintenance")

# The instances this deployment serves were seen alive by a worker at this time.
_TOUCH_INSTANCES = (
    "UPDATE healthcare.whatsapp_instances SET last_seen_at = now() WHERE status = 'active'"
)
SLOW_TICKS = 6  # trimming and last_seen_at every 6th tick (30 s by default)


class Maintenance:
    """Owns this worker's heartbeat key and the periodic housekeeping."""

    def __init__(
        self,
        settings: WorkerSettings,
        queue: StreamQueue,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        telemetry: WorkerTelemetry,
        token: str,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.pool = pool
        self.telemetry = telemetry
        self.token = token
        self.ttl_ms = self.heartbeat_ttl_ms(settings)

    @staticmethod
    def heartbeat_ttl_ms(settings: WorkerSettings) -> int:
        """A heartbeat key outlives three missed ticks."""
        return int(max(1.0, 3 * settings.worker_stats_interval) * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set."""
        tick = 0
        while not stop.is_set():
            with suppress_instrumentation():  # housekeeping is not a message's trace
                await self._step("heartbeat", self._heartbeat())
                await self._step("queue stats", self._stats())
                if tick % SLOW_TICKS == 0:
                    await self._step("trim", self._trim())
                    await self._step("instances heartbeat", self._touch_instances())
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.worker_stats_interval)

    async def _step(self, name: str, step: Awaitable[object]) -> None:
        try:
            await step
        except Exception as exc:
            log.debug("%s failed: %s", name, type(exc).__name__)

    async def _heartbeat(self) -> None:
        if not await self.queue.acquire_worker(
            self.settings.worker_consumer_name, self.token, self.ttl_ms
        ):
            # Only after a pause longer than the TTL (e.g. a Redis outage) could
            # another process have taken the name; make it visible.
            log.error("lost the lease on consumer name %s", self.settings.worker_consumer_name)

    async def _stats(self) -> None:
        self.telemetry.queue_stats = await self.queue.stats()

    async def _trim(self) -> None:
        removed = await self.queue.trim(self.settings.stream_retention_seconds * 1000)
        if removed:
            log.info("trimmed %d acknowledged entries", removed, extra={"trimmed": removed})

    async def _touch_instances(self) -> None:
        started = time.monotonic()
        async with self.pool.connection(timeout=2.0) as conn:
            await conn.execute(_TOUCH_INSTANCES)
        log.debug("instances heartbeat in %.3fs", time.monotonic() - started)

    async def release(self) -> None:
        """Drop the heartbeat key at shutdown so liveness checks see us gone at once."""
        with contextlib.suppress(Exception):
            await self.queue.release_worker(self.settings.worker_consumer_name, self.token)
