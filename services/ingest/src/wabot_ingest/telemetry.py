"""The ingest service's spans and instruments (names from :mod:`wabot_shared.names`).

The webhook's SERVER span is written here rather than by a framework, so what
it carries is chosen attribute by attribute: the route template (never a path
secret), the method, the status, the scheme and the protocol version. Client
headers such as ``User-Agent`` are not recorded: a sender chooses them.
"""

from __future__ import annotations

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import (
    error_attributes,
    http_attributes,
    network_attributes,
    url_attributes,
)
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from wabot_shared import names

METRIC_HTTP_DURATION = "http.server.request.duration"
# The semantic conventions' advisory buckets for HTTP server durations.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


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
        self._issues = meter.create_counter(
            names.METRIC_PARSE_ISSUES,
            unit="{issue}",
            description="Fields of accepted webhooks that could not be read (stored as null)",
        )
        self._duration = meter.create_histogram(
            METRIC_HTTP_DURATION,
            unit="s",
            description="Duration of HTTP server requests",
            explicit_bucket_boundaries_advisory=list(_HTTP_BUCKETS),
        )
        self._sent_ok = {
            msg.MESSAGING_SYSTEM: names.MESSAGING_SYSTEM,
            msg.MESSAGING_DESTINATION_NAME: stream,
            msg.MESSAGING_OPERATION_NAME: names.OP_SEND,
        }

    def server_span(
        self, route: str, context: Context | None, scheme: str, version: str
    ) -> trace.Span:
        """Start the SERVER span of one webhook request (not made current)."""
        return self.tracer.start_span(
            f"POST {route}",
            context=context,
            kind=SpanKind.SERVER,
            attributes={
                http_attributes.HTTP_REQUEST_METHOD: "POST",
                http_attributes.HTTP_ROUTE: route,
                url_attributes.URL_PATH: route,
                url_attributes.URL_SCHEME: scheme,
                network_attributes.NETWORK_PROTOCOL_VERSION: version,
            },
            record_exception=False,
            set_status_on_exception=False,
        )

    def end_request(
        self, span: trace.Span, route: str, scheme: str, status: int, seconds: float
    ) -> None:
        """Finish a request: its span's status and the duration metric."""
        span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, status)
        attrs: dict[str, AttributeValue] = {
            http_attributes.HTTP_REQUEST_METHOD: "POST",
            http_attributes.HTTP_ROUTE: route,
            url_attributes.URL_SCHEME: scheme,
            http_attributes.HTTP_RESPONSE_STATUS_CODE: status,
        }
        if status >= 500:
            span.set_status(StatusCode.ERROR)
            span.set_attribute(error_attributes.ERROR_TYPE, str(status))
            attrs[error_attributes.ERROR_TYPE] = str(status)
        self._duration.record(seconds, attrs, context=trace.set_span_in_context(span))
        span.end()

    def sent(self, error_type: str | None = None) -> None:
        """Count one send attempt (with ``error.type`` when it failed)."""
        if error_type is None:
            self._sent.add(1, self._sent_ok)
        else:
            self._sent.add(1, {**self._sent_ok, error_attributes.ERROR_TYPE: error_type})

    def event(self, event: str, outcome: str) -> None:
        """Count one webhook by (bounded) event name and outcome."""
        self._events.add(1, {names.ATTR_EVENT: event, names.ATTR_OUTCOME: outcome})

    def issues(self, codes: frozenset[str]) -> None:
        for code in codes:
            self._issues.add(1, {"whatsapp.issue": code})
