"""Processing one stream entry, inside its own CONSUMER span.

Tracing choice: the ``process`` span's *parent* is the producer's ``send`` span
carried in the entry's fields, so one WhatsApp message is one trace from the
webhook to the row. The messaging conventions allow this for single-message
processing; the span also carries a *link* to the ``send`` span, which is what
the conventions require in every case and what batch-aware tools follow.

Order of effects: commit the row, (optionally) reply, then XACK. A crash at any
point leaves the entry pending, and the redelivery's insert is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import psycopg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.trace import Link, SpanKind, StatusCode
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.exceptions import RedisError

from wabot_shared import names
from wabot_shared.privacy import chat_kind
from wabot_shared.propagation import extract_from_fields
from wabot_shared.queue import StreamEntry, StreamQueue
from wabot_shared.settings import WorkerSettings
from wabot_shared.telemetry import trace_id_hex
from wabot_worker.instances import InstanceResolver
from wabot_worker.message import PoisonMessage, parse_payload
from wabot_worker.reply import EvolutionClient
from wabot_worker.store import insert_message
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker")

# Errors that say "a dependency is unavailable", not "this message is bad":
# retried with backoff and never counted towards dead-lettering.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.errors.UndefinedTable,  # not migrated yet: retried until `migrate` ran
    PoolTimeout,
    RedisError,
    OSError,
    asyncio.TimeoutError,
)


class TransientFailure(Exception):
    """Processing failed for a reason that will likely pass; entry stays pending."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one entry."""

    name: str  # processed | duplicate | failed | dead_lettered
    transient: bool = False
    error_type: str | None = None


class Processor:
    """Turns stream entries into rows."""

    def __init__(
        self,
        settings: WorkerSettings,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        queue: StreamQueue,
        telemetry: WorkerTelemetry,
        evolution: EvolutionClient | None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.queue = queue
        self.telemetry = telemetry
        self.evolution = evolution
        self.resolver = InstanceResolver(settings.whatsapp_default_instance)

    def fault(self, point: str) -> None:
        """Test-only: SIGKILL this process at ``point`` when so configured."""
        if self.settings.fault_injection == point:
            log.warning("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    async def process(self, entry: StreamEntry) -> Outcome:
        """Process one entry; never raises (the outcome says what happened)."""
        parent = extract_from_fields(entry.fields)
        producer = trace.get_current_span(parent).get_span_context()
        started = time.perf_counter()
        # Attach the whole extracted context (not only the parent span) so its
        # baggage is current too and flows on to outgoing calls.
        token = otel_context.attach(parent)
        try:
            return await self._process_in_span(entry, producer, started)
        finally:
            otel_context.detach(token)

    async def _process_in_span(
        self, entry: StreamEntry, producer: trace.SpanContext, started: float
    ) -> Outcome:
        tel = self.telemetry
        with tel.tracer.start_as_current_span(
            tel.process_span_name,
            kind=SpanKind.CONSUMER,
            links=[Link(producer)] if producer.is_valid else None,
            attributes={**tel.span_attributes, msg.MESSAGING_MESSAGE_ID: entry.id},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                outcome = await self._handle(entry, span)
            except PoisonMessage as exc:
                outcome = await self._dead_letter(entry, span, type(exc).__name__, str(exc))
            except TRANSIENT_ERRORS as exc:
                outcome = self._failed(entry, span, exc, transient=True)
            except Exception as exc:
                outcome = await self._failed_permanently(entry, span, exc)
            tel.processed(outcome.name, time.perf_counter() - started, outcome.error_type)
        return outcome

    async def _handle(self, entry: StreamEntry, span: trace.Span) -> Outcome:
        payload = entry.fields.get(names.FIELD_PAYLOAD)
        if payload is None:
            raise PoisonMessage("entry has no payload (trimmed or malformed)")
        message = parse_payload(payload)
        span.set_attributes(
            {
                names.ATTR_INSTANCE: message.instance_name,
                names.ATTR_MESSAGE_TYPE: message.message_type or "unknown",
                names.ATTR_FROM_ME: message.from_me,
                names.ATTR_CHAT_KIND: chat_kind(message.remote_jid),
            }
        )
        received_at = datetime.fromtimestamp(entry.enqueued_at_ms / 1000, UTC)
        if self.settings.fault_injection == "hang_processing":
            log.warning("fault injection: hanging while processing")
            await asyncio.Event().wait()  # test-only: a stuck handler
        async with self.pool.connection() as conn:
            resolution = await self.resolver.resolve(conn, message.instance_name)
            span.set_attribute(names.ATTR_RESOLUTION, resolution.source)
            self.telemetry.resolved(resolution.source)
            inserted = await insert_message(
                conn,
                message,
                resolution,
                trace_id=trace_id_hex(span),
                stream_id=entry.id,
                received_at=received_at,
            )
        if inserted:
            self.telemetry.end_to_end(time.time() - entry.enqueued_at_ms / 1000)
            if not message.from_me and resolution.source != "unresolved":
                await self._reply(
                    resolution.instance_name or message.instance_name, message.remote_jid
                )
        self.fault("crash_before_ack")
        await self.queue.ack(entry.id)
        outcome = Outcome("processed" if inserted else "duplicate")
        log.info(
            "message %s",
            outcome.name,
            extra={
                "messaging.message.id": entry.id,
                names.ATTR_INSTANCE: message.instance_name,
                names.ATTR_RESOLUTION: resolution.source,
            },
        )
        return outcome

    async def _reply(self, instance: str, remote_jid: str) -> None:
        if self.evolution is None:
            return
        try:
            await self.evolution.send_text(instance, remote_jid, self.settings.reply_text)
        except httpx.HTTPError as exc:
            # The message is stored; a missed auto-reply is visible but not retried,
            # so a redelivery can never reply twice.
            self.telemetry.replied("failed")
            log.warning(
                "auto-reply failed: %s",
                type(exc).__name__,
                extra={"error.type": type(exc).__name__},
            )
            return
        self.telemetry.replied("sent")

    def _failed(
        self, entry: StreamEntry, span: trace.Span, exc: BaseException, *, transient: bool
    ) -> Outcome:
        error_type = type(exc).__name__
        span.set_status(StatusCode.ERROR, error_type)
        span.set_attribute(error_attributes.ERROR_TYPE, error_type)
        log.warning(
            "message processing failed (%s); entry stays pending",
            error_type,
            extra={
                "messaging.message.id": entry.id,
                "error.type": error_type,
                "transient": transient,
            },
            exc_info=not transient,
        )
        return Outcome("failed", transient=transient, error_type=error_type)

    async def _failed_permanently(
        self, entry: StreamEntry, span: trace.Span, exc: BaseException
    ) -> Outcome:
        """An unexpected error: retried, and dead-lettered after MAX_DELIVERIES."""
        outcome = self._failed(entry, span, exc, transient=False)
        try:
            failures = await self.queue.count_failure(entry.id)
        except TRANSIENT_ERRORS:
            # Not counted (Redis trouble): the entry stays pending and the loop
            # backs off before retrying it, instead of retrying it at once.
            return Outcome("failed", transient=True, error_type=outcome.error_type)
        span.set_attribute("whatsapp.message.failures", failures)
        if failures >= self.settings.max_deliveries:
            return await self._dead_letter(
                entry, span, type(exc).__name__, f"failed {failures} times", failures
            )
        return outcome

    async def _dead_letter(
        self,
        entry: StreamEntry,
        span: trace.Span,
        error_type: str,
        reason: str,
        deliveries: int = 1,
    ) -> Outcome:
        span.set_status(StatusCode.ERROR, error_type)
        span.set_attribute(error_attributes.ERROR_TYPE, error_type)
        try:
            dead_id = await self.queue.dead_letter(
                entry,
                {
                    names.FIELD_ERROR_TYPE: error_type,
                    names.FIELD_DELIVERIES: str(deliveries),
                    names.FIELD_ORIGINAL_ID: entry.id,
                    names.FIELD_ERROR_MESSAGE: reason,
                },
            )
        except TRANSIENT_ERRORS as exc:
            return self._failed(entry, span, exc, transient=True)
        log.error(
            "message dead-lettered: %s",
            reason,
            extra={
                "messaging.message.id": entry.id,
                "error.type": error_type,
                "dead_letter_id": dead_id,
            },
        )
        return Outcome("dead_lettered", error_type=error_type)
