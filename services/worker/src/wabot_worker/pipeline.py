"""What happens to one round of a chat: decode, store, reply, acknowledge.

Tracing choice: each entry's ``process`` span has the producer's ``send`` span
(carried in the entry's fields) as *parent*, so one WhatsApp message is one
trace from the webhook to the row; it also carries a *link* to the ``send``
span, which the messaging conventions ask for in every case.

Order of effects per round: commit the rows, (optionally) reply, then XACK.
A crash at any point leaves the entries pending, and the redelivery's insert
is a no-op.

A failure fails the round's first unstored entry; its later entries were not
attempted and wait behind it. Whether the failure counts towards
``MAX_DELIVERIES`` depends on its cause: a permanent one always counts; a
transient one counts only when the dependencies are evidently up (something
else was stored since this entry last failed, or PostgreSQL and Redis answer
a probe), so the entry itself is the problem. A real outage, where the
probes fail too, never dead-letters anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from wabot_shared import names
from wabot_shared.content import seal_row
from wabot_shared.crypto import DecryptError, Keyring
from wabot_shared.entry import read_entry
from wabot_shared.failures import Failure, classify
from wabot_shared.message import Message, WebhookError
from wabot_shared.privacy import chat_kind
from wabot_shared.propagation import GETTER
from wabot_shared.queue import StreamEntry, StreamQueue
from wabot_shared.telemetry import trace_id_hex
from wabot_worker.acks import Acker
from wabot_worker.faults import Faults
from wabot_worker.instances import InstanceResolver, Resolution
from wabot_worker.reply import EvolutionClient
from wabot_worker.scheduler import Work
from wabot_worker.settings import WorkerSettings
from wabot_worker.store import MessageStore, Row
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker")

# Only W3C trace context crosses the stream: inbound baggage is never trusted
# nor forwarded (it could carry anything, and would travel on to Evolution).
_TRACE_CONTEXT: TextMapPropagator = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Decoded:
    """A readable entry: the message and the JSON to store for it."""

    message: Message
    raw_json: str


@dataclass(frozen=True, slots=True)
class Sealed:
    """An entry no configured key opens: retried (the key may be restored),
    and counted only while other entries open (so the keys evidently work)."""

    key_id: str | None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An entry that can never be processed; dead-lettered at once."""

    reason: str
    error_type: str


def decode(entry: StreamEntry, keyring: Keyring | None) -> Work:
    """Read an entry with the same model ingest validated it with."""
    poison_chat = f"!{entry.partition}:{entry.id}"
    payload = entry.fields.get(names.FIELD_PAYLOAD)
    if payload is None:
        return Work(entry, poison_chat, Unreadable("entry has no payload", "MissingPayload"))
    try:
        message, raw_json = read_entry(entry.fields, keyring)
    except WebhookError as exc:
        return Work(entry, poison_chat, Unreadable(exc.detail, "InvalidPayload"))
    except DecryptError:
        return Work(entry, poison_chat, Sealed(Keyring.key_id_of(payload)))
    return Work(entry, f"{message.instance}\n{message.remote_jid}", Decoded(message, raw_json))


@dataclass(frozen=True, slots=True)
class RoundResult:
    """How many head entries are done, and when to retry the next one."""

    completed: int
    retry_at: float | None = None


class Pipeline:
    """Processes rounds; shared by every chat of this worker."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        queue: StreamQueue,
        store: MessageStore,
        acker: Acker,
        resolver: InstanceResolver,
        telemetry: WorkerTelemetry,
        evolution: EvolutionClient | None,
        faults: Faults,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.store = store
        self.acker = acker
        self.resolver = resolver
        self.telemetry = telemetry
        self.evolution = evolution
        self.faults = faults
        self.keyring = settings.keyring()
        # When an entry last opened: a sealed entry that no key opens counts
        # as failing only while others open.
        self.last_opened = 0.0

    def _start_span(self, work: Work) -> trace.Span:
        parent = _TRACE_CONTEXT.extract(work.entry.fields, getter=GETTER)
        producer = trace.get_current_span(parent).get_span_context()
        tel = self.telemetry
        return tel.tracer.start_span(
            tel.process_span_name,
            context=parent,
            kind=SpanKind.CONSUMER,
            links=[Link(producer)] if producer.is_valid else None,
            attributes={
                **tel.span_attributes,
                msg.MESSAGING_MESSAGE_ID: work.entry.id,
                msg.MESSAGING_DESTINATION_PARTITION_ID: str(work.entry.partition),
            },
            record_exception=False,
            set_status_on_exception=False,
        )

    async def run_round(self, works: Sequence[Work]) -> RoundResult:
        """Process a chat's head entries in order; never raises."""
        started = time.perf_counter()
        head = works[0].decoded
        if isinstance(head, Sealed):
            span = self._start_span(works[0])
            failure = Failure("transient", "DecryptError")
            return await self._failed(works[0], span, failure, started)
        self.last_opened = time.monotonic()
        if isinstance(head, Unreadable):
            span = self._start_span(works[0])
            if await self._dead_letter(
                works[0], span, head.error_type, head.reason, started=started
            ):
                return RoundResult(1)
            return RoundResult(0, self._retry_later(works[0]))
        spans = [self._start_span(w) for w in works]
        decoded = [w.decoded for w in works]
        assert all(isinstance(d, Decoded) for d in decoded)
        messages = [d.message for d in decoded if isinstance(d, Decoded)]
        for span, message in zip(spans, messages, strict=True):
            span.set_attributes(
                {
                    names.ATTR_INSTANCE: message.instance,
                    names.ATTR_MESSAGE_TYPE: message.message_type or "unknown",
                    names.ATTR_FROM_ME: message.from_me,
                    names.ATTR_CHAT_KIND: chat_kind(message.remote_jid),
                }
            )
        await self.faults.hang_at("hang_processing")
        try:
            resolution = await self.resolver.resolve(messages[0].instance)
        except Exception as exc:
            return await self._failed(works[0], spans[0], classify(exc), started)
        self.telemetry.resolved(resolution.source, len(works))
        rows = [
            Row(
                message=d.message,
                content=seal_row(
                    self.keyring,
                    (
                        d.message.instance,
                        d.message.remote_jid,
                        d.message.from_me,
                        d.message.message_id,
                    ),
                    d.message.text,
                    d.message.push_name,
                    d.raw_json,
                ),
                resolution=resolution,
                trace_id=trace_id_hex(span),
                stream_id=w.entry.id,
                received_at=datetime.fromtimestamp(w.entry.enqueued_at_ms / 1000, UTC),
                span=span,
            )
            for w, d, span in zip(works, decoded, spans, strict=True)
            if isinstance(d, Decoded)
        ]
        for span in spans:
            span.set_attribute(names.ATTR_RESOLUTION, resolution.source)
        written = await self.store.write(rows)
        done = len(written.inserted)
        for i, inserted in enumerate(written.inserted):
            if inserted:
                self.telemetry.end_to_end(
                    time.time() - works[i].entry.enqueued_at_ms / 1000, spans[i]
                )
                message = messages[i]
                if self._may_reply(message, resolution):
                    await self._reply(
                        resolution.instance_name or message.instance, message, spans[i]
                    )
        if done:
            self.faults.crash_at("crash_before_ack")
            ack_failure = await self.acker.ack([w.entry for w in works[:done]], spans[:done])
            if ack_failure is not None:
                # Rows are committed; the entries stay pending and their
                # redelivery is a no-op insert.
                return await self._failed(works[0], spans[0], ack_failure, started)
            for i in range(done):
                outcome = "processed" if written.inserted[i] else "duplicate"
                self._finish(works[i], spans[i], outcome, resolution.source, started)
        if written.failure is not None:
            return await self._failed(works[done], spans[done], written.failure, started, done)
        return RoundResult(done)

    def _finish(
        self, work: Work, span: trace.Span, outcome: str, source: str, started: float
    ) -> None:
        self.telemetry.processed(outcome, time.perf_counter() - started)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            log.info(
                "message %s",
                outcome,
                extra={
                    "messaging.message.id": work.entry.id,
                    names.ATTR_INSTANCE: work.decoded.message.instance,
                    names.ATTR_RESOLUTION: source,
                },
            )
        finally:
            otel_context.detach(token)
        span.end()

    def _may_reply(self, message: Message, resolution: Resolution) -> bool:
        """Only to a patient's own chat, from an active, known instance."""
        if message.from_me or resolution.source == "unresolved" or resolution.status != "active":
            return False
        kind = chat_kind(message.remote_jid)
        return kind == "user" or (kind == "group" and self.settings.reply_to_groups)

    async def _reply(self, instance: str, message: Message, span: trace.Span) -> None:
        if self.evolution is None:
            return
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self.evolution.send_text(instance, message.remote_jid, self.settings.reply_text)
        except httpx.HTTPError as exc:
            # The message is stored; a missed auto-reply is visible but not
            # retried, so a redelivery can never reply twice.
            self.telemetry.replied("failed")
            log.warning(
                "auto-reply failed: %s",
                type(exc).__name__,
                extra={"error.type": type(exc).__name__},
            )
        else:
            self.telemetry.replied("sent")
        finally:
            otel_context.detach(token)

    async def _failed(
        self, work: Work, span: trace.Span, failure: Failure, started: float, done: int = 0
    ) -> RoundResult:
        """Record a failure of ``work`` (the round's ``done``-th entry)."""
        now = time.monotonic()
        if failure.error_type == "DecryptError":
            counts = work.last_failed_at is not None and self.last_opened > work.last_failed_at
        else:
            counts = failure.kind == "permanent" or await self._dependencies_up(work)
        work.last_failed_at = now
        if work.first_failed_at is None:
            work.first_failed_at = now
        span.set_status(StatusCode.ERROR, failure.error_type)
        span.set_attribute(error_attributes.ERROR_TYPE, failure.code or failure.error_type)
        failures = 0
        if counts:
            try:
                failures = await self.queue.count_failure(work.entry)
            except Exception as exc:
                counts = False
                failure = classify(exc)
            span.set_attribute("whatsapp.message.failures", failures)
        if counts and failures >= self.settings.max_deliveries:
            reason = f"failed {failures} times"
            if await self._dead_letter(
                work,
                span,
                failure.error_type,
                reason,
                started=started,
                deliveries=failures,
                code=failure.code,
            ):
                return RoundResult(done + 1)
            return RoundResult(done, self._retry_later(work))
        retry_at = self._retry_later(work)
        self.telemetry.processed("failed", time.perf_counter() - started, failure.error_type)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            log.warning(
                "message processing failed (%s); retrying it in %.1fs, its chat waits",
                failure.error_type,
                work.backoff,
                extra={
                    "messaging.message.id": work.entry.id,
                    "error.type": failure.error_type,
                    "db.response.status_code": failure.code,
                    "transient": failure.transient,
                    "counted": counts,
                },
            )
        finally:
            otel_context.detach(token)
        span.end()
        return RoundResult(done, retry_at)

    async def _dependencies_up(self, work: Work) -> bool:
        if work.last_failed_at is not None and self.store.last_commit > work.last_failed_at:
            return True
        if not await self.store.probe():
            return False
        try:
            await self.queue.client.ping()
        except Exception:
            return False
        return True

    async def _dead_letter(
        self,
        work: Work,
        span: trace.Span,
        error_type: str,
        reason: str,
        *,
        started: float,
        deliveries: int = 1,
        code: str | None = None,
    ) -> bool:
        """Move ``work`` to the dead-letter stream; False if Redis refused
        (the entry then stays pending and is tried again)."""
        span.set_status(StatusCode.ERROR, error_type)
        span.set_attribute(error_attributes.ERROR_TYPE, code or error_type)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            dead_id = await self.queue.dead_letter(
                work.entry,
                {
                    names.FIELD_ERROR_TYPE: error_type if code is None else f"{error_type} {code}",
                    names.FIELD_DELIVERIES: str(deliveries),
                    names.FIELD_ORIGINAL_ID: work.entry.id,
                    names.FIELD_ERROR_MESSAGE: reason,
                },
            )
        except Exception as exc:
            failure = classify(exc)
            log.warning(
                "could not dead-letter (%s); the entry stays pending",
                failure.error_type,
                extra={"messaging.message.id": work.entry.id, "error.type": failure.error_type},
            )
            return False
        else:
            self.telemetry.processed("dead_lettered", time.perf_counter() - started, error_type)
            log.error(
                "message dead-lettered: %s",
                reason,
                extra={
                    "messaging.message.id": work.entry.id,
                    "error.type": error_type,
                    "dead_letter_id": dead_id,
                },
            )
            return True
        finally:
            otel_context.detach(token)
            span.end()

    def _retry_later(self, work: Work) -> float:
        work.backoff = min(
            self.settings.retry_backoff_max,
            work.backoff * 2 if work.backoff else self.settings.retry_backoff_initial,
        )
        return time.monotonic() + work.backoff
