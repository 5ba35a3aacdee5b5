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
from wabot_shared.message import ChatEvent, Deletion, Edit, Message, Receipt, WebhookError
from wabot_shared.privacy import chat_kind
from wabot_shared.propagation import GETTER
from wabot_shared.queue import StreamEntry, StreamQueue
from wabot_shared.telemetry import trace_id_hex
from wabot_worker.acks import Acker
from wabot_worker.faults import Faults
from wabot_worker.handling import HandlerFailed, Handling
from wabot_worker.instances import InstanceResolver, Resolution
from wabot_worker.outbox import ReplySender
from wabot_worker.scheduler import Work
from wabot_worker.settings import WorkerSettings
from wabot_worker.store import MessageStore, Write
from wabot_worker.telemetry import WorkerTelemetry
from wabot_worker.writes import Context, deletion_write, edit_write, message_write, receipt_write

log = logging.getLogger("wabot.worker")

# Only W3C trace context crosses the stream: inbound baggage is never trusted
# nor forwarded (it could carry anything, and would travel on to Evolution).
_TRACE_CONTEXT: TextMapPropagator = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Decoded:
    """A readable entry: its chat event and the JSON to store for it."""

    event: ChatEvent
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
        event, raw_json = read_entry(entry.fields, keyring)
    except WebhookError as exc:
        return Work(entry, poison_chat, Unreadable(exc.detail, "InvalidPayload"))
    except DecryptError:
        return Work(entry, poison_chat, Sealed(Keyring.key_id_of(payload)))
    return Work(entry, f"{event.instance}\n{event.remote_jid}", Decoded(event, raw_json))


@dataclass(frozen=True, slots=True)
class RoundResult:
    """How many head entries are done, and when to retry the next one."""

    completed: int
    retry_at: float | None = None


def _event_attributes(event: ChatEvent) -> dict[str, str | bool]:
    attrs: dict[str, str | bool] = {
        names.ATTR_INSTANCE: event.instance,
        names.ATTR_FROM_ME: event.from_me,
        names.ATTR_CHAT_KIND: chat_kind(event.remote_jid),
    }
    if isinstance(event, Message):
        attrs[names.ATTR_MESSAGE_TYPE] = event.message_type or "unknown"
        attrs[names.ATTR_EVENT] = "messages.upsert"
    else:
        attrs[names.ATTR_EVENT] = _EVENT_NAMES[type(event)]
    return attrs


_EVENT_NAMES: dict[type, str] = {
    Receipt: "messages.update",
    Edit: "messages.edited",
    Deletion: "messages.delete",
}


def _event_write(ctx: Context, event: ChatEvent) -> Write:
    if isinstance(event, Receipt):
        return receipt_write(ctx, event)
    if isinstance(event, Edit):
        return edit_write(ctx, event)
    assert isinstance(event, Deletion)
    return deletion_write(ctx, event)


def _outcome(event: ChatEvent, inserted: bool | None) -> str:
    """processed / duplicate for a message; recorded for other events."""
    if isinstance(event, Message):
        return "processed" if inserted else "duplicate"
    return "recorded"


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
        faults: Faults,
        handling: Handling | None = None,
        sender: ReplySender | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.store = store
        self.acker = acker
        self.resolver = resolver
        self.telemetry = telemetry
        self.faults = faults
        self.handling = handling
        self.sender = sender
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
        now = time.monotonic()
        head = works[0].decoded
        if isinstance(head, Sealed):
            span = self._start_span(works[0])
            failure = Failure("transient", "DecryptError")
            return await self._failed(works[0], span, failure, started)
        self.last_opened = now
        if isinstance(head, Unreadable):
            span = self._start_span(works[0])
            if await self._dead_letter(
                works[0], span, head.error_type, head.reason, started=started
            ):
                return RoundResult(1)
            return RoundResult(0, self._retry_later(works[0]))
        for work in works:
            if work.failures == 0 and work.first_failed_at is None:
                self.telemetry.chat_wait(now - work.read_at)
        spans = [self._start_span(w) for w in works]
        events = [w.decoded.event for w in works]
        for span, event in zip(spans, events, strict=True):
            span.set_attributes(_event_attributes(event))
        await self.faults.hang_at("hang_processing")
        try:
            resolution = await self.resolver.resolve(events[0].instance)
        except Exception as exc:
            return await self._failed(works[0], spans[0], classify(exc), started)
        self.telemetry.resolved(resolution.source, len(works))
        for span in spans:
            span.set_attribute(names.ATTR_RESOLUTION, resolution.source)
        try:
            plan, stopped, with_replies = await self._plan(works, events, spans, resolution)
        except Exception as exc:  # preparing the handler (a query) failed
            return await self._failed(works[0], spans[0], classify(exc), started)
        written = await self.store.write(plan)
        done = len(written.inserted)
        replies = False
        for i, inserted in enumerate(written.inserted):
            if inserted and isinstance(events[i], Message):
                self.telemetry.end_to_end(
                    time.time() - works[i].entry.enqueued_at_ms / 1000, spans[i]
                )
                replies = replies or i in with_replies
        if replies and self.sender is not None:
            self.sender.wake()
        if done:
            self.faults.crash_at("crash_before_ack")
            ack_failure = await self.acker.ack([w.entry for w in works[:done]], spans[:done])
            if ack_failure is not None:
                # Rows are committed; the entries stay pending and their
                # redelivery is a no-op insert.
                return await self._failed(works[0], spans[0], ack_failure, started)
            for i in range(done):
                outcome = _outcome(events[i], written.inserted[i])
                self._finish(works[i], spans[i], outcome, resolution.source, started)
        if written.failure is not None:
            return await self._failed(works[done], spans[done], written.failure, started, done)
        if stopped is not None:
            return await self._failed(works[done], spans[done], stopped, started, done)
        return RoundResult(done)

    async def _plan(
        self,
        works: Sequence[Work],
        events: Sequence[ChatEvent],
        spans: Sequence[trace.Span],
        resolution: Resolution,
    ) -> tuple[list[Write], Failure | None, set[int]]:
        """What the round writes, in order, up to its first handler failure,
        and which of its entries carry replies."""
        messages = [e for e in events if isinstance(e, Message)]
        stored: set[tuple[str, bool]] = set()
        state: dict[str, object] = {}
        if self.handling is not None and messages:
            stored, state = await self.handling.prepare(
                messages[0].instance, messages[0].remote_jid, messages
            )
        plan: list[Write] = []
        with_replies: set[int] = set()
        for index, (work, event, span) in enumerate(zip(works, events, spans, strict=True)):
            ctx = Context(
                stream_id=work.entry.id,
                received_at=datetime.fromtimestamp(work.entry.enqueued_at_ms / 1000, UTC),
                span=span,
                resolution=resolution,
                keyring=self.keyring,
            )
            if not isinstance(event, Message):
                plan.append(_event_write(ctx, event))
                continue
            replies: list[str] = []
            changed = None
            if self.handling is not None and (event.message_id, event.from_me) not in stored:
                try:
                    replies, changed = await self.handling.run(event, resolution, span, state)
                except HandlerFailed as exc:
                    return plan, exc.failure, with_replies
                if changed is not None:
                    state = changed
                if replies and not self._may_reply(event, resolution):
                    self.telemetry.replied("suppressed", len(replies))
                    replies = []
            carrier: dict[str, str] = {}
            _TRACE_CONTEXT.inject(carrier, context=trace.set_span_in_context(span))
            content = seal_row(
                self.keyring,
                (event.instance, event.remote_jid, event.from_me, event.message_id),
                event.text,
                event.push_name,
                work.decoded.raw_json,
            )
            write = message_write(
                ctx,
                event,
                content,
                trace_id_hex(span),
                replies=replies,
                partition=work.entry.partition,
                carrier=carrier,
                state=changed,
            )
            plan.append(write)
            if replies:
                with_replies.add(index)
        return plan, None, with_replies

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
                    names.ATTR_INSTANCE: work.decoded.event.instance,
                    names.ATTR_RESOLUTION: source,
                },
            )
        finally:
            otel_context.detach(token)
        span.end()

    def _may_reply(self, message: Message, resolution: Resolution) -> bool:
        """Only to a patient's own chat, from an active, known instance, and
        only when replies are sent at all."""
        if self.sender is None:
            return False
        if message.from_me or resolution.source == "unresolved" or resolution.status != "active":
            return False
        kind = chat_kind(message.remote_jid)
        return kind == "user" or (kind == "group" and self.settings.reply_to_groups)

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
