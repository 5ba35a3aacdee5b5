"""The ingest service's own instruments (names from :mod:`wabot_shared.names`)."""

from __future__ import annotations

from opentelemetry import metrics, trace
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import error_attributes

from wabot_shared import names


class IngestTelemetry:
    """Tracer and instruments, created once per app."""

    def __init__(self, stream: str, version: str) -> None:
        self.tracer = trace.get_tracer("wabot.ingest", version)
        meter = metrics.get_meter("wabot.ingest", version)
        self.stream = stream
        self.send_span_name = names.send_span_name(stream)
        self._sent = meter.create_counter(
            names.METRIC_SENT, unit="{message}", description="Messages written to the stream"
        )
        self._events = meter.create_counter(
            names.METRIC_WEBHOOK_EVENTS,
            unit="{event}",
            description="Webhook events received, by event name and outcome",
        )
        self._sent_ok = {
            msg.MESSAGING_SYSTEM: names.MESSAGING_SYSTEM,
            msg.MESSAGING_DESTINATION_NAME: stream,
            msg.MESSAGING_OPERATION_NAME: names.OP_SEND,
        }

    def sent(self, error_type: str | None = None) -> None:
        """Count one send attempt (with ``error.type`` when it failed)."""
        if error_type is None:
            self._sent.add(1, self._sent_ok)
        else:
            self._sent.add(1, {**self._sent_ok, error_attributes.ERROR_TYPE: error_type})

    def event(self, event: str, outcome: str) -> None:
        """Count one webhook by (bounded) event name and outcome."""
        self._events.add(1, {names.ATTR_EVENT: event, names.ATTR_OUTCOME: outcome})
