"""``wabot redrive-replies``: failed replies back to pending, to be sent again.

A reply fails for good on a 4xx from Evolution or past its attempt or time
budget (``REPLY_MAX_ATTEMPTS``, ``REPLY_BUDGET``). Once the cause is fixed (a
disconnected instance reconnected, a wrong number format), this puts them
back: oldest first, or the given outbox ids, or one chat's.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from wabot_shared import audit
from wabot_worker.settings import WorkerSettings

log = logging.getLogger("wabot.cli")

_REDRIVE = """
UPDATE healthcare.whatsapp_outbox
   SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL,
       created_at = now()
 WHERE id IN (
    SELECT id FROM healthcare.whatsapp_outbox
     WHERE status = 'failed'
       AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
       AND (%(chat)s::text IS NULL OR remote_jid = %(chat)s)
     ORDER BY id
     LIMIT %(count)s)
RETURNING id
"""


def redrive_replies(
    settings: WorkerSettings, count: int, ids: list[int], chat: str | None
) -> dict[str, Any]:
    """Put failed replies back; returns how many (also audited)."""
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        rows = conn.execute(_REDRIVE, {"ids": ids or None, "chat": chat, "count": count}).fetchall()
        moved = [int(r[0]) for r in rows]
        audit.record(
            conn,
            "redrive_replies",
            audit.operator(),
            {"replies": len(moved), "by_id": bool(ids), "by_chat": chat is not None},
        )
    log.info("re-drove %d failed repl(ies)", len(moved))
    return {"redriven": len(moved), "ids": moved}
