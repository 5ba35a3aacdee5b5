"""Running the configured handler for a chat's new messages.

Before a round's handler calls, one query tells which of its messages are
already stored (a redelivery: the handler ran for them before the crash that
left them pending, and their replies are in the outbox) and loads the chat's
state; the handler then runs for the new ones, in order, each in its own
span, and what it returns is written with the message rows.
"""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from wabot_shared.content import media_aad
from wabot_shared.crypto import Keyring
from wabot_shared.failures import Failure, classify
from wabot_shared.message import Message
from wabot_shared.telemetry import trace_id_hex
from wabot_worker.handler import Handler, HandlerError, IncomingMessage, Media, invoke
from wabot_worker.instances import Resolution
from wabot_worker.telemetry import WorkerTelemetry
from wabot_worker.writes import state_aad

_STORED = """
SELECT message_id, from_me FROM healthcare.whatsapp_messages
 WHERE instance_name = %s AND remote_jid = %s
   AND (message_id, from_me) IN (SELECT * FROM unnest(%s::text[], %s::boolean[]))
"""
_STATE = (
    "SELECT state, state_enc FROM healthcare.chat_state"
    " WHERE instance_name = %s AND remote_jid = %s"
)
_MEDIA = "SELECT data, data_enc FROM healthcare.whatsapp_media WHERE id = %s"
SPAN_NAME = "handle whatsapp message"


class HandlerFailed(Exception):
    """The handler raised or timed out; ``failure`` says how it counts."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error_type)
        self.failure = failure


class Handling:
    """The handler of this worker, with what it needs around it."""

    def __init__(
        self,
        handler: Handler,
        timeout: float,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        keyring: Keyring | None,
        telemetry: WorkerTelemetry,
    ) -> None:
        self.handler = handler
        self.timeout = timeout
        self.pool = pool
        self.keyring = keyring
        self.telemetry = telemetry

    async def prepare(
        self, instance: str, remote_jid: str, messages: list[Message]
    ) -> tuple[set[tuple[str, bool]], dict[str, Any]]:
        """The round's messages already stored, and the chat's state."""
        ids = [m.message_id for m in messages]
        from_me = [m.from_me for m in messages]
        async with self.pool.connection() as conn:
            stored = await (
                await conn.execute(_STORED, (instance, remote_jid, ids, from_me))
            ).fetchall()
            row = await (await conn.execute(_STATE, (instance, remote_jid))).fetchone()
        state: dict[str, Any] = {}
        if row is not None:
            if row[1] is not None:
                if self.keyring is None:
                    raise HandlerError("the chat's state is sealed and no keys are configured")
                state = orjson.loads(
                    self.keyring.open(str(row[1]), state_aad(instance, remote_jid))
                )
            elif isinstance(row[0], dict):
                state = row[0]
        return {(str(r[0]), bool(r[1])) for r in stored}, state

    def _media(self, message: Message) -> Media | None:
        info = message.media
        if info is None:
            return None
        if info.id is None:
            return Media(info.kind, info.mimetype, info.size)
        media_id = info.id

        async def read() -> bytes:
            async with self.pool.connection() as conn:
                row = await (await conn.execute(_MEDIA, (uuid.UUID(media_id),))).fetchone()
            if row is None or (row[0] is None and row[1] is None):
                raise LookupError("the media bytes are gone (erased or past retention)")
            if row[1] is None:
                return bytes(row[0])
            if self.keyring is None:
                raise LookupError("the media bytes are sealed and no keys are configured")
            return self.keyring.open_bytes(bytes(row[1]), media_aad(media_id))

        return Media(info.kind, info.mimetype, info.size, read)

    async def run(
        self,
        message: Message,
        resolution: Resolution,
        parent: trace.Span,
        state: dict[str, Any],
    ) -> tuple[list[str], dict[str, Any] | None]:
        """The handler's replies for ``message``, and the chat's state if it
        changed; raises :class:`HandlerFailed`."""
        incoming = IncomingMessage(
            instance=message.instance,
            chat_id=message.remote_jid,
            message_id=message.message_id,
            from_me=message.from_me,
            message_type=message.message_type,
            text=message.text,
            timestamp=message.timestamp,
            push_name=message.push_name,
            organization_id=resolution.organization_id,
            clinic_id=resolution.clinic_id,
            trace_id=trace_id_hex(parent),
            media=self._media(message),
            state=copy.deepcopy(state),
        )
        tracer = self.telemetry.tracer
        started = time.perf_counter()
        with tracer.start_as_current_span(
            SPAN_NAME,
            context=trace.set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                replies = await invoke(self.handler, incoming, self.timeout)
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    failure = Failure("transient", "HandlerTimeout")
                else:
                    failure = classify(exc)
                span.set_status(StatusCode.ERROR, failure.error_type)
                span.set_attribute("error.type", failure.error_type)
                self.telemetry.handled(time.perf_counter() - started, failure.error_type)
                raise HandlerFailed(failure) from None
            span.set_attribute("whatsapp.handler.replies", len(replies))
        self.telemetry.handled(time.perf_counter() - started)
        changed = incoming.state if incoming.state != state else None
        return replies, changed
