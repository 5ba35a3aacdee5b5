"""Idempotent storage of processed messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from wabot_worker.instances import Resolution
from wabot_worker.message import InboundMessage, without_nul

_INSERT = """
INSERT INTO healthcare.whatsapp_messages (
    instance_name, remote_jid, from_me, message_id, participant, push_name,
    message_type, text_body, raw_payload, message_timestamp, resolution,
    resolved_instance, instance_id, organization_id, clinic_id, trace_id,
    stream_id, received_at
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (instance_name, remote_jid, from_me, message_id) DO NOTHING
RETURNING id
"""

# Throttled so a busy instance does not rewrite its row on every message.
_TOUCH_INSTANCE = """
UPDATE healthcare.whatsapp_instances SET last_seen_at = now()
WHERE id = %s AND (last_seen_at IS NULL OR last_seen_at < now() - interval '30 seconds')
"""


def _json_safe(node: Any) -> Any:
    if isinstance(node, str):
        return without_nul(node)
    if isinstance(node, dict):
        return {without_nul(str(k)): _json_safe(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_json_safe(v) for v in node]
    return node


async def insert_message(
    conn: AsyncConnection[TupleRow],
    message: InboundMessage,
    resolution: Resolution,
    *,
    trace_id: str | None,
    stream_id: str,
    received_at: datetime,
) -> bool:
    """Insert one message in its own transaction; False if it was already stored."""
    async with conn.transaction():
        cursor = await conn.execute(
            _INSERT,
            (
                message.instance_name,
                message.remote_jid,
                message.from_me,
                message.message_id,
                message.participant,
                message.push_name,
                message.message_type,
                message.text_body,
                # jsonb cannot hold U+0000 either (the JSON escape is how it arrives).
                Jsonb(_json_safe(message.raw) if "\\u0000" in message.raw_json else message.raw),
                message.message_timestamp,
                resolution.source,
                resolution.instance_name,
                resolution.instance_id,
                resolution.organization_id,
                resolution.clinic_id,
                trace_id,
                stream_id,
                received_at,
            ),
        )
        inserted = await cursor.fetchone() is not None
        if inserted and resolution.instance_id is not None:
            await conn.execute(_TOUCH_INSTANCE, (resolution.instance_id,))
    return inserted
