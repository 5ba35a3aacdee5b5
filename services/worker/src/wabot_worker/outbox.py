"""The reply sender: the outbox delivered to Evolution, per chat, in order.

Only the owner of a chat's partition sends its replies (the same lease that
orders its messages), the oldest pending reply of each chat first, so replies
arrive in the order the handler wrote them. A reply is sent, then marked
``sent`` with the message key Evolution returned: delivered at least once,
and exactly once unless the worker dies between Evolution's answer and that
bookkeeping. 429 and 5xx (and timeouts, refused connections) are retried
with exponential backoff, honouring ``Retry-After``; other 4xx, and replies
past their attempt or time budget, are marked ``failed``, counted
(``RepliesFailing`` alerts on them) and can be re-driven with
``wabot redrive-replies``. Each reply's spans join the inbound message's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from psycopg import AsyncConnection
from psycopg.rows import TupleRow, dict_row
from psycopg_pool import AsyncConnectionPool

from wabot_shared.crypto import Keyring
from wabot_shared.failures import classify, http_status_kind
from wabot_worker.reply import EvolutionClient
from wabot_worker.telemetry import WorkerTelemetry
from wabot_worker.writes import reply_aad

log = logging.getLogger("wabot.worker.outbox")
_TRACE_CONTEXT = TraceContextTextMapPropagator()

# The oldest pending reply of each chat of the given partitions.
_HEADS = """
SELECT DISTINCT ON (instance_name, remote_jid)
       id, instance_name, remote_jid, inbound_message_id, seq, text_body, text_enc,
       attempts, next_attempt_at, traceparent, tracestate, accepted_at, created_at
  FROM healthcare.whatsapp_outbox
 WHERE status = 'pending' AND partition = ANY(%s)
 ORDER BY instance_name, remote_jid, id
 LIMIT %s
"""
_SENT = """
UPDATE healthcare.whatsapp_outbox
   SET status = 'sent', sent_at = now(), attempts = attempts + 1,
       evolution_message_id = %s, last_error = NULL
 WHERE id = %s
"""
_RETRY = """
UPDATE healthcare.whatsapp_outbox
   SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => %s),
       last_error = %s
 WHERE id = %s
"""
_FAILED = """
UPDATE healthcare.whatsapp_outbox
   SET status = 'failed', attempts = attempts + 1, last_error = %s
 WHERE id = %s
"""
_DEPTH = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)
  FROM healthcare.whatsapp_outbox WHERE status = 'pending'
"""


@dataclass(frozen=True, slots=True)
class SenderSettings:
    concurrency: int
    max_attempts: int
    budget_s: float
    backoff_initial: float
    backoff_max: float
    poll_interval: float


def retry_after(response: httpx.Response | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date)."""
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class ReplySender:
    """Delivers the outbox of this worker's partitions; run :meth:`run`."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        *,
        evolution: EvolutionClient,
        keyring: Keyring | None,
        telemetry: WorkerTelemetry,
        owned: Callable[[], list[int]],
        settings: SenderSettings,
    ) -> None:
        self.pool = pool
        self.evolution = evolution
        self.keyring = keyring
        self.telemetry = telemetry
        self.owned = owned
        self.settings = settings
        self.wakeup = asyncio.Event()
        self._sending: set[tuple[str, str]] = set()
        # Chats whose attempt ended while a heads query ran: that query's row
        # for them is stale (sent, or put back with a backoff) and is skipped.
        self._settled: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """New replies were committed: look now rather than at the next poll."""
        self.wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop``; then let the replies in flight finish."""
        while not stop.is_set():
            self.wakeup.clear()
            try:
                await self._round()
            except Exception as exc:
                failure = classify(exc)
                log.warning(
                    "reply sender round failed (%s); retrying",
                    failure.error_type,
                    extra={"error.type": failure.error_type},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.settings.poll_interval)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    async def _round(self) -> None:
        partitions = self.owned()
        room = self.settings.concurrency - len(self._tasks)
        if not partitions or room <= 0:
            return
        self._settled.clear()
        heads = await self._heads(partitions, room + len(self._sending))
        now = datetime.now(UTC)
        for head in heads:
            chat = (head["instance_name"], head["remote_jid"])
            if chat in self._sending or chat in self._settled:
                continue
            if head["next_attempt_at"] > now or room <= 0:
                continue
            room -= 1
            self._sending.add(chat)
            task = asyncio.create_task(self._chat(chat, head))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _heads(self, partitions: list[int], limit: int) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(_HEADS, (partitions, limit))
            return await cursor.fetchall()

    async def _chat(self, chat: tuple[str, str], head: dict[str, Any]) -> None:
        try:
            sent = await self._send(head)
        finally:
            self._sending.discard(chat)
            self._settled.add(chat)
        if sent:
            self.wake()  # the chat's next reply, if any, right away

    def _text(self, head: dict[str, Any]) -> str:
        if head["text_enc"] is None:
            return str(head["text_body"] or "")
        assert self.keyring is not None, "sealed reply and no keys"
        aad = reply_aad(
            head["instance_name"], head["remote_jid"], head["inbound_message_id"], head["seq"]
        )
        return self.keyring.open(head["text_enc"], aad).decode()

    async def _send(self, head: dict[str, Any]) -> bool:
        """One attempt; True if Evolution accepted it."""
        parent = _TRACE_CONTEXT.extract(
            {k: head[k] for k in ("traceparent", "tracestate") if head.get(k)}
        )
        tracer = self.telemetry.tracer
        with tracer.start_as_current_span(
            "reply whatsapp",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={"whatsapp.instance.name": head["instance_name"]},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            response: httpx.Response | None = None
            try:
                response = await self.evolution.send_text(
                    head["instance_name"], head["remote_jid"], self._text(head)
                )
            except httpx.HTTPStatusError as exc:
                response = exc.response
                kind = http_status_kind(response.status_code)
                error = str(response.status_code)
            except httpx.HTTPError as exc:
                kind, error = "transient", type(exc).__name__
            else:
                await self._mark(_SENT, (_message_key(response), head["id"]))
                self.telemetry.replied("sent")
                self.telemetry.reply_latency(time.time() - head["accepted_at"].timestamp(), span)
                return True
            span.set_status(StatusCode.ERROR, error)
            span.set_attribute("error.type", error)
            age = (datetime.now(UTC) - head["created_at"]).total_seconds()
            attempts = int(head["attempts"]) + 1
            s = self.settings
            if kind == "permanent" or attempts >= s.max_attempts or age >= s.budget_s:
                await self._mark(_FAILED, (error, head["id"]))
                self.telemetry.replied("failed")
                log.error(
                    "reply failed for good (%s) after %d attempt(s)",
                    error,
                    attempts,
                    extra={"error.type": error, "whatsapp.instance.name": head["instance_name"]},
                )
                return False
            delay = min(s.backoff_max, s.backoff_initial * 2 ** (attempts - 1))
            asked = retry_after(response)
            if asked is not None:
                delay = max(delay, min(asked, s.budget_s))
            await self._mark(_RETRY, (delay, error, head["id"]))
            self.telemetry.replied("retried")
            log.warning(
                "reply not accepted (%s); retrying in %.1fs",
                error,
                delay,
                extra={"error.type": error, "whatsapp.instance.name": head["instance_name"]},
            )
            return False

    async def _mark(self, sql: str, params: tuple[Any, ...]) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(sql, params)

    async def depth(self) -> tuple[int, float]:
        """Pending replies, and the age of the oldest, over every partition."""
        async with self.pool.connection(timeout=2.0) as conn:
            row = await (await conn.execute(_DEPTH)).fetchone()
        return (int(row[0]), float(row[1])) if row else (0, 0.0)


def _message_key(response: httpx.Response) -> str | None:
    """The id Evolution gave the sent message (receipts refer to it)."""
    try:
        body = response.json()
    except ValueError:
        return None
    key = body.get("key") if isinstance(body, dict) else None
    value = key.get("id") if isinstance(key, dict) else None
    return value[:256] if isinstance(value, str) else None
