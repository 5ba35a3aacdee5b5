"""The worker's tracer and instruments (names from :mod:`wabot_shared.names`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import error_attributes

from wabot_shared import names
from wabot_shared.queue import QueueStats


class WorkerTelemetry:
    """Tracer, counters, histograms and queue gauges of one worker process."""

    def __init__(self, stream: str, group: str, consumer: str, version: str) -> None:
        self.tracer = trace.get_tracer("wabot.worker", version)
        self.process_span_name = names.process_span_name(stream)
        self.base_attributes = {
            msg.MESSAGING_SYSTEM: names.MESSAGING_SYSTEM,
            msg.MESSAGING_DESTINATION_NAME: stream,
            msg.MESSAGING_CONSUMER_GROUP_NAME: group,
            msg.MESSAGING_OPERATION_NAME: names.OP_PROCESS,
        }
        self.span_attributes = {
            **self.base_attributes,
            msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.PROCESS.value,
            msg.MESSAGING_CLIENT_ID: consumer,
        }
        meter = metrics.get_meter("wabot.worker", version)
        self._consumed = meter.create_counter(
            names.METRIC_CONSUMED, unit="{message}", description="Messages delivered to the worker"
        )
        self._duration = meter.create_histogram(
            names.METRIC_PROCESS_DURATION,
            unit="s",
            description="Time to process one message",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS),
        )
        self._outcomes = meter.create_counter(
            names.METRIC_OUTCOMES, unit="{message}", description="Processing outcomes"
        )
        self._e2e = meter.create_histogram(
            names.METRIC_END_TO_END,
            unit="s",
            description="Webhook accepted (XADD) to row committed",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS),
        )
        self._resolutions = meter.create_counter(
            names.METRIC_RESOLUTIONS, unit="{message}", description="Instance resolution source"
        )
        self._replies = meter.create_counter(
            names.METRIC_REPLIES, unit="{message}", description="Automatic replies by outcome"
        )
        self._reply_latency = meter.create_histogram(
            names.METRIC_REPLY_LATENCY,
            unit="s",
            description="Inbound webhook accepted to its reply accepted by Evolution",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS),
        )
        self._chat_wait = meter.create_histogram(
            names.METRIC_CHAT_WAIT,
            unit="s",
            description="Time a message waited in the worker behind its chat's earlier ones",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS),
        )
        self._handler = meter.create_histogram(
            names.METRIC_HANDLER_DURATION,
            unit="s",
            description="Time the handler took per message",
            explicit_bucket_boundaries_advisory=list(names.DURATION_BUCKETS),
        )
        self.outbox: tuple[int, float] | None = None
        for name, index, unit, description in (
            (names.METRIC_OUTBOX_DEPTH, 0, "{reply}", "Replies waiting to be sent"),
            (names.METRIC_OUTBOX_OLDEST_AGE, 1, "s", "Age of the oldest reply waiting to be sent"),
        ):
            meter.create_observable_gauge(
                name, callbacks=[self._outbox_callback(index)], unit=unit, description=description
            )
        self._maintenance = meter.create_counter(
            names.METRIC_MAINTENANCE_FAILURES,
            unit="{failure}",
            description="Failed steps of the worker's periodic maintenance",
        )
        self._purged = meter.create_counter(
            names.METRIC_PURGED,
            unit="{item}",
            description="Message contents and dead letters removed by retention",
        )
        self.queue_stats: QueueStats | None = None
        self.heartbeat: float = time.time()
        self.partitions_owned = 0
        for name, field, unit, description in (
            (names.METRIC_QUEUE_LENGTH, "length", "{message}", "Entries in the stream (XLEN)"),
            (
                names.METRIC_QUEUE_PENDING,
                "pending",
                "{message}",
                "Entries delivered but not acknowledged",
            ),
            (names.METRIC_QUEUE_LAG, "lag", "{message}", "Entries not yet delivered to the group"),
            (
                names.METRIC_DEAD_LETTER_LENGTH,
                "dead_letters",
                "{message}",
                "Entries in the dead-letter stream",
            ),
            (
                names.METRIC_QUEUE_OLDEST_AGE,
                "oldest_age_s",
                "s",
                "Age of the oldest entry not yet acknowledged (pending or undelivered)",
            ),
        ):
            meter.create_observable_gauge(
                name,
                callbacks=[self._queue_callback(field)],
                unit=unit,
                description=description,
            )
        meter.create_observable_gauge(
            names.METRIC_PARTITIONS_OWNED,
            callbacks=[lambda _: [Observation(self.partitions_owned, self.base_attributes)]],
            unit="{partition}",
            description="Stream partitions this worker reads",
        )
        meter.create_observable_gauge(
            names.METRIC_HEARTBEAT,
            callbacks=[self._heartbeat_callback],
            unit="s",
            description="Unix time of the consumer loop's last iteration",
        )

    def _queue_callback(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        # Reads the last sample; the I/O happens in the worker's own loop, not
        # in the metric reader's thread.
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            stats = self.queue_stats
            if stats is None:
                return []
            return [Observation(getattr(stats, field), self.base_attributes)]

        return callback

    def _outbox_callback(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_: CallbackOptions) -> Iterable[Observation]:
            return [] if self.outbox is None else [Observation(self.outbox[index])]

        return callback

    def _heartbeat_callback(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.heartbeat)]

    def consumed(self, count: int) -> None:
        self._consumed.add(count, self.base_attributes)

    def processed(self, outcome: str, seconds: float, error_type: str | None = None) -> None:
        """Record one message's outcome and processing time."""
        attrs = dict(self.base_attributes)
        if error_type:
            attrs[error_attributes.ERROR_TYPE] = error_type
        self._duration.record(seconds, attrs)
        outcome_attrs: dict[str, str] = {names.ATTR_OUTCOME: outcome}
        if error_type:
            outcome_attrs[error_attributes.ERROR_TYPE] = error_type
        self._outcomes.add(1, outcome_attrs)

    def end_to_end(self, seconds: float, span: trace.Span) -> None:
        """Record accepted → committed latency, with ``span`` as its exemplar."""
        self._e2e.record(max(seconds, 0.0), context=trace.set_span_in_context(span))

    def reply_latency(self, seconds: float, span: trace.Span) -> None:
        self._reply_latency.record(max(seconds, 0.0), context=trace.set_span_in_context(span))

    def chat_wait(self, seconds: float) -> None:
        self._chat_wait.record(max(seconds, 0.0))

    def handled(self, seconds: float, error_type: str | None = None) -> None:
        attrs = {error_attributes.ERROR_TYPE: error_type} if error_type else {}
        self._handler.record(seconds, attrs)

    def resolved(self, source: str, count: int = 1) -> None:
        self._resolutions.add(count, {names.ATTR_RESOLUTION: source})

    def purged(self, kind: str, count: int) -> None:
        """Count what retention removed (``kind``: message_content, dead_letter)."""
        self._purged.add(count, {"whatsapp.retention.kind": kind})

    def maintenance_failed(self, step: str, error_type: str) -> None:
        self._maintenance.add(
            1, {"maintenance.step": step, error_attributes.ERROR_TYPE: error_type}
        )

    def declare_replies(self) -> None:
        """Export every reply outcome from the start (at 0), so an alert on
        failures has a series to watch before the first one."""
        for outcome in ("sent", "retried", "failed", "suppressed"):
            self._replies.add(0, {names.ATTR_OUTCOME: outcome})

    def replied(self, outcome: str, count: int = 1) -> None:
        """Count reply outcomes: sent, retried, failed, suppressed."""
        self._replies.add(count, {names.ATTR_OUTCOME: outcome})
