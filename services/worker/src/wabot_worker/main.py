"""``worker`` entrypoint.

* ``worker``: settings → telemetry → consume until SIGTERM/SIGINT → drain → flush.
* ``worker --check``: exit 0 if this container's worker is healthy, else 1
  (for container health checks).
* ``worker redrive [--count N] [--id ID ...]``: move dead-lettered messages back
  onto the stream, keeping their trace context.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import urllib.error
import urllib.request
import uuid
from importlib.metadata import version as package_version
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.exceptions import RedisError

from wabot_shared import db
from wabot_shared import queue as q
from wabot_shared.health import run_checks
from wabot_shared.logs import configure_logging
from wabot_shared.settings import WorkerCheckSettings, WorkerSettings, load_settings
from wabot_shared.shutdown import GracefulShutdown
from wabot_shared.telemetry import setup_telemetry
from wabot_worker.consumer import Consumer
from wabot_worker.health import HealthServer
from wabot_worker.maintenance import Maintenance
from wabot_worker.processor import Processor
from wabot_worker.reply import EvolutionClient
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker")
SERVICE_NAME = "worker"
# Healthy PostgreSQL = reachable *and* migrated: the table every message is
# stored in exists (until then messages wait, pending, and /health says why).
STORE_PROBE = "SELECT 1 FROM healthcare.whatsapp_messages LIMIT 0"


def _instrument(enabled: bool) -> None:
    """Client spans for the replies (httpx) and for Redis commands.

    Redis spans appear where they tell something: the XACK (and dead-lettering)
    inside a message's ``process`` span. The polling, heartbeat and health
    commands run under ``suppress_instrumentation``, or every XREADGROUP would
    start a trace of its own. Command arguments are never recorded.
    """
    if not enabled:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    HTTPXClientInstrumentor().instrument()
    RedisInstrumentor().instrument()


def telemetry_flush_budget(settings: WorkerSettings) -> float:
    """The part of SHUTDOWN_TIMEOUT kept for the final telemetry flush."""
    return min(5.0, settings.shutdown_timeout / 4)


async def run(settings: WorkerSettings, version: str, shutdown: GracefulShutdown) -> int:
    """Run the worker until SIGTERM/SIGINT; returns the exit code."""
    shutdown.install(asyncio.get_running_loop())
    started = time.monotonic()
    redis = q.connect(
        settings.redis_url.get_secret_value(), socket_connect_timeout=2.0, health_check_interval=30
    )
    queue = q.StreamQueue(redis, settings.stream_name, settings.consumer_group)
    token = uuid.uuid4().hex
    with suppress_instrumentation():
        consumer_name = await _claim_consumer_name(
            queue, settings.worker_consumer_name, token, settings
        )
    if consumer_name != settings.worker_consumer_name:
        settings = settings.model_copy(update={"worker_consumer_name": consumer_name})
    telemetry = WorkerTelemetry(
        settings.stream_name, settings.consumer_group, consumer_name, version
    )
    pool = await db.open_pool(
        settings.database_url.get_secret_value(),
        max_size=settings.db_pool_size,
        name="wabot-worker",
    )
    evolution = None
    if settings.reply_enabled and settings.evolution_api_url and settings.evolution_api_key:
        evolution = EvolutionClient(
            settings.evolution_api_url,
            settings.evolution_api_key.get_secret_value(),
            settings.reply_timeout,
        )
    processor = Processor(settings, pool, queue, telemetry, evolution)
    consumer = Consumer(settings, queue, processor, telemetry)
    maintenance = Maintenance(settings, queue, pool, telemetry, token)
    stale_after = max(settings.worker_stall_seconds, 3 * settings.worker_block_ms / 1000)

    async def loop_check() -> dict[str, Any]:
        age = consumer.loop_age()
        return {"status": "pass" if age < stale_after else "fail", "age_s": round(age, 2)}

    async def health() -> tuple[bool, dict[str, Any]]:
        with suppress_instrumentation():
            return await run_checks(
                {
                    "loop": loop_check,
                    "redis": redis.ping,
                    "postgres": lambda: db.ping(pool, timeout=2.0, query=STORE_PROBE),
                }
            )

    health_server = HealthServer(settings.worker_health_host, settings.worker_health_port, health)
    await health_server.start()
    background = asyncio.create_task(maintenance.run(shutdown.requested))
    consume = asyncio.create_task(consumer.run(shutdown.requested))
    exit_code = 0
    try:
        done, _ = await asyncio.wait(
            {consume, asyncio.create_task(shutdown.requested.wait())},
            return_when=asyncio.FIRST_COMPLETED,
        )
        if consume in done and consume.exception() is not None:
            log.error("consumer loop crashed", exc_info=consume.exception())
            exit_code = 1
        in_flight = consumer.in_flight
        log.info("draining", extra={"in_flight": in_flight, "signal": shutdown.signal_name})
        # The budget: drain, then ~1 s of cleanup, then the telemetry flush.
        budget = max(
            0.1,
            settings.shutdown_timeout - shutdown.elapsed() - 1.0 - telemetry_flush_budget(settings),
        )
        try:
            await asyncio.wait_for(asyncio.shield(consume), budget)
            log.info(
                "drained", extra={"in_flight": in_flight, "drain_s": round(shutdown.elapsed(), 3)}
            )
        except TimeoutError:
            log.warning(
                "drain budget exceeded; leaving %d entries pending for redelivery",
                consumer.in_flight,
            )
            consume.cancel()
    finally:
        background.cancel()
        await health_server.close()
        await maintenance.release()
        await pool.close(timeout=2.0)
        await redis.aclose()
        if evolution is not None:
            await evolution.close()
    log.info(
        "shutdown complete",
        extra={
            "shutdown_s": round(shutdown.elapsed(), 3),
            "uptime_s": round(time.monotonic() - started, 1),
        },
    )
    return exit_code


async def _claim_consumer_name(
    queue: q.StreamQueue, name: str, token: str, settings: WorkerSettings
) -> str:
    """Make sure no other live process consumes under ``name``.

    Two processes sharing a consumer name would share its pending entries and
    could process one message twice at the same time. A restarted worker finds
    its predecessor's lease until the lease's TTL runs out, so it waits that
    long to take over the name (and its pending entries); a name still held
    after that belongs to a live worker, and this process takes a unique
    variant instead (a dead holder's entries are reclaimed once idle).
    """
    ttl_ms = Maintenance.heartbeat_ttl_ms(settings)
    deadline = time.monotonic() + ttl_ms / 1000 + 1.0
    waited = False
    while True:
        try:
            if await queue.acquire_worker(name, token, ttl_ms):
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
            log.info("consumer name %s is leased; waiting up to %.0fs for it", name, ttl_ms / 1000)
            waited = True
        await asyncio.sleep(0.5)
    unique = f"{name}-{token[:8]}"
    log.warning("consumer name %s is held by a live worker; using %s", name, unique)
    await queue.acquire_worker(unique, token, ttl_ms)
    return unique


def check() -> int:
    """``worker --check``: 0 when the local worker's /health answers 200."""
    settings = WorkerCheckSettings()
    url = f"http://127.0.0.1:{settings.worker_health_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"worker --check: {url}: {exc}", file=sys.stderr)
        return 1


async def redrive(settings: WorkerSettings, count: int, ids: list[str]) -> int:
    """Move dead letters back onto the stream; prints what it moved."""
    redis = q.connect(settings.redis_url.get_secret_value(), socket_connect_timeout=2.0)
    queue = q.StreamQueue(redis, settings.stream_name, settings.consumer_group)
    try:
        moved = await queue.redrive(count, ids or None)
    finally:
        await redis.aclose()
    log.info("re-drove %d dead-lettered message(s)", len(moved), extra={"new_ids": moved})
    print(f"re-drove {len(moved)} message(s) from {queue.dead_stream} to {queue.stream}")
    return 0


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if the local worker is healthy, 1 otherwise"
    )
    sub = parser.add_subparsers(dest="command")
    re_drive = sub.add_parser("redrive", help="move dead-lettered messages back to the stream")
    re_drive.add_argument("--count", type=int, default=100, help="at most this many (oldest first)")
    re_drive.add_argument(
        "--id", action="append", default=[], dest="ids", help="a dead-letter entry id (repeatable)"
    )
    return parser.parse_args(argv)


def main() -> None:
    """Console entry point of ``worker``."""
    args = _parse_args(sys.argv[1:])
    if args.check:
        raise SystemExit(check())
    settings = load_settings(WorkerSettings, SERVICE_NAME)
    if args.command == "redrive":
        configure_logging(SERVICE_NAME, settings.log_level)
        raise SystemExit(asyncio.run(redrive(settings, args.count, args.ids)))
    version = package_version("wabot-worker")
    otel = setup_telemetry(SERVICE_NAME, version, settings.app_env)
    configure_logging(SERVICE_NAME, settings.log_level, otel.logger_provider)
    _instrument(otel.enabled)
    shutdown = GracefulShutdown()
    try:
        code = asyncio.run(run(settings, version, shutdown))
    finally:
        # Last step, with what is left of the shutdown budget.
        left = settings.shutdown_timeout - shutdown.elapsed()
        otel.shutdown(timeout=max(0.1, min(telemetry_flush_budget(settings), left)))
    raise SystemExit(code)
