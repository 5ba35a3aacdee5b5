"""Which clinic/organization a message belongs to.

Lookup order: ``healthcare.whatsapp_instances`` → the legacy
``healthcare.integrations`` rows of type ``whatsapp`` → the
``WHATSAPP_DEFAULT_INSTANCE`` setting. Each fallback is counted for every
message and logged once per instance and interval; a missing table is a
fallback, never a crash, and an unknown instance still gets its message stored
(as ``unresolved``).

Results are cached per instance name for ``WORKER_INSTANCE_CACHE_SECONDS``
(the tables change rarely, and a lookup per message was most of a message's
database time). :func:`listen_for_changes` drops the cache whenever the
tables change (migration 006 notifies ``wabot_instances_changed``), so a newly
registered or suspended instance takes effect at once; the TTL is the backstop
for a missed notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from psycopg import AsyncConnection, errors, sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("wabot.worker.instances")

Source = Literal["instance", "integration", "default", "unresolved"]

_BY_INSTANCE = (
    "SELECT id, organization_id, clinic_id, status FROM healthcare.whatsapp_instances "
    "WHERE instance_name = %s"
)
# Through a function (migration 008): the worker may not read the integrations
# table itself, which holds other integrations' secrets.
_BY_INTEGRATION = (
    "SELECT NULL::uuid, organization_id, clinic_id, 'active'"
    " FROM healthcare.whatsapp_integration(%s)"
)
_LOG_INTERVAL_S = 60.0

_Row = tuple[uuid.UUID | None, uuid.UUID | None, uuid.UUID | None, str]


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of resolving one instance name."""

    source: Source
    instance_name: str | None = None
    instance_id: uuid.UUID | None = None
    organization_id: uuid.UUID | None = None
    clinic_id: uuid.UUID | None = None
    status: str = "active"


class InstanceResolver:
    """Resolves instance names through a cache in front of the pool."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]],
        default_instance: str | None,
        cache_seconds: float,
    ) -> None:
        self.pool = pool
        self.default_instance = default_instance
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Resolution]] = {}
        self._logged: dict[tuple[str, str], float] = {}

    def invalidate(self) -> None:
        """Forget every cached resolution (the instance tables changed)."""
        self._cache.clear()

    def _once(self, kind: str, name: str) -> bool:
        # One line per instance and interval: a busy unregistered instance
        # used to write the same WARNING for every one of its messages.
        now = time.monotonic()
        if now - self._logged.get((kind, name), -1e9) < _LOG_INTERVAL_S:
            return False
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged[(kind, name)] = now
        return True

    async def _lookup(
        self, conn: AsyncConnection[TupleRow], query: str, name: str, table: str
    ) -> _Row | None:
        try:
            row = await (await conn.execute(query, (name,))).fetchone()
        except (errors.UndefinedTable, errors.UndefinedFunction):
            if self._once("missing", table):
                log.warning(
                    "table %s is missing; falling back (run `migrate`)",
                    table,
                    extra={"db.collection.name": table},
                )
            return None
        if row is None:
            return None
        return row[0], row[1], row[2], str(row[3])

    async def resolve(self, name: str) -> Resolution:
        """Resolve ``name``; database outages propagate (they are transient)."""
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.pool.connection() as conn:
            resolution = await self._resolve(conn, name)
        if self.cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[name] = (now + self.cache_seconds, resolution)
        return resolution

    async def _resolve(self, conn: AsyncConnection[TupleRow], name: str) -> Resolution:
        row = await self._lookup(conn, _BY_INSTANCE, name, "healthcare.whatsapp_instances")
        if row is not None:
            return Resolution("instance", name, *row)
        row = await self._lookup(conn, _BY_INTEGRATION, name, "healthcare.whatsapp_integration()")
        if row is not None:
            if self._once("integration", name):
                log.info(
                    "instance resolved from integrations (fallback)",
                    extra={"whatsapp.instance.name": name, "whatsapp.resolution": "integration"},
                )
            return Resolution("integration", name, *row)
        if self.default_instance:
            found = await self._lookup(
                conn, _BY_INSTANCE, self.default_instance, "healthcare.whatsapp_instances"
            )
            if self._once("default", name):
                log.info(
                    "instance not registered; using WHATSAPP_DEFAULT_INSTANCE (fallback)",
                    extra={"whatsapp.instance.name": name, "whatsapp.resolution": "default"},
                )
            return Resolution(
                "default", self.default_instance, *(found or (None, None, None, "active"))
            )
        if self._once("unresolved", name):
            log.warning(
                "instance not registered anywhere; storing its messages as unresolved",
                extra={"whatsapp.instance.name": name, "whatsapp.resolution": "unresolved"},
            )
        return Resolution("unresolved")


CHANGES_CHANNEL = "wabot_instances_changed"


async def listen_for_changes(
    dsn: str, resolver: InstanceResolver, stop: asyncio.Event, retry_max: float = 30.0
) -> None:
    """Drop ``resolver``'s cache on every change notification, until ``stop``.

    Reconnects with backoff; every (re)connection drops the cache too, since
    notifications sent while disconnected are lost.
    """
    delay = 0.5
    failing = False
    while not stop.is_set():
        try:
            conn = await AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
            async with conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANGES_CHANNEL)))
                resolver.invalidate()
                delay = 0.5
                if failing:
                    failing = False
                    log.warning("instance change listener reconnected")
                notifies = conn.notifies()
                while not stop.is_set():
                    waiter = asyncio.ensure_future(anext(notifies))
                    stopper = asyncio.ensure_future(stop.wait())
                    done, _ = await asyncio.wait(
                        {waiter, stopper}, return_when=asyncio.FIRST_COMPLETED
                    )
                    stopper.cancel()
                    if waiter not in done:
                        waiter.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await waiter
                        break
                    waiter.result()
                    resolver.invalidate()
        except Exception as exc:
            if not failing:
                failing = True
                # Until it reconnects, changes take effect within the cache TTL.
                log.warning(
                    "instance change listener disconnected (%s); retrying",
                    type(exc).__name__,
                    extra={"error.type": type(exc).__name__},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, retry_max)
