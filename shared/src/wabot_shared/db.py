"""PostgreSQL connection pool.

No instrumentation is attached: the contrib psycopg instrumentation records
the database's error messages in spans, and those can quote the data that
failed. The worker writes its own DB client spans (``wabot_worker.spans``).
"""

from __future__ import annotations

import logging

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)


async def open_pool(
    url: str, *, max_size: int, name: str, timeout: float = 10.0
) -> AsyncConnectionPool[AsyncConnection[TupleRow]]:
    """Open an autocommit pool without waiting for the database.

    Connections are made in the background, so a service starts (and reports
    not ready) while PostgreSQL is still down instead of crash-looping.
    """
    pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        name=name,
        open=False,
        kwargs={"autocommit": True, "application_name": name, "connect_timeout": 5},
        # psycopg_pool's reconnect backoff doubles without a cap; giving up
        # after 30 s makes the next request start a fresh attempt (1 s, 2 s, ...)
        # so recovery after a long outage takes seconds, not as long again.
        reconnect_timeout=30.0,
        timeout=timeout,
    )
    await pool.open(wait=False)
    return pool


async def ping(
    pool: AsyncConnectionPool[AsyncConnection[TupleRow]], timeout: float, query: str = "SELECT 1"
) -> None:
    """Run ``query`` (``SELECT 1``) on a pooled connection; raises on failure."""
    async with pool.connection(timeout=timeout) as conn:
        await conn.execute(query.encode())
