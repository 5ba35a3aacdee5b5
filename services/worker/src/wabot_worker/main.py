"""``worker`` entrypoint.

* ``worker``: settings → telemetry → consume until SIGTERM/SIGINT → drain → flush.
* ``worker --burst``: the same, but exit 0 once the queue is drained.
* ``worker --check``: exit 0 if this container's worker is healthy, else 1
  (for container health checks).
* ``worker redrive [--count N] [--id ID ...]``: move dead-lettered messages back
  onto the stream, keeping their trace context.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from importlib.metadata import version as package_version

import uvloop

from wabot_shared.logs import configure_logging
from wabot_shared.redis_policy import check_at_start
from wabot_shared.settings import load_settings
from wabot_shared.telemetry import setup_telemetry
from wabot_worker.cli.redrive import redrive
from wabot_worker.handler import resolve_handler
from wabot_worker.settings import WorkerCheckSettings, WorkerSettings
from wabot_worker.worker import Worker, telemetry_flush_budget

log = logging.getLogger("wabot.worker")
SERVICE_NAME = "worker"


def _instrument(enabled: bool) -> None:
    """Client spans for the replies (httpx).

    PostgreSQL and Redis spans are written by the worker itself (see
    :mod:`wabot_worker.spans`): the contrib instrumentations record database
    error messages, which can quote a patient's text.
    """
    if not enabled:
        return
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument()


def check() -> int:
    """``worker --check``: 0 when the local worker's /health answers 200."""
    settings = load_settings(WorkerCheckSettings, "worker --check")
    url = f"http://127.0.0.1:{settings.health_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"worker --check: {url}: {type(exc).__name__}", file=sys.stderr)
        return 1


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if the local worker is healthy, 1 otherwise"
    )
    parser.add_argument("--burst", action="store_true", help="drain what is queued, then exit 0")
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
        configure_logging(SERVICE_NAME, settings.log_level, stream=sys.stderr)
        summary = asyncio.run(redrive(settings, args.count, args.ids))
        print(f"re-drove {summary['redriven']} message(s) to {settings.stream_name}")
        print(json.dumps(summary, sort_keys=True))  # as `wabot redrive` prints it
        raise SystemExit(0)
    version = package_version("wabot-worker")
    otel = setup_telemetry(SERVICE_NAME, version, settings.app_env)
    configure_logging(SERVICE_NAME, settings.log_level, otel.logger_provider)
    check_at_start(
        settings.redis_url.get_secret_value(), settings.redis_allow_eviction, log, SERVICE_NAME
    )
    _instrument(otel.enabled)
    try:
        handler = resolve_handler(settings)
    except ValueError as exc:
        print(f"{SERVICE_NAME}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    worker = Worker(settings, version, burst=args.burst, handler=handler)
    code = 1
    try:
        # uvloop (as ingest has through uvicorn): a cheaper event loop for a
        # service that is mostly round trips to Redis and PostgreSQL.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            code = runner.run(worker.serve())
    finally:
        # Last step, with what is left of the shutdown budget.
        left = settings.shutdown_timeout - worker.shutdown_signal.elapsed()
        otel.shutdown(timeout=max(0.1, min(telemetry_flush_budget(settings), left)))
    raise SystemExit(code)
