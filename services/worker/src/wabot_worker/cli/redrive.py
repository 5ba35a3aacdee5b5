"""``wabot redrive`` (also ``worker redrive``): dead letters back onto the stream.

The entries go back to their partitions with their original fields, trace
context included, so each is processed in its original trace.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from wabot_shared import audit
from wabot_shared.queue import StreamQueue, connect
from wabot_worker.settings import WorkerSettings

log = logging.getLogger("wabot.cli")


async def redrive(settings: WorkerSettings, count: int, ids: list[str]) -> dict[str, Any]:
    """Move dead letters back; returns what moved (also audited)."""
    client = connect(settings.redis_url.get_secret_value(), socket_connect_timeout=2.0)
    queue = StreamQueue(
        client, settings.stream_name, settings.consumer_group, settings.stream_partitions
    )
    try:
        moved = await queue.redrive(count, ids or None)
    finally:
        await client.aclose()
    summary: dict[str, Any] = {"redriven": len(moved), "new_ids": moved}
    try:
        with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
            audit.record(conn, "redrive", audit.operator(), {"redriven": len(moved)})
    except psycopg.Error as exc:
        # The entries moved either way; say that the audit row is missing.
        log.error("redrive not audited (%s)", type(exc).__name__)
        summary["audited"] = False
    log.info("re-drove %d dead-lettered message(s)", len(moved), extra={"new_ids": moved})
    return summary
