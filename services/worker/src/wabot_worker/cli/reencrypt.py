"""``wabot reencrypt``: move sealed content to the current key.

Rows whose content is sealed with any key but the first of
``MESSAGE_ENCRYPTION_KEYS`` (or stored in clear, from before keys were set)
are resealed with it, one bounded batch per transaction, so the command can
be stopped and run again at any point. Dead letters are resealed too (as new
entries; their ``original_id`` is kept). Once it reports nothing left, the
old key can be removed from the setting.

Run it with the owning database role (like ``migrate``): the services' role
may not rewrite stored content.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.rows import dict_row

from wabot_shared import audit, names
from wabot_shared.content import open_payload, open_row, seal_payload, seal_row
from wabot_shared.crypto import Keyring
from wabot_shared.jsonbody import dumps
from wabot_shared.queue import StreamQueue, connect
from wabot_worker.settings import WorkerSettings

log = logging.getLogger("wabot.cli")

_SELECT = """
SELECT id, instance_name, remote_jid, from_me, message_id, text_body, push_name,
       raw_payload, text_body_enc, push_name_enc, raw_payload_enc, content_key_id
  FROM healthcare.whatsapp_messages
 WHERE content_purged_at IS NULL
   AND (content_key_id IS DISTINCT FROM %(key)s)
   AND (content_key_id IS NOT NULL OR raw_payload IS NOT NULL)
 ORDER BY id
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED
"""
_UPDATE = """
UPDATE healthcare.whatsapp_messages
   SET text_body = NULL, push_name = NULL, raw_payload = NULL,
       text_body_enc = %s, push_name_enc = %s, raw_payload_enc = %s, content_key_id = %s
 WHERE id = %s
"""


def _rows(dsn: str, keyring: Keyring, batch: int, max_batches: int) -> int:
    moved = 0
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        for _ in range(max_batches):
            with conn.transaction():
                rows = conn.execute(_SELECT, {"key": keyring.primary, "limit": batch}).fetchall()
                for row in rows:
                    clear = open_row(keyring, row)
                    raw = clear["raw_payload"]
                    sealed = seal_row(
                        keyring,
                        (
                            row["instance_name"],
                            row["remote_jid"],
                            row["from_me"],
                            row["message_id"],
                        ),
                        clear["text_body"],
                        clear["push_name"],
                        dumps(raw) if raw is not None else "null",
                    )
                    conn.execute(
                        _UPDATE,
                        (
                            sealed.text_body_enc,
                            sealed.push_name_enc,
                            sealed.raw_payload_enc,
                            sealed.key_id,
                            row["id"],
                        ),
                    )
            moved += len(rows)
            if len(rows) < batch:
                break
    return moved


async def _dead_letters(settings: WorkerSettings, keyring: Keyring) -> int:
    client = connect(settings.redis_url.get_secret_value(), socket_connect_timeout=2.0)
    queue = StreamQueue(
        client, settings.stream_name, settings.consumer_group, settings.stream_partitions
    )
    moved = 0
    try:
        async for entry_id, fields in queue.scan(queue.dead_stream):
            payload = fields.get(names.FIELD_PAYLOAD)
            if payload is None or Keyring.key_id_of(payload) == keyring.primary:
                continue
            clear = open_payload(keyring, payload)
            resealed = {**fields, names.FIELD_PAYLOAD: seal_payload(keyring, clear)}
            async with client.pipeline(transaction=True) as pipe:
                pipe.xadd(queue.dead_stream, dict(resealed.items()))
                pipe.xdel(queue.dead_stream, entry_id)
                await pipe.execute()
            moved += 1
    finally:
        await client.aclose()
    return moved


async def reencrypt(settings: WorkerSettings, batch: int, max_batches: int) -> dict[str, Any]:
    """Reseal everything under the current key; returns the counts."""
    keyring = settings.keyring()
    if keyring is None:
        raise SystemExit("wabot reencrypt: MESSAGE_ENCRYPTION_KEYS is not set")
    dsn = settings.database_url.get_secret_value()
    rows = _rows(dsn, keyring, batch, max_batches)
    dead = await _dead_letters(settings, keyring)
    summary: dict[str, Any] = {"rows": rows, "dead_letters": dead, "key_id": keyring.primary}
    with psycopg.connect(dsn, autocommit=True) as conn:
        remaining = conn.execute(
            "SELECT count(*) FROM healthcare.whatsapp_messages WHERE content_purged_at IS NULL"
            " AND content_key_id IS DISTINCT FROM %s"
            " AND (content_key_id IS NOT NULL OR raw_payload IS NOT NULL)",
            (keyring.primary,),
        ).fetchone()
        summary["remaining"] = int(remaining[0]) if remaining else 0
        audit.record(conn, "reencrypt", audit.operator(), summary)
    log.info("reencrypted", extra={"entries": rows + dead})
    return summary
