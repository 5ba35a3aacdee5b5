"""The append-only audit log (``healthcare.audit_log``, migration 008).

Erase, redrive, reencrypt and purge runs, and each operator read of a
message's content, write one row: when, who (the
operator named by ``WABOT_OPERATOR``, else the login name; or the service),
and counts. Never message content or phone numbers.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from typing import Any, Literal

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

Action = Literal["erase", "redrive", "redrive_replies", "reencrypt", "purge", "read_content"]
_INSERT = "INSERT INTO healthcare.audit_log (action, operator, details) VALUES (%s, %s, %s)"


def operator() -> str:
    """Who is running an operator command."""
    named = os.environ.get("WABOT_OPERATOR", "").strip()
    if named:
        return named[:200]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record(
    conn: psycopg.Connection[Any], action: Action, who: str, details: Mapping[str, Any]
) -> None:
    """Append one audit row (synchronously, for the CLI)."""
    conn.execute(_INSERT, (action, who, Jsonb(dict(details))))


async def record_async(
    conn: AsyncConnection[TupleRow], action: Action, who: str, details: Mapping[str, Any]
) -> None:
    """Append one audit row (from a service)."""
    await conn.execute(_INSERT, (action, who, Jsonb(dict(details))))
