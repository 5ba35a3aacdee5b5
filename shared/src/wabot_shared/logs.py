"""Structured logging: one JSON object per line on stdout, with trace context.

The same records also go to the OpenTelemetry log pipeline (OTLP) when a
logger provider is given, so a log line can be found from its trace and back.
Every record passes :class:`PrivacyFilter` before either handler sees it.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

import orjson
from opentelemetry import trace
from opentelemetry._logs import LoggerProvider

from wabot_shared.failures import classify
from wabot_shared.privacy import ALLOWED_ATTRIBUTES, scrub

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SAFE_TYPES: dict[tuple[str, str], type[Exception]] = {}

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def safe_exception(exc: BaseException) -> BaseException:
    """A stand-in for ``exc`` with the same type name, module and frames, but
    whose message says only its kind and code: a library's message text (a
    database's ``CONTEXT: JSON data, line 1: ...``) may quote a patient's data."""
    cls = type(exc)
    key = (cls.__module__, cls.__qualname__)
    safe_cls = _SAFE_TYPES.get(key)
    if safe_cls is None:
        safe_cls = type(cls.__name__, (Exception,), {"__module__": cls.__module__})
        safe_cls.__qualname__ = cls.__qualname__
        _SAFE_TYPES[key] = safe_cls
    failure = classify(exc)
    text = failure.kind + (f", code {failure.code}" if failure.code else "") + "; message withheld"
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text += f"; caused by {type(cause).__name__}"
    safe = safe_cls(text)
    return safe.with_traceback(exc.__traceback__)


class PrivacyFilter(logging.Filter):
    """Keeps only allow-listed extras, scrubs the message, and replaces the
    exception by :func:`safe_exception`. Idempotent, so running once per
    handler is harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        for key in [k for k in vars(record) if k not in _RESERVED]:
            if key not in ALLOWED_ATTRIBUTES:
                del record.__dict__[key]
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if not getattr(exc, "_wabot_safe", False):
                safe = safe_exception(exc)
                safe._wabot_safe = True  # type: ignore[attr-defined]
                record.exc_info = (type(safe), safe, exc.__traceback__)
            record.exc_text = None
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
            if key in ALLOWED_ATTRIBUTES:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exception.type"] = record.exc_info[0].__name__
            out["exception.stacktrace"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


def configure_logging(
    service_name: str,
    level: str,
    logger_provider: LoggerProvider | None = None,
    stream: TextIO | None = None,
) -> None:
    """Route all logging to ``stream`` (stdout) as JSON, and to OTLP when a
    provider is given."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    privacy = PrivacyFilter()
    stdout = logging.StreamHandler(stream or sys.stdout)
    stdout.setFormatter(JsonFormatter(service_name))
    stdout.addFilter(privacy)
    root.addHandler(stdout)
    if logger_provider is not None:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler

        otlp = LoggingHandler(logger_provider=logger_provider)
        otlp.addFilter(privacy)
        otlp.addFilter(_NotOwnTelemetry())
        root.addHandler(otlp)
    root.setLevel(level.upper())
    # Libraries that log request details at INFO would otherwise be noisy.
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
