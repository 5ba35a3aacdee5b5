"""Periodic work beside the consumer: queue depth, trimming, last_seen_at,
and retention.

Runs every ``WORKER_STATS_INTERVAL`` seconds; retention every
``WORKER_PURGE_INTERVAL`` (at most a minute). Each step is best effort: a
failure is counted, logged at WARNING once per streak of failures (and once
when it recovers), and retried at the next tick, never raised into the loop.

Retention: the content of messages older than ``MESSAGE_RETENTION`` is
purged in bounded batches (their rows, metadata only, stay); dead letters
older than ``DEAD_LETTER_RETENTION`` are removed; acknowledged stream entries
older than ``STREAM_RETENTION_SECONDS`` (a replay window) are trimmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from opentelemetry.instrumentation.utils import suppress_instrumentation
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from wabot_shared.audit import record_async
from wabot_shared.failures import classify
from wabot_shared.queue import StreamQueue
from wabot_worker.outbox import ReplySender
from wabot_worker.settings import WorkerSettings
from wabot_worker.store import MessageStore
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker.maintenance")

# One statement for every instance that received messages since the last one.
_TOUCH_INSTANCES = (
    "UPDATE healthcare.whatsapp_instances SET last_seen_at = now() WHERE id = ANY(%s)"
)
SLOW_TICKS = 6  # trimming and last_seen_at every 6th tick (30 s by default)
_PURGE = "SELECT healthcare.purge_message_content(now() - make_interval(secs => %s), %s)"
# Batches per purge run: a backlog (retention just enabled) drains over runs.
_PURGE_BATCHES = 20


class Maintenance:
    """The periodic housekeeping of one worker."""

    def __init__(
        self,
        settings: WorkerSettings,
        queue: StreamQueue,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        store: MessageStore,
        telemetry: WorkerTelemetry,
        *,
        sender: ReplySender | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.pool = pool
        self.store = store
        self.telemetry = telemetry
        self.sender = sender
        self._failing: dict[str, str] = {}
        self._next_purge = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set."""
        tick = 0
        while not stop.is_set():
            with suppress_instrumentation():  # housekeeping is not a message's trace
                await self.step("queue stats", self._stats)
                if self.sender is not None:
                    await self.step("outbox stats", self._outbox_stats)
                if tick % SLOW_TICKS == 0:
                    await self.step("trim", self._trim)
                    await self.step("instances last_seen_at", self._touch_instances)
                if time.monotonic() >= self._next_purge:
                    self._next_purge = time.monotonic() + self.settings.purge_interval
                    await self.step("retention", self.retention)
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

    async def _outbox_stats(self) -> None:
        assert self.sender is not None
        self.telemetry.outbox = await self.sender.depth()

    async def _trim(self) -> None:
        removed = await self.queue.trim(self.settings.stream_retention_seconds * 1000)
        if removed:
            log.info("trimmed %d acknowledged entries", removed, extra={"trimmed": removed})

    async def retention(self) -> dict[str, int]:
        """One retention run; returns what it removed (also counted and audited)."""
        s = self.settings
        removed = {"message_content": 0, "dead_letter": 0}
        if s.message_retention is not None:
            async with self.pool.connection(timeout=5.0) as conn:
                for _ in range(_PURGE_BATCHES):
                    cursor = await conn.execute(_PURGE, (s.message_retention, s.purge_batch_size))
                    row = await cursor.fetchone()
                    purged = int(row[0]) if row else 0
                    removed["message_content"] += purged
                    if purged < s.purge_batch_size:
                        break
        if s.dead_letter_retention is not None:
            removed["dead_letter"] = await self.queue.trim_dead_letters(
                int(s.dead_letter_retention * 1000)
            )
        for kind, count in removed.items():
            if count:
                self.telemetry.purged(kind, count)
        if any(removed.values()):
            log.info("retention purge", extra={"purged": removed})
            async with self.pool.connection(timeout=5.0) as conn:
                await record_async(
                    conn,
                    "purge",
                    f"worker:{self.settings.consumer_name}",
                    {
                        **removed,
                        "message_retention_s": s.message_retention,
                        "dead_letter_retention_s": s.dead_letter_retention,
                    },
                )
        return removed

    async def _touch_instances(self) -> None:
        seen = self.store.seen_instances
        if not seen:
            return
        ids = list(seen)
        async with self.pool.connection(timeout=2.0) as conn:
            await conn.execute(_TOUCH_INSTANCES, (ids,))
        seen.difference_update(ids)
