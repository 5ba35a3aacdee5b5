"""One call per process sets up traces, metrics and logs over OTLP.

Everything is configured through the standard ``OTEL_*`` environment variables,
read by the SDK itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_*``, ``OTEL_TRACES_SAMPLER``, ``OTEL_METRIC_EXPORT_INTERVAL``,
``OTEL_BSP_*``, ``OTEL_SDK_DISABLED`` ...). The only choices made here are the
ones the Python SDK leaves to the application: which exporter class matches
``OTEL_EXPORTER_OTLP_PROTOCOL``, and the resource defaults.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from wabot_shared.privacy import ALLOWED_ATTRIBUTES, scrub
from wabot_shared.settings import env_flag

log = logging.getLogger(__name__)

SERVICE_NAMESPACE = "wabot"


def _protocol(signal: str) -> str:
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"  # the specification's default
    ).strip()


def _exporter_kind(signal: str) -> str:
    return os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower()


# Exporter classes by (signal, OTEL_*_EXPORTER value or OTLP protocol). Imported
# lazily: the gRPC stack is heavy and only one protocol is used per process.
_EXPORTERS: dict[tuple[str, str], str] = {
    ("traces", "grpc"): "opentelemetry.exporter.otlp.proto.grpc.trace_exporter:OTLPSpanExporter",
    (
        "traces",
        "http/protobuf",
    ): "opentelemetry.exporter.otlp.proto.http.trace_exporter:OTLPSpanExporter",
    ("traces", "console"): "opentelemetry.sdk.trace.export:ConsoleSpanExporter",
    (
        "metrics",
        "grpc",
    ): "opentelemetry.exporter.otlp.proto.grpc.metric_exporter:OTLPMetricExporter",
    (
        "metrics",
        "http/protobuf",
    ): "opentelemetry.exporter.otlp.proto.http.metric_exporter:OTLPMetricExporter",
    ("metrics", "console"): "opentelemetry.sdk.metrics.export:ConsoleMetricExporter",
    ("logs", "grpc"): "opentelemetry.exporter.otlp.proto.grpc._log_exporter:OTLPLogExporter",
    (
        "logs",
        "http/protobuf",
    ): "opentelemetry.exporter.otlp.proto.http._log_exporter:OTLPLogExporter",
    ("logs", "console"): "opentelemetry.sdk._logs.export:ConsoleLogRecordExporter",
}


def _exporter(signal: str) -> Any:
    """A new exporter for ``signal`` as the environment asks, or None for ``none``."""
    kind = _exporter_kind(signal)
    if kind == "none":
        return None
    key = (signal, "console") if kind == "console" else (signal, _protocol(signal))
    if kind not in ("otlp", "console") or key not in _EXPORTERS:
        raise ValueError(f"unsupported exporter for {signal}: {kind} / {key[1]}")
    module, _, name = _EXPORTERS[key].partition(":")
    return getattr(importlib.import_module(module), name)()


# A status description we set is an error type or a fixed phrase.
_SAFE_DESCRIPTION = re.compile(r"[A-Za-z0-9_. :-]{0,80}")


def _clean_span(span: ReadableSpan) -> ReadableSpan:
    attributes = span.attributes or {}
    description = span.status.description
    name = scrub(span.name)
    if (
        not span.events
        and all(key in ALLOWED_ATTRIBUTES for key in attributes)
        and (description is None or _SAFE_DESCRIPTION.fullmatch(description))
        and name == span.name
    ):
        return span
    status = span.status
    if description is not None and not _SAFE_DESCRIPTION.fullmatch(description):
        status = Status(span.status.status_code)
    events = [
        Event(
            event.name,
            {k: v for k, v in (event.attributes or {}).items() if k == "exception.type"},
            event.timestamp,
        )
        for event in span.events
    ]
    return ReadableSpan(
        name=name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes={k: v for k, v in attributes.items() if k in ALLOWED_ATTRIBUTES},
        events=events,
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class AllowListSpanExporter(SpanExporter):
    """Exports only allow-listed span attributes, exception types (never
    exception messages or stack traces), safe status descriptions and
    scrubbed names, whatever a library put on a span."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([_clean_span(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def build_resource(service_name: str, service_version: str, environment: str) -> Resource:
    """Resource defaults for this process; ``OTEL_RESOURCE_ATTRIBUTES`` and
    ``OTEL_SERVICE_NAME`` override them, as the specification requires."""
    defaults = {
        "service.name": service_name,
        "service.namespace": SERVICE_NAMESPACE,
        "service.version": service_version,
        "service.instance.id": str(uuid.uuid4()),
        "deployment.environment.name": environment,
    }
    return Resource.create(defaults).merge(OTELResourceDetector().detect())


@dataclass
class Telemetry:
    """The providers of one process, owned by its lifespan.

    When the SDK is disabled (``OTEL_SDK_DISABLED=true``) the providers are
    ``None`` and the API's no-op implementations are used.
    """

    resource: Resource | None = None
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    logger_provider: LoggerProvider | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.tracer_provider is not None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush and stop all three providers within ``timeout`` seconds.

        Called as the last step of shutdown. Errors are logged, never raised:
        losing telemetry must not turn a clean exit into a crash.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        steps: list[tuple[str, Callable[[], Any]]] = []
        for name, provider in (
            ("traces", self.tracer_provider),
            ("metrics", self.meter_provider),
            ("logs", self.logger_provider),
        ):
            if provider is not None:
                steps.append((name, provider.shutdown))
        for name, step in steps:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("telemetry shutdown budget exhausted; %s not flushed", name)
                continue
            _run_bounded(name, step, remaining)


def _run_bounded(name: str, step: Callable[[], Any], timeout: float) -> None:
    # Provider shutdown may block on a black-holed endpoint; a daemon thread
    # keeps the process's own shutdown budget intact.
    def run() -> None:
        try:
            step()
        except Exception:
            log.warning("telemetry %s shutdown failed", name, exc_info=True)

    worker = threading.Thread(target=run, name=f"otel-shutdown-{name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("telemetry %s did not flush within %.1fs", name, timeout)


_SWITCH_INTERVAL_S = 0.0005
_EXPORT_QUEUE_SIZE = 8192


def setup_telemetry(service_name: str, service_version: str, environment: str) -> Telemetry:
    """Install global tracer, meter and logger providers exporting over OTLP.

    Returns a :class:`Telemetry` whose ``shutdown`` flushes everything. Setup
    problems are logged and leave the process running with whatever signals
    could be configured.
    """
    if env_flag("OTEL_SDK_DISABLED"):
        return Telemetry()
    # Stable HTTP and DB attribute names unless the operator chose otherwise.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http,database")
    resource = build_resource(service_name, service_version, environment)
    telemetry = Telemetry(resource=resource)
    # The export threads encode in Python and hold the GIL in slices of the
    # switch interval (5 ms by default): the event loop, woken by I/O, waits
    # out a slice at every await, and a message crosses a dozen of them.
    # Shorter slices cost a little throughput and take the export off the p99.
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    # With shorter slices the event loop outruns the export thread for a while
    # in a backlog drain (three spans a message at 1,000 messages/s): the SDK's
    # 2,048-span queue overflowed by a few hundred spans per 20,000-message
    # drain. A bounded 8,192 absorbs the bursts (a few MB while it is full);
    # an operator's OTEL_BSP_/OTEL_BLRP_MAX_QUEUE_SIZE still wins.
    for name in ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BLRP_MAX_QUEUE_SIZE"):
        os.environ.setdefault(name, str(_EXPORT_QUEUE_SIZE))
    # No SDK atexit hooks: :meth:`Telemetry.shutdown` is the one, bounded flush.
    # The SDK's own hooks would run after it at interpreter exit and wait up to
    # 30 s per provider for an unreachable or black-holed endpoint.
    tracer_provider = TracerProvider(  # sampler from OTEL_TRACES_SAMPLER
        resource=resource, shutdown_on_exit=False
    )
    try:
        span_exporter = _exporter("traces")
        if span_exporter is not None:
            tracer_provider.add_span_processor(
                BatchSpanProcessor(AllowListSpanExporter(span_exporter))
            )
    except Exception:
        log.exception("trace exporter setup failed; spans will not be exported")
    trace.set_tracer_provider(tracer_provider)
    telemetry.tracer_provider = tracer_provider

    readers = []
    try:
        metric_exporter = _exporter("metrics")
        if metric_exporter is not None:
            readers.append(PeriodicExportingMetricReader(metric_exporter))
    except Exception:
        log.exception("metric exporter setup failed; metrics will not be exported")
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, shutdown_on_exit=False
    )
    metrics.set_meter_provider(meter_provider)
    telemetry.meter_provider = meter_provider

    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    try:
        log_exporter = _exporter("logs")
        if log_exporter is not None:
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    except Exception:
        log.exception("log exporter setup failed; logs will not be exported")
    set_logger_provider(logger_provider)
    telemetry.logger_provider = logger_provider
    return telemetry


def trace_id_hex(span: trace.Span | None = None) -> str | None:
    """The W3C trace id of ``span`` (default: current) as 32 lowercase hex, or None."""
    ctx = (span or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


__all__ = [
    "AllowListSpanExporter",
    "Telemetry",
    "build_resource",
    "setup_telemetry",
    "trace_id_hex",
]
