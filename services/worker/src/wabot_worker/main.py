"""``worker`` entrypoint: settings → telemetry → consume until signalled → drain → flush."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib.metadata import version as package_version
from typing import Any

from wabot_shared import db
from wabot_shared import queue as q
from wabot_shared.health import run_checks
from wabot_shared.logs import configure_logging
from wabot_shared.settings import WorkerSettings, load_settings
from wabot_shared.shutdown import GracefulShutdown
from wabot_shared.telemetry import setup_telemetry
from wabot_worker.consumer import Consumer
from wabot_worker.health import HealthServer
from wabot_worker.processor import Processor
from wabot_worker.reply import EvolutionClient
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker")
SERVICE_NAME = "worker"


def _instrument(enabled: bool) -> None:
    if not enabled:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument()


async def _sample_queue(
    queue: q.StreamQueue, telemetry: WorkerTelemetry, interval: float, stop: asyncio.Event
) -> None:
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    while not stop.is_set():
        try:
            with suppress_instrumentation():
                telemetry.queue_stats = await queue.stats()
        except Exception as exc:
            log.debug("queue stats unavailable: %s", type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def run(settings: WorkerSettings, version: str) -> int:
    """Run the worker until SIGTERM/SIGINT; returns the exit code."""
    shutdown = GracefulShutdown()
    shutdown.install(asyncio.get_running_loop())
    started = time.monotonic()
    telemetry = WorkerTelemetry(
        settings.stream_name, settings.consumer_group, settings.worker_consumer_name, version
    )
    redis = q.connect(
        settings.redis_url.get_secret_value(), socket_connect_timeout=2.0, health_check_interval=30
    )
    queue = q.StreamQueue(
        redis, settings.stream_name, settings.consumer_group, settings.dead_letter_stream
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
    stale_after = max(30.0, 3 * settings.worker_block_ms / 1000)

    async def loop_check() -> dict[str, Any]:
        age = consumer.loop_age()
        return {"status": "pass" if age < stale_after else "fail", "age_s": round(age, 2)}

    async def health() -> tuple[bool, dict[str, Any]]:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        with suppress_instrumentation():
            return await run_checks(
                {
                    "loop": loop_check,
                    "redis": redis.ping,
                    "postgres": lambda: db.ping(pool, timeout=2.0),
                }
            )

    health_server = HealthServer(settings.worker_health_host, settings.worker_health_port, health)
    await health_server.start()
    sampler = asyncio.create_task(
        _sample_queue(queue, telemetry, settings.worker_stats_interval, shutdown.requested)
    )
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
        budget = max(0.1, settings.shutdown_timeout - shutdown.elapsed() - 1.0)
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
        sampler.cancel()
        await health_server.close()
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


def main() -> None:
    """Run the worker service until SIGTERM/SIGINT."""
    settings = load_settings(WorkerSettings, SERVICE_NAME)
    version = package_version("wabot-worker")
    otel = setup_telemetry(SERVICE_NAME, version, settings.app_env)
    configure_logging(SERVICE_NAME, settings.log_level, otel.logger_provider)
    _instrument(otel.enabled)
    try:
        code = asyncio.run(run(settings, version))
    finally:
        otel.shutdown(timeout=min(5.0, settings.shutdown_timeout))  # last step
    raise SystemExit(code)
