"""Periodic work beside the consumer: queue depth, trimming, last_seen_at.

Runs every ``WORKER_STATS_INTERVAL`` seconds. Each step is best effort: a
failure is counted, logged at WARNING once per streak of failures (and once
when it recovers), and retried at the next tick, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from opentelemetry.instrumentation.utils import suppress_instrumentation
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from wabot_shared.failures import classify
from wabot_shared.queue import StreamQueue
from wabot_worker.settings import WorkerSettings
from wabot_worker.store import MessageStore
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker.maintenance")

# One statement for every instance that received messages since the last one.
_TOUCH_INSTANCES = (
    "UPDATE healthcare.whatsapp_instances SET last_seen_at = now() WHERE id = ANY(%s)"
)
SLOW_TICKS = 6  # trimming and last_seen_at every 6th tick (30 s by default)


class Maintenance:
    """The periodic housekeeping of one worker."""

    def __init__(
        self,
        settings: WorkerSettings,
        queue: StreamQueue,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        store: MessageStore,
        telemetry: WorkerTelemetry,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.pool = pool
        self.store = store
        self.telemetry = telemetry
        self._failing: dict[str, str] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set."""
        tick = 0
        while not stop.is_set():
            with suppress_instrumentation():  # housekeeping is not a message's trace
                await self.step("queue stats", self._stats)
                if tick % SLOW_TICKS == 0:
                    await self.step("trim", self._trim)
                    await self.step("instances last_seen_at", self._touch_instances)
            tick += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.stats_interval)

    async def step(self, name: str, step: Callable[[], Awaitable[object]]) -> bool:
        """Run one step; False (logged once per streak, counted) if it failed."""
        try:
            await step()
        except Exception as exc:
            failure = classify(exc)
            self.telemetry.maintenance_failed(name, failure.error_type)
            if name not in self._failing:
                self._failing[name] = failure.error_type
                log.warning(
                    "%s failed (%s); retrying every tick, logged again on recovery",
                    name,
                    failure.error_type,
                    extra={"error.type": failure.error_type, "maintenance.step": name},
                )
            return False
        if self._failing.pop(name, None) is not None:
            log.warning("%s recovered", name, extra={"maintenance.step": name})
        return True

    async def _stats(self) -> None:
        self.telemetry.queue_stats = await self.queue.stats()

    async def _trim(self) -> None:
        removed = await self.queue.trim(self.settings.stream_retention_seconds * 1000)
        if removed:
            log.info("trimmed %d acknowledged entries", removed, extra={"trimmed": removed})

    async def _touch_instances(self) -> None:
        seen = self.store.seen_instances
        if not seen:
            return
        ids = list(seen)
        async with self.pool.connection(timeout=2.0) as conn:
            await conn.execute(_TOUCH_INSTANCES, (ids,))
        seen.difference_update(ids)
