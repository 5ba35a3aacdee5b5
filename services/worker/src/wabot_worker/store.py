"""Idempotent storage of chat events, with group commit.

Chats hand their rounds (a chat's next events, in order) to the store; a
flusher writes everything handed in meanwhile in one transaction, one round
trip (psycopg pipeline mode), so thousands of chats cost a few commits rather
than one each. A message's row, its replies (the outbox) and its chat's
handler state are one statement, so they commit together or not at all.

A failed transaction is replayed round by round, each entry in its own
transaction and stopping at a round's first failure, so one bad entry fails
only itself and never lets a chat's later event be stored before it. When an
entry fails with a transient error, a probe tells a database that is down
(every round then fails at once, without waiting for each) from one that is
up and refuses this entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.semconv.attributes import db_attributes as db
from opentelemetry.util.types import AttributeValue
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from wabot_shared.failures import Failure, classify
from wabot_worker.spans import record_children

log = logging.getLogger("wabot.worker.store")

TABLE = "healthcare.whatsapp_messages"
# Healthy = reachable *and* migrated: the tables and every column written
# exist (read from the catalog: the worker may not SELECT content columns).
_SCHEMA_PROBE = (
    "SELECT count(*) FROM information_schema.columns"
    " WHERE table_schema = 'healthcare' AND table_name = 'whatsapp_messages'"
    " AND column_name = ANY(%s)"
)
MESSAGE_COLUMNS = (
    "instance_name",
    "remote_jid",
    "from_me",
    "message_id",
    "participant",
    "push_name",
    "message_type",
    "text_body",
    "raw_payload",
    "message_timestamp",
    "resolution",
    "resolved_instance",
    "instance_id",
    "organization_id",
    "clinic_id",
    "trace_id",
    "stream_id",
    "received_at",
    "parse_issues",
    "text_body_enc",
    "push_name_enc",
    "raw_payload_enc",
    "content_key_id",
    "media_id",
)
_PROBE_TIMEOUT_S = 1.0
_PROBE_CACHE_S = 0.5


class SchemaNotMigrated(Exception):
    """The message table or one of its columns is missing: run ``migrate``."""


async def probe_schema(conn: AsyncConnection[TupleRow]) -> None:
    """Raise :class:`SchemaNotMigrated` unless every written column exists."""
    row = await (await conn.execute(_SCHEMA_PROBE, (list(MESSAGE_COLUMNS),))).fetchone()
    if row is None or row[0] != len(MESSAGE_COLUMNS):
        raise SchemaNotMigrated(f"{TABLE} lacks columns; run `migrate`")


@dataclass(frozen=True, slots=True)
class Bulk:
    """How consecutive single-row inserts of one kind become one statement:
    ``sql`` takes the rows as one JSON array of arrays (each row's values in
    the single-row statement's order) and returns the ``key`` columns of the
    rows it inserted, the first ``key`` values of a row."""

    sql: str
    key: int


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement of an entry; ``returns``: its first row says whether
    it inserted (``RETURNING``); ``bulk``: how a run of such statements is
    sent as one."""

    sql: str
    params: Sequence[Any] | Mapping[str, Any]
    returns: bool = False
    bulk: Bulk | None = None


@dataclass(slots=True)
class Write:
    """What one stream entry writes, named for its trace (``operation``)."""

    statements: list[Statement]
    span: trace.Span
    operation: str
    collection: str
    instance_id: uuid.UUID | None = None


@dataclass(slots=True)
class Written:
    """The outcome of one round: per entry of the committed prefix, whether its
    returning statement inserted (None: it has none); then the failure of the
    next entry, if any."""

    inserted: list[bool | None]
    failure: Failure | None = None


@dataclass(slots=True)
class _Round:
    writes: list[Write]
    done: asyncio.Future[Written] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


async def _execute(conn: AsyncConnection[TupleRow], writes: Sequence[Write]) -> list[bool | None]:
    """Every statement of ``writes`` in one round trip, in order; a run of
    consecutive bulk-able inserts (the common case: messages) as one statement."""
    cursors: list[tuple[int, Any]] = []
    bulks: list[tuple[list[int], list[tuple[Any, ...]], Any]] = []
    async with conn.pipeline() as pipe:
        index = 0
        while index < len(writes):
            run = _bulk_run(writes, index)
            if len(run) > 1:
                bulk = writes[index].statements[0].bulk
                assert bulk is not None
                rows = [tuple(writes[i].statements[0].params) for i in run]
                cursor = await conn.execute(bulk.sql, (orjson.dumps(rows).decode(),))
                bulks.append((run, [row[: bulk.key] for row in rows], cursor))
                index += len(run)
                continue
            for statement in writes[index].statements:
                cursor = await conn.execute(statement.sql, statement.params)
                if statement.returns:
                    cursors.append((index, cursor))
            index += 1
        await pipe.sync()
    results: list[bool | None] = [None] * len(writes)
    for index, cursor in cursors:
        if results[index] is None:
            results[index] = await cursor.fetchone() is not None
    for run, keys, cursor in bulks:
        # A row conflicting with an earlier one of the same statement is
        # skipped, so the first row of each key inserted is the one stored.
        new = {tuple(row) for row in await cursor.fetchall()}
        for i, key in zip(run, keys, strict=True):
            results[i] = key in new
            new.discard(key)
    return results


def _bulk_run(writes: Sequence[Write], start: int) -> list[int]:
    """The indexes of the run of single bulk-able statements from ``start``."""
    first = writes[start].statements
    if len(first) != 1 or first[0].bulk is None:
        return [start]
    bulk = first[0].bulk
    end = start + 1
    while end < len(writes):
        statements = writes[end].statements
        if len(statements) != 1 or statements[0].bulk is not bulk:
            break
        end += 1
    return list(range(start, end))


class MessageStore:
    """Group-committing writer of chat events; run :meth:`run` as a task."""

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
        self._db = db_attributes
        self._queue: deque[_Round] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        # Instances that received messages; the maintenance task touches their
        # last_seen_at in one statement instead of once per message.
        self.seen_instances: set[uuid.UUID] = set()
        self.last_commit = time.monotonic()
        self._probed_at = -1e9
        self._probe_ok = False

    async def write(self, writes: list[Write]) -> Written:
        """Store one round of a chat's entries, in order; never raises."""
        if not writes:
            return Written([])
        round_ = _Round(writes)
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
            while self._queue and (
                not rounds or count + len(self._queue[0].writes) <= self.max_rows
            ):
                round_ = self._queue.popleft()
                rounds.append(round_)
                count += len(round_.writes)
            await self._flush(rounds)

    def _spans(
        self, writes: Sequence[Write], start_ns: int, end_ns: int, failure: Failure | None = None
    ) -> None:
        batch = len(writes)
        by_operation: dict[tuple[str, str], list[Write]] = {}
        for write in writes:
            by_operation.setdefault((write.operation, write.collection), []).append(write)
        for (operation, collection), group in by_operation.items():
            attrs: dict[str, AttributeValue] = {
                **self._db,
                db.DB_OPERATION_NAME: operation,
                db.DB_COLLECTION_NAME: collection,
                db.DB_QUERY_SUMMARY: f"{operation} {collection}",
            }
            if batch > 1:
                attrs[db.DB_OPERATION_BATCH_SIZE] = batch
            record_children(
                self.tracer,
                (w.span for w in group),
                f"{operation} {collection}",
                attrs,
                start_ns=start_ns,
                end_ns=end_ns,
                failure=failure,
            )

    async def _flush(self, rounds: list[_Round]) -> None:
        writes = [w for round_ in rounds for w in round_.writes]
        started = time.time_ns()
        try:
            async with self.pool.connection() as conn, conn.transaction():
                inserted = await _execute(conn, writes)
        except Exception as exc:
            failure = classify(exc)
            log.warning(
                "batch insert failed; retrying entry by entry",
                extra={
                    "error.type": failure.error_type,
                    "db.response.status_code": failure.code,
                    "db.operation.batch.size": len(writes),
                },
            )
            await self._replay(rounds)
            return
        self._spans(writes, started, time.time_ns())
        self._committed(writes, inserted)
        offset = 0
        for round_ in rounds:
            n = len(round_.writes)
            _resolve(round_, Written(inserted[offset : offset + n]))
            offset += n

    async def _write_one(self, write: Write) -> bool | None:
        started = time.time_ns()
        try:
            async with self.pool.connection() as conn, conn.transaction():
                [inserted] = await _execute(conn, [write])
        except Exception as exc:
            self._spans([write], started, time.time_ns(), classify(exc))
            raise
        self._spans([write], started, time.time_ns())
        self._committed([write], [inserted])
        return inserted

    async def probe(self) -> bool:
        """Whether the tables entries go to answer (cached for a moment):
        reachable *and* migrated, or every entry fails alike and none is to blame."""
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
            inserted: list[bool | None] = []
            failure: Failure | None = None
            for write in round_.writes:
                try:
                    inserted.append(await self._write_one(write))
                except Exception as exc:
                    failure = classify(exc)
                    break
            if failure is not None and failure.transient and not await self.probe():
                # Down for this entry as for the batch: an outage, not one bad entry.
                for rest in rounds[index:]:
                    _resolve(rest, Written([] if rest is not round_ else inserted, failure))
                return
            _resolve(round_, Written(inserted, failure))

    def _committed(self, writes: Sequence[Write], inserted: Sequence[bool | None]) -> None:
        self.last_commit = time.monotonic()
        for write, new in zip(writes, inserted, strict=True):
            if new and write.instance_id is not None:
                self.seen_instances.add(write.instance_id)


def _resolve(round_: _Round, written: Written) -> None:
    if not round_.done.done():
        round_.done.set_result(written)
