"""Which partitions this worker reads: leases, renewed and rebalanced.

Every tick (a quarter of the lease period) a worker renews its partition
leases and its heartbeat, counts the live workers, and moves towards its fair
share, ``ceil(partitions / live workers)``: it takes free partitions while it
has fewer, and gives up its extra ones while it has more. Giving one up waits
until no round of that partition is running, so a chat is never handled by
two workers at once; its waiting entries stay pending for the next owner.

A newly taken partition is first *claimed*: every entry still pending in it
(a crashed or departed owner's, this worker's previous life's) is taken over
and queued before anything new is read from it, which keeps each chat's
order through crashes and restarts.

Fencing: a worker starts no new round once its leases may be about to
expire (three quarters of the period since its last renewal was sent), so a
worker starved of CPU stops before another can take its partitions over. A
round already running when a worker is paused past its lease (a frozen VM)
may still finish after the partition moved; rows are idempotent, so that
costs at most an out-of-order pair, never a loss.

Hand-overs: a worker that gives partitions up (rebalancing, or at shutdown)
announces it on the stream's releases channel (:mod:`wabot_shared.leases`),
and every other worker runs its tick at once (:meth:`Assignment.watch_releases`,
:meth:`Assignment.wait_next_tick`) instead of up to a quarter period later. A
partition is still only ever taken with ``SET NX`` (after its owner released
it or its lease expired), and still claimed before anything new is read, so a
wake changes when a hand-over happens, never its order. The wake is a hint:
if the channel is unavailable the failure is logged and the periodic tick
takes over. A departing worker drops its own lease *before* its partitions, so
the workers woken by the release already count it gone and take their full
share in that one tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from dataclasses import dataclass, field

from wabot_shared.leases import Leases

log = logging.getLogger("wabot.worker.assignment")
# Woken ticks begin at least this far apart: a burst of releases (or a flood on
# the channel) costs at most one tick per gap, not a busy loop.
MIN_WAKE_GAP_S = 0.05
# How long one wait for a channel message lasts (so a stop is seen), and the
# longest pause before subscribing again after the channel failed.
WATCH_POLL_S = 1.0
WATCH_RETRY_MAX_S = 5.0


@dataclass
class Assignment:
    """This worker's partitions and their state."""

    leases: Leases
    partitions: int
    consumer: str
    token: str
    ttl_ms: int
    owned: set[int] = field(default_factory=set)
    # Taken over but not yet claimed (nothing new is read from them yet).
    unclaimed: set[int] = field(default_factory=set)
    # Being given up: no longer read, released once their rounds are done.
    releasing: set[int] = field(default_factory=set)
    live_workers: int = 1
    # Until when (monotonic) the leases last renewed are surely still ours.
    valid_until: float = 0.0
    # Completed ticks (readiness: see ``ready``), and when the last one began.
    ticks: int = 0
    last_tick: float = 0.0
    # Set when another worker announced a release: tick now.
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def ready(self) -> bool:
        """Whether this worker takes part in the assignment yet.

        True once one tick has completed: the heartbeat is renewed, the live
        workers were counted and the free partitions (up to the fair share)
        were taken. It may own no partition then: a worker that joins while
        the others hold every partition takes nothing at first, yet it is
        counted, so their next tick gives its share up (and their release
        wakes it). Waiting for a partition instead would keep a worker that
        is one too many (more workers than partitions) unready for ever.
        """
        return self.ticks > 0

    def fresh(self) -> bool:
        """Whether a round may start: the leases cannot have expired meanwhile."""
        return time.monotonic() < self.valid_until - self.ttl_ms / 4000

    def readable(self) -> list[int]:
        """Partitions to read new entries from, in a stable order."""
        return sorted(self.owned - self.unclaimed - self.releasing)

    def _preference(self) -> list[int]:
        # Start each worker at a different partition so simultaneous starts
        # spread out instead of racing for partition 0.
        start = zlib.crc32(self.token.encode()) % self.partitions
        return [(start + i) % self.partitions for i in range(self.partitions)]

    async def heartbeat(self) -> bool:
        """Refresh this worker's own lease (its liveness); False if lost."""
        return await self.leases.acquire_worker(self.consumer, self.token, self.ttl_ms)

    async def tick(self) -> tuple[set[int], set[int]]:
        """Renew, count workers, rebalance. Returns (lost, gained) partitions."""
        sent_at = self.last_tick = time.monotonic()
        if not await self.heartbeat():
            log.error("lost the lease on consumer name %s", self.consumer)
        kept = await self.leases.renew_partitions(self.owned, self.token, self.ttl_ms)
        lost = self.owned - kept
        if lost:
            log.error(
                "partition leases lost (not renewed in time); another worker owns them now",
                extra={"partitions": sorted(lost)},
            )
            self.owned -= lost
            self.unclaimed -= lost
            self.releasing -= lost
        self.live_workers = max(1, len(await self.leases.live_workers()))
        target = math.ceil(self.partitions / self.live_workers)
        gained: set[int] = set()
        keep = len(self.owned) - len(self.releasing)
        if keep < target:
            candidates = [p for p in self._preference() if p not in self.owned]
            taken = await self.leases.acquire_partitions(
                candidates, self.token, self.ttl_ms, target - keep
            )
            gained = set(taken)
            self.owned |= gained
            self.unclaimed |= gained
            # A partition we were giving up but still own can simply be kept.
        elif keep > target:
            extra = sorted(self.owned - self.releasing, reverse=True)[: keep - target]
            self.releasing |= set(extra)
            log.info(
                "giving up partitions to rebalance",
                extra={"partitions": extra, "live_workers": self.live_workers},
            )
        # Renewed and taken leases expire ttl after their request was sent.
        self.valid_until = sent_at + self.ttl_ms / 1000
        if gained:
            log.info(
                "took over partitions",
                extra={"partitions": sorted(gained), "live_workers": self.live_workers},
            )
        self.ticks += 1
        return lost, gained

    def claimed(self, partition: int) -> None:
        """Every pending entry of ``partition`` has been queued here."""
        self.unclaimed.discard(partition)

    async def release(self, partitions: set[int]) -> None:
        """Give up ``partitions`` now (their rounds are done), and wake the others."""
        if not partitions:
            return
        released = await self.leases.release_partitions(partitions, self.token)
        self.owned -= partitions
        self.unclaimed -= partitions
        self.releasing -= partitions
        if released:
            try:
                await self.leases.announce_release(self.token)
            except Exception as exc:  # a hint only; the release itself is done
                log.warning(
                    "could not announce released partitions (%s); others take them at their"
                    " next tick",
                    type(exc).__name__,
                    extra={"partitions": sorted(partitions), "error.type": type(exc).__name__},
                )

    async def release_all(self) -> None:
        """At shutdown: give everything up so the next owner need not wait.

        The worker lease goes first: the workers woken by the release must no
        longer count this one, or they would take only a share meant for one
        more worker and leave the rest free until a later tick.
        """
        try:
            await self.leases.release_worker(self.consumer, self.token)
        except Exception as exc:  # the partitions are released all the same
            log.warning(
                "could not drop the worker lease (%s); it expires on its own",
                type(exc).__name__,
                extra={"error.type": type(exc).__name__},
            )
        await self.release(set(self.owned))

    async def wait_next_tick(self, timeout: float, stop: asyncio.Event) -> None:
        """Wait until the next tick is due: ``timeout`` passed, another worker
        announced a release (at least :data:`MIN_WAKE_GAP_S` after the last
        tick began), or ``stop`` is set."""
        waits = [asyncio.ensure_future(self.wakeup.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        if self.wakeup.is_set() and not stop.is_set():
            gap = self.last_tick + MIN_WAKE_GAP_S - time.monotonic()
            if gap > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), gap)
        self.wakeup.clear()

    async def watch_releases(self, stop: asyncio.Event) -> None:
        """Set :attr:`wakeup` whenever another worker announces a release, until
        ``stop``. Failures are logged and retried with a bounded backoff; the
        periodic tick covers what is missed meanwhile."""
        backoff = 0.5
        while not stop.is_set():
            try:
                async with self.leases.releases() as pubsub:
                    if backoff > 0.5:
                        log.info("listening for partition releases again")
                    backoff = 0.5
                    # A release announced before this subscription was missed:
                    # one tick now covers it.
                    self.wakeup.set()
                    while not stop.is_set():
                        message = await pubsub.get_message(timeout=WATCH_POLL_S)
                        if message is not None and message.get("data") != self.token:
                            self.wakeup.set()
            except Exception as exc:  # a hint only: never crash the worker for it
                log.warning(
                    "not listening for partition releases (%s); retrying in %.1fs,"
                    " the periodic tick goes on",
                    type(exc).__name__,
                    backoff,
                    extra={"error.type": type(exc).__name__},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, WATCH_RETRY_MAX_S)
