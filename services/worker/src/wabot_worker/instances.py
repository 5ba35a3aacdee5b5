"""Which clinic/organization a message belongs to.

Lookup order: ``healthcare.whatsapp_instances`` → the legacy
``healthcare.integrations`` rows of type ``whatsapp`` → the
``WHATSAPP_DEFAULT_INSTANCE`` setting. Each fallback is logged and counted; a
missing table is a fallback, never a crash, and an unknown instance still gets
its message stored (as ``unresolved``).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from psycopg import AsyncConnection, errors
from psycopg.rows import TupleRow

log = logging.getLogger("wabot.worker.instances")

Source = Literal["instance", "integration", "default", "unresolved"]

_BY_INSTANCE = (
    "SELECT id, organization_id, clinic_id FROM healthcare.whatsapp_instances "
    "WHERE instance_name = %s"
)
_BY_INTEGRATION = (
    "SELECT NULL::uuid, organization_id, clinic_id FROM healthcare.integrations "
    "WHERE type = 'whatsapp' AND config ->> 'instance_name' = %s "
    "ORDER BY created_at, id LIMIT 1"
)
_MISSING_TABLE_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of resolving one instance name."""

    source: Source
    instance_name: str | None = None
    instance_id: uuid.UUID | None = None
    organization_id: uuid.UUID | None = None
    clinic_id: uuid.UUID | None = None


class InstanceResolver:
    """Resolves instance names on a pooled (autocommit) connection."""

    def __init__(self, default_instance: str | None) -> None:
        self.default_instance = default_instance
        self._missing_logged: dict[str, float] = {}

    def _missing_table(self, table: str) -> None:
        now = time.monotonic()
        if now - self._missing_logged.get(table, -1e9) >= _MISSING_TABLE_LOG_INTERVAL_S:
            self._missing_logged[table] = now
            log.warning(
                "table %s is missing; falling back (run `migrate`)",
                table,
                extra={"db.collection.name": table},
            )

    async def _lookup(
        self, conn: AsyncConnection[TupleRow], query: str, name: str, table: str
    ) -> tuple[uuid.UUID | None, uuid.UUID | None, uuid.UUID | None] | None:
        try:
            # A savepoint-free autocommit statement: a missing table only fails this query.
            row = await (await conn.execute(query, (name,))).fetchone()
        except errors.UndefinedTable:
            self._missing_table(table)
            return None
        if row is None:
            return None
        return row[0], row[1], row[2]

    async def resolve(self, conn: AsyncConnection[TupleRow], name: str) -> Resolution:
        """Resolve ``name``; database outages propagate (they are transient)."""
        row = await self._lookup(conn, _BY_INSTANCE, name, "healthcare.whatsapp_instances")
        if row is not None:
            return Resolution("instance", name, *row)
        row = await self._lookup(conn, _BY_INTEGRATION, name, "healthcare.integrations")
        if row is not None:
            log.info(
                "instance resolved from integrations (fallback)",
                extra={"whatsapp.instance.name": name, "whatsapp.resolution": "integration"},
            )
            return Resolution("integration", name, *row)
        if self.default_instance:
            found = await self._lookup(
                conn, _BY_INSTANCE, self.default_instance, "healthcare.whatsapp_instances"
            )
            log.info(
                "instance not registered; using WHATSAPP_DEFAULT_INSTANCE (fallback)",
                extra={"whatsapp.instance.name": name, "whatsapp.resolution": "default"},
            )
            return Resolution("default", self.default_instance, *(found or (None, None, None)))
        log.warning(
            "instance not registered anywhere; storing message as unresolved",
            extra={"whatsapp.instance.name": name, "whatsapp.resolution": "unresolved"},
        )
        return Resolution("unresolved")
