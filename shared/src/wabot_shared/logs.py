"""Structured logging: one JSON object per line on stdout, with trace context.

The same records also go to the OpenTelemetry log pipeline (OTLP) when a
logger provider is given, so a log line can be found from its trace and back.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import LoggerProvider

from wabot_shared.privacy import scrub

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class ScrubFilter(logging.Filter):
    """Rewrites each record's message through :func:`scrub` (idempotent)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Idempotent, so running once per handler is harmless.
        record.msg = scrub(record.getMessage())
        record.args = None
        # uvicorn's ANSI-coloured duplicate of the message is noise in JSON.
        record.__dict__.pop("color_message", None)
        return True


class _NotOwnTelemetry(logging.Filter):
    # Exporter errors must not be fed back into the exporter that is failing.
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("opentelemetry")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line with ``trace_id`` and ``span_id``."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service = service_name

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self._service,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exception.type"] = record.exc_info[0].__name__
            out["exception.stacktrace"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(
    service_name: str, level: str, logger_provider: LoggerProvider | None = None
) -> None:
    """Route all logging to stdout as JSON (and to OTLP when a provider is given)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    scrubber = ScrubFilter()
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(JsonFormatter(service_name))
    stdout.addFilter(scrubber)
    root.addHandler(stdout)
    if logger_provider is not None:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler

        otlp = LoggingHandler(logger_provider=logger_provider)
        otlp.addFilter(scrubber)
        otlp.addFilter(_NotOwnTelemetry())
        root.addHandler(otlp)
    root.setLevel(level.upper())
    # Libraries that log request details at INFO would otherwise be noisy.
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
