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
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass, field

from wabot_shared.leases import Leases

log = logging.getLogger("wabot.worker.assignment")


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
    # Completed ticks (readiness: see ``ready``).
    ticks: int = 0

    def ready(self) -> bool:
        """Whether this worker takes part in the assignment yet.

        True once one tick has completed: the heartbeat is renewed, the live
        workers were counted and the free partitions (up to the fair share)
        were taken. It may own no partition then: a worker that joins while
        the others hold every partition takes nothing at first, yet it is
        counted, so their next tick gives its share up. Waiting for a
        partition instead would keep a worker that is one too many (more
        workers than partitions) unready for ever.
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
        sent_at = time.monotonic()
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
        """Give up ``partitions`` now (their rounds are done)."""
        if not partitions:
            return
        await self.leases.release_partitions(partitions, self.token)
        self.owned -= partitions
        self.unclaimed -= partitions
        self.releasing -= partitions

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
