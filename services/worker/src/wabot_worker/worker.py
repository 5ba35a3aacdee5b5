"""The worker's lifecycle: startup → main loop → shutdown with a bounded drain.

Read like uvicorn's ``Server``: :meth:`Worker.serve` installs the signal
handlers, runs :meth:`startup`, :meth:`main_loop` and :meth:`shutdown`, and
restores the handlers. The first SIGTERM/SIGINT asks for a drain, a second one
exits at once (what is unacknowledged stays pending, so nothing is lost).
``burst`` mode drains what is there and exits 0, for tests and operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.exceptions import RedisError

from wabot_shared import db
from wabot_shared import queue as q
from wabot_shared.health import run_checks
from wabot_shared.leases import Leases
from wabot_shared.redis_policy import health_check
from wabot_shared.settings import warn_if_content_in_clear
from wabot_shared.shutdown import GracefulShutdown
from wabot_worker.acks import Acker
from wabot_worker.assignment import Assignment
from wabot_worker.consumer import Consumer
from wabot_worker.faults import Faults
from wabot_worker.handler import Handler, resolve_handler
from wabot_worker.handling import Handling
from wabot_worker.health import HealthServer, assignment_check
from wabot_worker.instances import InstanceResolver, listen_for_changes
from wabot_worker.maintenance import Maintenance
from wabot_worker.outbox import ReplySender, SenderSettings
from wabot_worker.pipeline import Pipeline
from wabot_worker.reply import EvolutionClient
from wabot_worker.settings import WorkerSettings
from wabot_worker.spans import db_base_attributes
from wabot_worker.store import MessageStore, probe_schema
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker")
# Main loop tick: how soon a crashed task or a drained burst is noticed.
TICK_S = 0.1


def telemetry_flush_budget(settings: WorkerSettings) -> float:
    """The part of SHUTDOWN_TIMEOUT kept for the final telemetry flush."""
    return min(5.0, settings.shutdown_timeout / 4)


class Worker:
    """One worker process's resources and tasks."""

    def __init__(
        self,
        settings: WorkerSettings,
        version: str,
        *,
        faults: Faults | None = None,
        burst: bool = False,
        handler: Handler | None = None,
    ) -> None:
        self.settings = settings
        self.version = version
        self.faults = faults or Faults(settings.fault)
        self.burst = burst
        self.handler = handler
        self.shutdown_signal = GracefulShutdown()
        self.stop = self.shutdown_signal.requested
        self.token = uuid.uuid4().hex
        self.exit_code = 0
        self.started = time.monotonic()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closers: list[Any] = []
        self.consumer: Consumer | None = None

    # --- lifecycle ---------------------------------------------------------------
    async def serve(self) -> int:
        """Run until a signal (or, in burst mode, until drained); the exit code."""
        loop = asyncio.get_running_loop()
        self.shutdown_signal.install(loop)
        try:
            try:
                await self.startup()
                await self.main_loop()
            finally:
                await self.shutdown()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return self.exit_code

    async def startup(self) -> None:
        """Open connections, take a consumer name, start the loops."""
        s = self.settings
        redis = q.connect(
            s.redis_url.get_secret_value(), socket_connect_timeout=2.0, health_check_interval=30
        )
        self._closers.append(redis.aclose)
        self.redis = redis
        self.queue = q.StreamQueue(redis, s.stream_name, s.consumer_group, s.stream_partitions)
        leases = Leases(redis, s.stream_name)
        consumer_name = await self._claim_consumer_name(leases, s.consumer_name)
        tracer = trace.get_tracer("wabot.worker", self.version)
        self.telemetry = WorkerTelemetry(
            s.stream_name, s.consumer_group, consumer_name, self.version
        )
        dsn = s.database_url.get_secret_value()
        self.pool = await db.open_pool(
            dsn, max_size=s.pool_size, name="wabot-worker", timeout=s.pool_timeout
        )
        self._closers.append(lambda: self.pool.close(timeout=2.0))
        self.assignment = Assignment(
            leases, s.stream_partitions, consumer_name, self.token, s.partition_lease_ms
        )
        self.sender: ReplySender | None = None
        if s.reply_enabled and s.evolution_api_url and s.evolution_api_key:
            evolution = EvolutionClient(
                s.evolution_api_url, s.evolution_api_key.get_secret_value(), s.reply_timeout
            )
            self._closers.append(evolution.close)
            assignment = self.assignment
            self.sender = ReplySender(
                self.pool,
                evolution=evolution,
                keyring=s.keyring(),
                telemetry=self.telemetry,
                owned=lambda: sorted(assignment.owned - assignment.releasing),
                settings=SenderSettings(
                    concurrency=s.reply_concurrency,
                    max_attempts=s.reply_max_attempts,
                    budget_s=s.reply_budget or float("inf"),
                    backoff_initial=s.reply_backoff_initial,
                    backoff_max=s.reply_backoff_max,
                    poll_interval=s.reply_poll_interval,
                ),
            )
            self.telemetry.declare_replies()
        handler = self.handler if self.handler is not None else resolve_handler(s)
        handling = None
        if handler is not None:
            handling = Handling(handler, s.handler_timeout, self.pool, s.keyring(), self.telemetry)
        store = MessageStore(self.pool, tracer, db_base_attributes(dsn), s.max_rows_per_commit)
        acker = Acker(self.queue, tracer)
        resolver = InstanceResolver(self.pool, s.default_instance, s.instance_cache_seconds)
        pipeline = Pipeline(
            s,
            queue=self.queue,
            store=store,
            acker=acker,
            resolver=resolver,
            telemetry=self.telemetry,
            faults=self.faults,
            handling=handling,
            sender=self.sender,
        )
        self.store, self.acker = store, acker
        self.consumer = Consumer(
            s,
            queue=self.queue,
            assignment=self.assignment,
            pipeline=pipeline,
            telemetry=self.telemetry,
            faults=self.faults,
        )
        self.maintenance = Maintenance(
            s, self.queue, self.pool, store, self.telemetry, sender=self.sender
        )
        self.health_server = HealthServer(s.health_host, s.health_port, self.health)
        await self.health_server.start()
        self._closers.append(self.health_server.close)
        with contextlib.suppress(RedisError, OSError):
            await self.queue.ensure_groups()
        self._spawn("store", store.run())
        self._spawn("acker", acker.run())
        self._spawn("assignment", self._assignment_loop())
        self._spawn("releases", self.assignment.watch_releases(self.stop))
        self._spawn("reader", self.consumer.read_loop(self.stop))
        self._spawn("dispatcher", self.consumer.dispatch_loop(self.stop))
        self._spawn("maintenance", self.maintenance.run(self.stop))
        self._spawn("instances", listen_for_changes(dsn, resolver, self.stop))
        if self.sender is not None:
            self._spawn("replies", self.sender.run(self.stop))
        warn_if_content_in_clear(s, log)
        log.info(
            "worker started",
            extra={
                "messaging.client.id": consumer_name,
                "messaging.consumer.group.name": s.consumer_group,
                "partitions": s.stream_partitions,
                "burst": self.burst,
            },
        )

    def _spawn(self, name: str, coro: Any) -> None:
        self._tasks[name] = asyncio.create_task(coro, name=f"worker-{name}")

    async def main_loop(self) -> None:
        """Wait for a stop request, a crashed task or (burst) an empty queue."""
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), TICK_S)
            for name, task in self._tasks.items():
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("%s loop crashed", name, exc_info=task.exception())
                    self.exit_code = 1
                    self.shutdown_signal.request(f"{name} crashed")
                    break
            if self.burst and self._burst_done():
                log.info("burst: queue drained")
                self.shutdown_signal.request("burst done")

    def _burst_done(self) -> bool:
        consumer, assignment = self.consumer, self.assignment
        assert consumer is not None
        return (
            consumer.drained
            and not assignment.unclaimed
            and bool(assignment.owned)
            and consumer.scheduler.size == 0
            and not consumer.rounds
        )

    async def shutdown(self) -> None:
        """Drain within SHUTDOWN_TIMEOUT, then release and close everything."""
        s = self.settings
        self.stop.set()
        signal_name = self.shutdown_signal.signal_name
        consumer = self.consumer
        in_flight = len(consumer.rounds) if consumer else 0
        log.info("draining", extra={"in_flight": in_flight, "signal": signal_name})
        # The budget: drain, then ~1 s of cleanup, then the telemetry flush.
        budget = max(
            0.1,
            s.shutdown_timeout - self.shutdown_signal.elapsed() - 1.0 - telemetry_flush_budget(s),
        )
        for name in ("reader", "dispatcher"):
            await self._finish_task(name, timeout=0.0)
        if consumer is not None:
            if await consumer.drain(budget):
                log.info(
                    "drained",
                    extra={
                        "in_flight": in_flight,
                        "drain_s": round(self.shutdown_signal.elapsed(), 3),
                    },
                )
            else:
                log.warning(
                    "drain budget exceeded; leaving %d rounds pending for redelivery",
                    len(consumer.rounds),
                )
                for task in list(consumer.rounds):
                    task.cancel()
                await asyncio.gather(*consumer.rounds, return_exceptions=True)
        if self._tasks.get("store"):
            self.store.close()
            self.acker.close()
        for name in ("store", "acker"):
            await self._finish_task(name, timeout=1.0)
        await self._finish_task("replies", timeout=2.0)
        for name in ("assignment", "releases", "maintenance", "instances"):
            await self._finish_task(name, timeout=0.0)
        if consumer is not None:
            with contextlib.suppress(Exception), suppress_instrumentation():
                await self.assignment.release_all()
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                await close()
        log.info(
            "shutdown complete",
            extra={
                "shutdown_s": round(self.shutdown_signal.elapsed(), 3),
                "uptime_s": round(time.monotonic() - self.started, 1),
                "exit_code": self.exit_code,
            },
        )

    async def _finish_task(self, name: str, timeout: float) -> None:
        task = self._tasks.get(name)
        if task is None:
            return
        if timeout > 0:
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    # --- partitions ----------------------------------------------------------------
    async def _assignment_loop(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        interval = self.settings.partition_lease_ms / 4000
        while not self.stop.is_set():
            ok = await self.maintenance.step("partition leases", self._rebalance)
            self.telemetry.partitions_owned = len(self.assignment.owned)
            await self.assignment.wait_next_tick(interval if ok else min(interval, 1.0), self.stop)

    async def _rebalance(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        with suppress_instrumentation():
            lost, gained = await self.assignment.tick()
            for partition in lost:
                consumer.drop_partition(partition)
            done = {
                p
                for p in self.assignment.releasing
                if consumer.scheduler.busy_in(p) == 0 and p not in consumer.reading
            }
            for partition in done:
                consumer.drop_partition(partition)
            await self.assignment.release(done)
        if gained:
            consumer.partitions_gained()

    async def _claim_consumer_name(self, leases: Leases, name: str) -> str:
        """Make sure no other live process consumes under ``name``.

        A restarted worker may find its predecessor's lease until the lease's
        TTL runs out; it waits that long to take the name over. A name still
        held after that belongs to a live worker, and this process takes a
        unique variant instead.
        """
        ttl_ms = self.settings.partition_lease_ms
        deadline = time.monotonic() + ttl_ms / 1000 + 1.0
        waited = False
        with suppress_instrumentation():
            while True:
                try:
                    if await leases.acquire_worker(name, self.token, ttl_ms):
                        if waited:
                            log.info("took over consumer name %s after its lease expired", name)
                        return name
                except (RedisError, OSError) as exc:
                    log.warning(
                        "redis unavailable at start-up (%s); using consumer name %s",
                        type(exc).__name__,
                        name,
                    )
                    return name
                if time.monotonic() >= deadline:
                    break
                if not waited:
                    log.info(
                        "consumer name %s is leased; waiting up to %.0fs for it",
                        name,
                        ttl_ms / 1000,
                    )
                    waited = True
                await asyncio.sleep(0.5)
            unique = f"{name}-{self.token[:8]}"
            log.warning("consumer name %s is held by a live worker; using %s", name, unique)
            with contextlib.suppress(RedisError, OSError):
                await leases.acquire_worker(unique, self.token, ttl_ms)
            return unique

    # --- health ----------------------------------------------------------------------
    async def _postgres_check(self) -> None:
        async with self.pool.connection(timeout=2.0) as conn:
            await probe_schema(conn)

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Loops alive, Redis and the migrated database answer, no stall, and
        the first assignment tick done (see :func:`assignment_check`)."""
        consumer = self.consumer
        assert consumer is not None
        s = self.settings
        stale_after = max(s.stall_seconds, 3 * s.block_ms / 1000)

        async def loop_check() -> dict[str, Any]:
            age = consumer.loop_age()
            return {"status": "pass" if age < stale_after else "fail", "age_s": round(age, 2)}

        async def progress_check() -> dict[str, Any]:
            now = time.monotonic()
            waiting = consumer.scheduler.size
            since_ack = now - max(self.acker.last_ack, self.started)
            failing = consumer.scheduler.oldest_failing(now)
            stalled = (waiting > 0 and since_ack > s.stall_seconds) or failing > s.stall_seconds
            return {
                "status": "fail" if stalled else "pass",
                "waiting": waiting,
                "since_last_ack_s": round(since_ack, 2),
                "oldest_failing_s": round(failing, 2),
            }

        with suppress_instrumentation():
            return await run_checks(
                {
                    "loop": loop_check,
                    "progress": progress_check,
                    "redis": lambda: health_check(self.redis, s.redis_allow_eviction),
                    "postgres": self._postgres_check,
                    "assignment": assignment_check(self.assignment),
                }
            )
