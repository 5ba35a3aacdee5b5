"""The consumer: read owned partitions into per-chat queues, run chats' rounds.

Two loops share the :class:`~wabot_worker.scheduler.Scheduler`:

* the *reader* first claims each newly owned partition's pending entries, then
  reads new ones (``XREADGROUP ... >``) from every partition it may read, as
  long as this worker holds fewer than ``WORKER_MAX_BUFFERED`` entries;
* the *dispatcher* starts a round for each ready chat, up to
  ``WORKER_CONCURRENCY`` chats at a time. A round hands a chat's next entries
  to the pipeline; the chat gets its next round once this one is done, so a
  chat is never handled twice at once, and a failing or slow chat holds up
  only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from wabot_shared.failures import classify
from wabot_shared.queue import StreamEntry, StreamQueue
from wabot_worker.assignment import Assignment
from wabot_worker.entries import decode
from wabot_worker.faults import Faults
from wabot_worker.pipeline import Pipeline
from wabot_worker.scheduler import ChatQueue, RoundResult, Scheduler, Work
from wabot_worker.settings import WorkerSettings
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


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


class Consumer:
    """Runs the reader and the dispatcher until told to stop."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        queue: StreamQueue,
        assignment: Assignment,
        pipeline: Pipeline,
        telemetry: WorkerTelemetry,
        faults: Faults,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.assignment = assignment
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.faults = faults
        self.scheduler = Scheduler()
        self.consumer = assignment.consumer
        self.backoff = Backoff(settings.retry_backoff_initial, settings.retry_backoff_max)
        self.rounds: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()  # something to dispatch, or room to read
        # Partitions were taken over: a reader with none to read looks at once
        # (a rolling deploy's hand-over), not after its idle wait.
        self.gained = asyncio.Event()
        # Partitions of the XREADGROUP in flight: not released until it returns,
        # or what it delivers after the next owner claimed would stay pending
        # under this consumer with nobody to claim it (found once releases woke
        # the next owner at once).
        self.reading: frozenset[int] = frozenset()
        self.last_iteration = time.monotonic()
        self._claim_cursors: dict[int, str] = {}
        self._held: set[tuple[int, str]] = set()
        # True once a read found nothing new and nothing is held (burst mode).
        self.drained = False

    # --- reading -------------------------------------------------------------
    def _accept(self, entries: list[StreamEntry], readable: set[int]) -> int:
        added = 0
        for entry in entries:
            key = (entry.partition, entry.id)
            # Entries of a partition given up meanwhile stay pending for its
            # next owner; an entry already held (re-claimed) is not queued twice.
            if entry.partition not in readable or key in self._held:
                continue
            self._held.add(key)
            self.scheduler.add(decode(entry, self.pipeline.keyring))
            added += 1
        if added:
            self.changed.set()
        return added

    async def _claim_one(self, partition: int, room: int) -> None:
        cursor = self._claim_cursors.get(partition, "0-0")
        cursor, entries = await self.queue.claim_pending(
            partition, self.consumer, min(room, self.settings.batch_size), cursor
        )
        if entries:
            log.info(
                "claimed pending entries of a partition taken over",
                extra={"partition": partition, "entries": len(entries)},
            )
        self._accept(entries, self.assignment.owned - self.assignment.releasing)
        if cursor == "0-0":
            self._claim_cursors.pop(partition, None)
            self.assignment.claimed(partition)
        else:
            self._claim_cursors[partition] = cursor

    async def read_loop(self, stop: asyncio.Event) -> None:
        """Fill the scheduler until ``stop`` is set."""
        block_s = self.settings.block_ms / 1000
        while not stop.is_set():
            self.tick()
            self.faults.raise_at("reader_crash")
            room = self.settings.max_buffered - self.scheduler.size
            if room <= 0:
                self.changed.clear()
                await _wait(self.changed, block_s)
                continue
            try:
                unclaimed = sorted(self.assignment.unclaimed - self.assignment.releasing)
                if unclaimed:
                    await self._claim_one(unclaimed[0], room)
                    continue
                readable = self.assignment.readable()
                if not readable:
                    self.gained.clear()
                    await _wait(self.gained, block_s)
                    continue
                self.reading = frozenset(readable)
                try:
                    entries = await self.queue.read_new(
                        self.consumer,
                        readable,
                        min(room, self.settings.batch_size),
                        self.settings.block_ms,
                    )
                finally:
                    self.reading = frozenset()
            except Exception as exc:
                failure = classify(exc)
                delay = self.backoff.next()
                log.warning(
                    "redis unavailable (%s); retrying in %.1fs",
                    failure.error_type,
                    delay,
                    extra={"error.type": failure.error_type},
                )
                await _wait(stop, delay)
                continue
            self.backoff.reset()
            if entries:
                self.telemetry.consumed(len(entries))
                self.faults.crash_at("crash_after_read")
                self._accept(entries, set(self.assignment.readable()))
            self.drained = not entries and self.scheduler.size == 0 and not self.rounds
        log.info("consumer stopped reading", extra={"in_flight": len(self.rounds)})

    def partitions_gained(self) -> None:
        """Partitions were taken over: claim and read them now."""
        self.gained.set()
        self.changed.set()

    # --- dispatching -----------------------------------------------------------
    async def dispatch_loop(self, stop: asyncio.Event) -> None:
        """Start rounds for ready chats until ``stop`` is set."""
        scheduler = self.scheduler
        while not stop.is_set():
            self.tick()
            scheduler.wake(time.monotonic())
            if not self.assignment.fresh():
                # Leases not renewed lately (a starved loop, Redis away): start
                # nothing another worker may be about to take over.
                self.changed.clear()
                await _wait(self.changed, 0.05)
                continue
            while len(self.rounds) < self.settings.concurrency:
                item = scheduler.take(self.settings.chat_batch_size)
                if item is None:
                    break
                chat, works = item
                task = asyncio.create_task(self._round(chat, works))
                self.rounds.add(task)
                task.add_done_callback(self.rounds.discard)
            wake_at = scheduler.next_wake()
            timeout = self.settings.block_ms / 1000
            if wake_at is not None:
                timeout = max(0.001, min(timeout, wake_at - time.monotonic()))
            self.changed.clear()
            if scheduler.has_ready and len(self.rounds) < self.settings.concurrency:
                continue
            await _wait(self.changed, timeout)

    async def _round(self, chat: ChatQueue, works: list[Work]) -> None:
        try:
            result = await self.pipeline.run_round(works)
        except Exception as exc:  # a bug: never lose the chat over it
            failure = classify(exc)
            log.error(
                "round failed unexpectedly (%s); retrying",
                failure.error_type,
                extra={"error.type": failure.error_type},
                exc_info=True,
            )
            result = RoundResult(0, time.monotonic() + self.settings.retry_backoff_max)
        for work in works[: result.completed]:
            self._held.discard((work.entry.partition, work.entry.id))
        self.scheduler.finish(chat, result.completed, result.retry_at)
        self.tick()
        self.changed.set()

    async def drain(self, timeout: float) -> bool:
        """Wait for the running rounds; True if they all finished in time."""
        if not self.rounds:
            return True
        _, pending = await asyncio.wait(set(self.rounds), timeout=timeout)
        return not pending

    def drop_partition(self, partition: int) -> None:
        """Forget what is queued of ``partition`` (it is someone else's now)."""
        self._claim_cursors.pop(partition, None)
        dropped = self.scheduler.drop_partition(partition)
        self._held = {key for key in self._held if key[0] != partition} | {
            (w.entry.partition, w.entry.id) for w in self.scheduler.works()
        }
        if dropped:
            log.info(
                "left entries of a partition given up pending for its next owner",
                extra={"partition": partition, "entries": dropped},
            )

    def tick(self) -> None:
        """Record that the loops are alive (health check and heartbeat gauge)."""
        self.last_iteration = time.monotonic()
        self.telemetry.heartbeat = time.time()

    def loop_age(self) -> float:
        """Seconds since the loops last made progress."""
        return time.monotonic() - self.last_iteration
