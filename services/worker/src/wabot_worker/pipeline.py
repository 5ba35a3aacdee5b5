"""What happens to one round of a chat: decode, store, reply, acknowledge.

Tracing choice: each entry's ``process`` span has the producer's ``send`` span
(carried in the entry's fields) as *parent*, so one WhatsApp message is one
trace from the webhook to the row; it also carries a *link* to the ``send``
span, which the messaging conventions ask for in every case.

Order of effects per round: commit the rows, (optionally) reply, then XACK.
A crash at any point leaves the entries pending, and the redelivery's insert
is a no-op.

A failure fails the round's first unstored entry; its later entries were not
attempted and wait behind it (:mod:`wabot_worker.failing` decides whether
it counts towards dead-lettering).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from wabot_shared import names
from wabot_shared.content import seal_row
from wabot_shared.failures import Failure, classify
from wabot_shared.message import ChatEvent, Deletion, Edit, Message, Receipt
from wabot_shared.privacy import chat_kind
from wabot_shared.propagation import GETTER
from wabot_shared.queue import StreamQueue
from wabot_shared.telemetry import trace_id_hex
from wabot_worker.acks import Acker
from wabot_worker.entries import Sealed, Unreadable
from wabot_worker.failing import Failing
from wabot_worker.faults import Faults
from wabot_worker.handling import HandlerFailed, Handling
from wabot_worker.instances import InstanceResolver, Resolution
from wabot_worker.outbox import ReplySender
from wabot_worker.scheduler import RoundResult, Work
from wabot_worker.settings import WorkerSettings
from wabot_worker.store import MessageStore, Write
from wabot_worker.telemetry import WorkerTelemetry
from wabot_worker.writes import Context, deletion_write, edit_write, message_write, receipt_write

log = logging.getLogger("wabot.worker")

# Only W3C trace context crosses the stream: inbound baggage is never trusted
# nor forwarded (it could carry anything, and would travel on to Evolution).
_TRACE_CONTEXT: TextMapPropagator = TraceContextTextMapPropagator()


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
        self.failing = Failing(settings, queue=queue, store=store, telemetry=telemetry)

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
            return await self.failing.failed(works[0], span, failure, started)
        self.failing.last_opened = now
        if isinstance(head, Unreadable):
            span = self._start_span(works[0])
            if await self.failing.dead_letter(
                works[0], span, head.error_type, head.reason, started=started
            ):
                return RoundResult(1)
            return RoundResult(0, self.failing.retry_later(works[0]))
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
            return await self.failing.failed(works[0], spans[0], classify(exc), started)
        self.telemetry.resolved(resolution.source, len(works))
        for span in spans:
            span.set_attribute(names.ATTR_RESOLUTION, resolution.source)
        try:
            plan, stopped, with_replies = await self._plan(works, events, spans, resolution)
        except Exception as exc:  # preparing the handler (a query) failed
            return await self.failing.failed(works[0], spans[0], classify(exc), started)
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
                return await self.failing.failed(works[0], spans[0], ack_failure, started)
            for i in range(done):
                outcome = _outcome(events[i], written.inserted[i])
                self._finish(works[i], spans[i], outcome, resolution.source, started)
        if written.failure is not None:
            return await self.failing.failed(
                works[done], spans[done], written.failure, started, done
            )
        if stopped is not None:
            return await self.failing.failed(works[done], spans[done], stopped, started, done)
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
