"""Client spans the worker writes itself, with allow-listed attributes only.

Batched work (one INSERT for many messages, one XACK pipeline for many
entries) still shows up in every message's trace: each message's ``process``
span gets a child span with the batch's timing and its size
(``db.operation.batch.size``). A failure records the error type and the
SQLSTATE, never a message text: the contrib instrumentations record the
database's error message, which can quote a patient's text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import db_attributes as db
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue

from wabot_shared import names
from wabot_shared.failures import Failure

Attributes = Mapping[str, AttributeValue]


def db_base_attributes(dsn: str) -> dict[str, AttributeValue]:
    """``db.*`` and ``server.*`` attributes of a PostgreSQL DSN (no credentials)."""
    parts = urlsplit(dsn)
    attrs: dict[str, AttributeValue] = {db.DB_SYSTEM_NAME: "postgresql"}
    if parts.path.strip("/"):
        attrs[db.DB_NAMESPACE] = parts.path.strip("/")
    if parts.hostname:
        attrs[server_attributes.SERVER_ADDRESS] = parts.hostname
        attrs[server_attributes.SERVER_PORT] = parts.port or 5432
    return attrs


def failure_attributes(failure: Failure) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        error_attributes.ERROR_TYPE: failure.code or failure.error_type
    }
    if failure.code and failure.code[:1].isalnum() and len(failure.code) == 5:
        attrs[db.DB_RESPONSE_STATUS_CODE] = failure.code
    return attrs


def record_children(
    tracer: trace.Tracer,
    parents: Iterable[trace.Span],
    name: str,
    attributes: Attributes,
    *,
    start_ns: int,
    end_ns: int,
    failure: Failure | None = None,
) -> None:
    """One CLIENT child span per parent for one batched operation."""
    attrs = dict(attributes)
    if failure is not None:
        attrs.update(failure_attributes(failure))
    for parent in parents:
        span = tracer.start_span(
            name,
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=start_ns,
            record_exception=False,
            set_status_on_exception=False,
        )
        if failure is not None:
            span.set_status(StatusCode.ERROR, failure.error_type)
        span.end(end_time=end_ns)


def settle_attributes(stream: str, group: str, batch: int) -> dict[str, AttributeValue]:
    """Messaging ``settle`` (XACK) attributes."""
    attrs: dict[str, AttributeValue] = {
        msg.MESSAGING_SYSTEM: names.MESSAGING_SYSTEM,
        msg.MESSAGING_OPERATION_NAME: "ack",
        msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.SETTLE.value,
        msg.MESSAGING_DESTINATION_NAME: stream,
        msg.MESSAGING_CONSUMER_GROUP_NAME: group,
    }
    if batch > 1:
        attrs[msg.MESSAGING_BATCH_MESSAGE_COUNT] = batch
    return attrs
