"""The consumer loop: read a batch, process it, repeat; back off on outages.

After a (re)start the loop first walks this consumer's own pending entries (what
a previous process read but never acknowledged), then reads new ones. A batch
that hit a transient failure sends the loop back through the pending entries
after a backoff, so nothing stays pending while the worker is alive; one that
hit a non-transient failure sends it back at once, so the failed entry is
retried until it succeeds or is dead-lettered after ``MAX_DELIVERIES``. Every
``RECLAIM_INTERVAL`` it also takes over entries that other consumers left idle
for longer than ``RECLAIM_MIN_IDLE_MS`` (a crashed worker's), so they are
processed without anyone's intervention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.exceptions import RedisError

from wabot_shared.queue import StreamEntry, StreamQueue
from wabot_shared.settings import WorkerSettings
from wabot_worker.processor import Outcome, Processor
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker")


class Backoff:
    """Exponential backoff between ``initial`` and ``maximum`` seconds."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.current = 0.0

    def next(self) -> float:
        self.current = self.initial if self.current == 0 else min(self.current * 2, self.maximum)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


class Consumer:
    """Runs the loop until ``stop`` is set, then returns after the current batch."""

    def __init__(
        self,
        settings: WorkerSettings,
        queue: StreamQueue,
        processor: Processor,
        telemetry: WorkerTelemetry,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.processor = processor
        self.telemetry = telemetry
        self.consumer = settings.worker_consumer_name
        self.backoff = Backoff(settings.retry_backoff_initial, settings.retry_backoff_max)
        self.in_flight = 0
        self.last_iteration = time.monotonic()
        self.group_ready = False
        self.next_reclaim = 0.0  # at start-up, then every reclaim_interval
        self.reclaim_cursor = "0-0"

    async def _read(self, pending_cursor: str | None) -> list[StreamEntry]:
        with suppress_instrumentation():  # polling is not part of any message's trace
            if not self.group_ready:
                await self.queue.ensure_group()
                self.group_ready = True
            if pending_cursor is None and time.monotonic() >= self.next_reclaim:
                reclaimed = await self._reclaim()
                if reclaimed:
                    return reclaimed
            if pending_cursor is not None:
                return await self.queue.read(
                    self.consumer,
                    self.settings.worker_batch_size,
                    None,
                    pending=True,
                    start=pending_cursor,
                )
            return await self.queue.read(
                self.consumer,
                self.settings.worker_batch_size,
                self.settings.worker_block_ms,
                pending=False,
            )

    async def _reclaim(self) -> list[StreamEntry]:
        settings = self.settings
        self.reclaim_cursor, entries = await self.queue.claim_idle(
            self.consumer,
            settings.reclaim_min_idle_ms,
            settings.worker_batch_size,
            self.reclaim_cursor,
        )
        if self.reclaim_cursor == "0-0":  # scanned the whole pending list
            self.next_reclaim = time.monotonic() + settings.reclaim_interval
        if entries:
            log.warning(
                "reclaimed %d entries left idle by other consumers",
                len(entries),
                extra={"reclaimed": len(entries)},
            )
        return entries

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """The loop; returns once ``stop`` is set and the current batch is done."""
        pending_cursor: str | None = "0"
        log.info(
            "consumer started",
            extra={
                "messaging.client.id": self.consumer,
                "messaging.consumer.group.name": self.queue.group,
            },
        )
        while not stop.is_set():
            self.tick()
            try:
                entries = await self._read(pending_cursor)
            except (RedisError, OSError) as exc:
                delay = self.backoff.next()
                log.warning(
                    "redis unavailable (%s); retrying in %.1fs",
                    type(exc).__name__,
                    delay,
                    extra={"error.type": type(exc).__name__},
                )
                await self._wait(stop, delay)
                pending_cursor = "0"
                continue
            if pending_cursor is not None:
                if not entries:
                    pending_cursor = None  # own backlog done: switch to new entries
                    continue
                pending_cursor = entries[-1].id
            if not entries:
                continue
            outcomes = await self._process_batch(entries)
            if any(o.transient for o in outcomes):
                delay = self.backoff.next()
                log.warning("transient failures in batch; retrying pending entries in %.1fs", delay)
                await self._wait(stop, delay)
                pending_cursor = "0"
            elif any(o.name == "failed" for o in outcomes):
                # Walk the pending entries again from the start, so a failed
                # entry is retried (and dead-lettered after MAX_DELIVERIES)
                # instead of waiting behind the cursor until it is reclaimed.
                pending_cursor = "0"
                self.backoff.reset()
            else:
                self.backoff.reset()
        log.info("consumer stopped reading", extra={"in_flight": self.in_flight})

    async def _process_batch(self, entries: list[StreamEntry]) -> list[Outcome]:
        self.telemetry.consumed(len(entries))
        self.processor.fault("crash_after_read")
        self.in_flight = len(entries)
        try:
            return list(await asyncio.gather(*(self.processor.process(e) for e in entries)))
        finally:
            self.in_flight = 0
            self.tick()

    def tick(self) -> None:
        """Record that the loop is alive (health check and heartbeat gauge)."""
        self.last_iteration = time.monotonic()
        self.telemetry.heartbeat = time.time()

    def loop_age(self) -> float:
        """Seconds since the loop last made progress."""
        return time.monotonic() - self.last_iteration
