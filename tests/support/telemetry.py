"""In-memory telemetry for in-process tests: the SDK's own in-memory exporters
behind the same allow-list exporter and log filter the services use.

OpenTelemetry's global providers can be set once per process, so they are
installed once (:func:`install`) and cleared between tests (:meth:`clear`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from wabot_shared.logs import configure_logging
from wabot_shared.telemetry import AllowListSpanExporter


@dataclass
class InMemoryTelemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter

    def clear(self) -> None:
        self.spans.clear()
        self.logs.clear()
        self.metrics.get_metrics_data()  # drains the delta points too

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        spans = list(self.spans.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def metric_points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        points: list[Any] = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points

    def log_records(self) -> list[Any]:
        return [r.log_record for r in self.logs.get_finished_logs()]


_INSTALLED: list[InMemoryTelemetry] = []


def install() -> InMemoryTelemetry:
    """Install in-memory providers as the global ones (once per process)."""
    if not _INSTALLED:
        spans = InMemorySpanExporter()
        tracer_provider = TracerProvider(shutdown_on_exit=False)
        tracer_provider.add_span_processor(SimpleSpanProcessor(AllowListSpanExporter(spans)))
        trace.set_tracer_provider(tracer_provider)
        # Delta, so that :meth:`clear` starts each test's counts at zero (a
        # cumulative reader carried an earlier test's worker's outcomes over).
        reader = InMemoryMetricReader(
            preferred_temporality=dict.fromkeys(
                (Counter, Histogram, ObservableCounter), AggregationTemporality.DELTA
            )
        )
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader], shutdown_on_exit=False))
        logs = InMemoryLogRecordExporter()
        logger_provider = LoggerProvider(shutdown_on_exit=False)
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
        set_logger_provider(logger_provider)
        configure_logging("unit", "DEBUG", logger_provider)
        logging.getLogger().setLevel(logging.DEBUG)
        _INSTALLED.append(InMemoryTelemetry(spans, reader, logs))
    return _INSTALLED[0]
