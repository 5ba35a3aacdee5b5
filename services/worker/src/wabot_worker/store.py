"""Idempotent storage of messages, with group commit.

Chats hand their rounds (a chat's next messages, in order) to the store; a
flusher writes everything handed in meanwhile in one transaction, one round
trip (psycopg pipeline mode), so thousands of chats cost a few commits rather
than one each. A failed transaction is replayed round by round, each row in
its own transaction and stopping at a round's first failure, so one bad row
fails only its own message and never lets a chat's later message be stored
before it. When a row fails with a transient error, a probe (``SELECT 1``)
tells a database that is down (every round then fails at once, without
waiting for each) from one that is up and refuses this row.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.semconv.attributes import db_attributes as db
from opentelemetry.util.types import AttributeValue
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from wabot_shared.content import RowContent
from wabot_shared.failures import Failure, classify
from wabot_shared.message import Message
from wabot_worker.instances import Resolution
from wabot_worker.spans import record_children

log = logging.getLogger("wabot.worker.store")

TABLE = "healthcare.whatsapp_messages"
_COLUMNS = (
    "instance_name, remote_jid, from_me, message_id, participant, push_name,"
    " message_type, text_body, raw_payload, message_timestamp, resolution,"
    " resolved_instance, instance_id, organization_id, clinic_id, trace_id,"
    " stream_id, received_at, parse_issues, text_body_enc, push_name_enc,"
    " raw_payload_enc, content_key_id"
)
# Healthy = reachable *and* migrated: the table and every column written
# exist (read from the catalog: the worker may not SELECT content columns).
_SCHEMA_PROBE = (
    "SELECT count(*) FROM information_schema.columns"
    " WHERE table_schema = 'healthcare' AND table_name = 'whatsapp_messages'"
    " AND column_name = ANY(%s)"
)
_COLUMN_NAMES = [c.strip() for c in _COLUMNS.split(",")]


class SchemaNotMigrated(Exception):
    """The message table or one of its columns is missing: run ``migrate``."""


async def probe_schema(conn: AsyncConnection[TupleRow]) -> None:
    """Raise :class:`SchemaNotMigrated` unless every written column exists."""
    row = await (await conn.execute(_SCHEMA_PROBE, (_COLUMN_NAMES,))).fetchone()
    if row is None or row[0] != len(_COLUMN_NAMES):
        raise SchemaNotMigrated(f"{TABLE} lacks columns; run `migrate`")


_INSERT = f"""
INSERT INTO {TABLE} ({_COLUMNS})
VALUES (
    %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
    %s, %s, %s, %s
)
ON CONFLICT (instance_name, remote_jid, from_me, message_id) DO NOTHING
RETURNING id
"""
_INSERT_SPAN = f"INSERT {TABLE}"

_PROBE_TIMEOUT_S = 1.0
_PROBE_CACHE_S = 0.5


@dataclass(slots=True)
class Row:
    """One message to store, with what was learnt while handling it."""

    message: Message
    content: RowContent
    resolution: Resolution
    trace_id: str | None
    stream_id: str
    received_at: datetime
    span: trace.Span

    def params(self) -> tuple[Any, ...]:
        m, r, c = self.message, self.resolution, self.content
        return (
            m.instance,
            m.remote_jid,
            m.from_me,
            m.message_id,
            m.participant,
            c.push_name,
            m.message_type,
            c.text_body,
            c.raw_payload,
            m.timestamp,
            r.source,
            r.instance_name,
            r.instance_id,
            r.organization_id,
            r.clinic_id,
            self.trace_id,
            self.stream_id,
            self.received_at,
            sorted(m.issues),
            c.text_body_enc,
            c.push_name_enc,
            c.raw_payload_enc,
            c.key_id,
        )


@dataclass(slots=True)
class Written:
    """The outcome of one round: rows ``inserted`` (False = already stored)
    for the committed prefix, then the failure of the next row, if any."""

    inserted: list[bool]
    failure: Failure | None = None


@dataclass(slots=True)
class _Round:
    rows: list[Row]
    done: asyncio.Future[Written] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MessageStore:
    """Group-committing writer of message rows; run :meth:`run` as a task."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        tracer: trace.Tracer,
        db_attributes: dict[str, AttributeValue],
        max_rows: int,
        flushers: int = 2,
    ) -> None:
        self.pool = pool
        self.tracer = tracer
        self.max_rows = max_rows
        self.flushers = flushers
        self._attrs = {
            **db_attributes,
            db.DB_OPERATION_NAME: "INSERT",
            db.DB_COLLECTION_NAME: TABLE,
            db.DB_QUERY_SUMMARY: _INSERT_SPAN,
        }
        self._queue: deque[_Round] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        # Instances that received messages; the maintenance task touches their
        # last_seen_at in one statement instead of once per message.
        self.seen_instances: set[uuid.UUID] = set()
        self.last_commit = time.monotonic()
        self._probed_at = -1e9
        self._probe_ok = False

    async def write(self, rows: list[Row]) -> Written:
        """Store one round of a chat's rows, in order; never raises."""
        if not rows:
            return Written([])
        round_ = _Round(rows)
        self._queue.append(round_)
        self._wakeup.set()
        return await round_.done

    async def run(self) -> None:
        """Flush until :meth:`close`; several flushers overlap round trips."""
        await asyncio.gather(*(self._flusher() for _ in range(self.flushers)))

    def close(self) -> None:
        """Stop once everything handed in is written."""
        self._closing = True
        self._wakeup.set()

    async def _flusher(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            rounds: list[_Round] = []
            count = 0
            while self._queue and (not rounds or count + len(self._queue[0].rows) <= self.max_rows):
                round_ = self._queue.popleft()
                rounds.append(round_)
                count += len(round_.rows)
            await self._flush(rounds)

    async def _flush(self, rounds: list[_Round]) -> None:
        rows = [row for round_ in rounds for row in round_.rows]
        started = time.time_ns()
        try:
            inserted = await self._insert_all(rows)
        except Exception as exc:
            failure = classify(exc)
            log.warning(
                "batch insert failed; retrying row by row",
                extra={
                    "error.type": failure.error_type,
                    "db.response.status_code": failure.code,
                    "db.operation.batch.size": len(rows),
                },
            )
            await self._replay(rounds)
            return
        ended = time.time_ns()
        attrs = dict(self._attrs)
        if len(rows) > 1:
            attrs[db.DB_OPERATION_BATCH_SIZE] = len(rows)
        record_children(
            self.tracer, (r.span for r in rows), _INSERT_SPAN, attrs, start_ns=started, end_ns=ended
        )
        self._committed(rows, inserted)
        offset = 0
        for round_ in rounds:
            n = len(round_.rows)
            _resolve(round_, Written(inserted[offset : offset + n]))
            offset += n

    async def _insert_all(self, rows: list[Row]) -> list[bool]:
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_INSERT, [r.params() for r in rows], returning=True)
            inserted: list[bool] = []
            while True:
                inserted.append(await cur.fetchone() is not None)
                if not cur.nextset():
                    break
        return inserted

    async def _insert_one(self, row: Row) -> bool:
        started = time.time_ns()
        try:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(_INSERT, row.params())
                inserted = await cursor.fetchone() is not None
        except Exception as exc:
            failure = classify(exc)
            record_children(
                self.tracer,
                [row.span],
                _INSERT_SPAN,
                self._attrs,
                start_ns=started,
                end_ns=time.time_ns(),
                failure=failure,
            )
            raise
        record_children(
            self.tracer,
            [row.span],
            _INSERT_SPAN,
            self._attrs,
            start_ns=started,
            end_ns=time.time_ns(),
        )
        self._committed([row], [inserted])
        return inserted

    async def probe(self) -> bool:
        """Whether the table rows go to answers (cached for a moment): reachable
        *and* migrated, or every row fails alike and none is to blame."""
        now = time.monotonic()
        if now - self._probed_at < _PROBE_CACHE_S:
            return self._probe_ok
        try:
            async with self.pool.connection(timeout=_PROBE_TIMEOUT_S) as conn:
                await probe_schema(conn)
            ok = True
        except Exception:
            ok = False
        self._probed_at, self._probe_ok = time.monotonic(), ok
        return ok

    async def _replay(self, rounds: list[_Round]) -> None:
        for index, round_ in enumerate(rounds):
            inserted: list[bool] = []
            failure: Failure | None = None
            for row in round_.rows:
                try:
                    inserted.append(await self._insert_one(row))
                except Exception as exc:
                    failure = classify(exc)
                    break
            if failure is not None and failure.transient and not await self.probe():
                # Down for this row as for the batch: an outage, not one bad row.
                for rest in rounds[index:]:
                    _resolve(rest, Written([] if rest is not round_ else inserted, failure))
                return
            _resolve(round_, Written(inserted, failure))

    def _committed(self, rows: list[Row], inserted: list[bool]) -> None:
        self.last_commit = time.monotonic()
        for row, new in zip(rows, inserted, strict=True):
            if new and row.resolution.instance_id is not None:
                self.seen_instances.add(row.resolution.instance_id)


def _resolve(round_: _Round, written: Written) -> None:
    if not round_.done.done():
        round_.done.set_result(written)
