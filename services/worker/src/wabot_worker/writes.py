"""What each chat event writes (the statements :mod:`wabot_worker.store` runs).

A message is one statement: its row, and only if the row is new, its replies
(the outbox) and its chat's handler state, so they commit together or not at
all. Receipts, edits and deletions are recorded against the messages and
replies they refer to. Content (texts, state) is sealed like the messages'.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from opentelemetry import trace

from wabot_shared.content import RowContent
from wabot_shared.crypto import Keyring
from wabot_shared.message import Deletion, Edit, Message, Receipt
from wabot_worker.instances import Resolution
from wabot_worker.store import MESSAGE_COLUMNS, TABLE, Bulk, Statement, Write

OUTBOX = "healthcare.whatsapp_outbox"
RECEIPTS = "healthcare.whatsapp_receipts"
EDITS = "healthcare.whatsapp_message_edits"
STATE = "healthcare.chat_state"

# parse_issues travels as a JSON array (as in the bulk statement below, where
# arrays of arrays would not unnest row by row).
_ISSUES = "ARRAY(SELECT jsonb_array_elements_text({}::jsonb))"
_VALUES = ", ".join(
    "%s::jsonb" if c == "raw_payload" else _ISSUES.format("%s") if c == "parse_issues" else "%s"
    for c in MESSAGE_COLUMNS
)
_INSERT_MESSAGE = (
    f"INSERT INTO {TABLE} ({', '.join(MESSAGE_COLUMNS)}) VALUES ({_VALUES})"
    " ON CONFLICT (instance_name, remote_jid, from_me, message_id) DO NOTHING RETURNING id"
)
# Many messages as one statement: the rows travel as one JSON array of
# arrays (orjson, in C) and PostgreSQL takes them apart, instead of psycopg
# dumping 24 arrays element by element in Python (about 50 µs a message).
_COLUMN_TYPES = {
    "from_me": "boolean",
    "message_timestamp": "timestamptz",
    "received_at": "timestamptz",
    "instance_id": "uuid",
    "organization_id": "uuid",
    "clinic_id": "uuid",
    "media_id": "uuid",
    "raw_payload": "jsonb",
}
_IDENTITY = "instance_name, remote_jid, from_me, message_id"


def _column_value(index: int, column: str) -> str:
    value = f"(u.r->>{index})"
    if column == "parse_issues":
        return _ISSUES.format(value)
    kind = _COLUMN_TYPES.get(column)
    return f"{value}::{kind}" if kind else value


_BULK_MESSAGES = Bulk(
    f"INSERT INTO {TABLE} ({', '.join(MESSAGE_COLUMNS)})"
    f" SELECT {', '.join(_column_value(i, c) for i, c in enumerate(MESSAGE_COLUMNS))}"
    " FROM json_array_elements(%s::json) WITH ORDINALITY AS u(r, ord) ORDER BY u.ord"
    f" ON CONFLICT ({_IDENTITY}) DO NOTHING RETURNING {_IDENTITY}",
    key=4,
)
_WITH_REPLIES = f"""
WITH m AS ({_INSERT_MESSAGE}),
o AS (
    INSERT INTO {OUTBOX} (instance_name, remote_jid, partition, organization_id,
        message_row_id, inbound_message_id, seq, text_body, text_enc, content_key_id,
        traceparent, tracestate, accepted_at)
    SELECT %s, %s, %s, %s, m.id, %s, r.seq, r.text_body, r.text_enc, %s, %s, %s, %s
      FROM m, unnest(%s::text[], %s::text[]) WITH ORDINALITY AS r(text_body, text_enc, seq)
),
s AS (
    INSERT INTO {STATE} (instance_name, remote_jid, state, state_enc, content_key_id)
    SELECT %s, %s, %s::jsonb, %s, %s FROM m WHERE %s
    ON CONFLICT (instance_name, remote_jid) DO UPDATE
       SET state = EXCLUDED.state, state_enc = EXCLUDED.state_enc,
           content_key_id = EXCLUDED.content_key_id, updated_at = now()
)
SELECT id FROM m
"""
_INSERT_RECEIPT = (
    f"INSERT INTO {RECEIPTS} (instance_name, remote_jid, from_me, message_id, status,"
    " stream_id, received_at, organization_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (instance_name, remote_jid, from_me, message_id, status) DO NOTHING RETURNING id"
)
# Delivered and read times of our replies, by the id Evolution returned.
_REPLY_RECEIPT = f"""
UPDATE {OUTBOX}
   SET delivered_at = CASE WHEN %(status)s IN ('DELIVERY_ACK', 'READ', 'PLAYED')
                           THEN coalesce(delivered_at, %(at)s) ELSE delivered_at END,
       read_at = CASE WHEN %(status)s IN ('READ', 'PLAYED')
                      THEN coalesce(read_at, %(at)s) ELSE read_at END
 WHERE instance_name = %(instance)s AND evolution_message_id = %(id)s
"""
_MESSAGE_STATUS = f"""
UPDATE {TABLE} SET status = %s, status_at = %s
 WHERE instance_name = %s AND remote_jid = %s AND from_me = %s AND message_id = %s
"""
_INSERT_EDIT = (
    f"INSERT INTO {EDITS} (instance_name, remote_jid, from_me, message_id, text_body,"
    " text_enc, content_key_id, edited_at, stream_id, received_at, organization_id)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (instance_name, remote_jid, from_me, message_id, edited_at) DO NOTHING"
    " RETURNING id"
)
_DELETE = f"""
UPDATE {TABLE} SET deleted_at = coalesce(deleted_at, %s)
 WHERE instance_name = %s AND remote_jid = %s AND from_me = %s AND message_id = %s
"""


def reply_aad(instance: str, remote_jid: str, inbound_message_id: str, seq: int) -> bytes:
    """What a sealed reply is bound to: its chat, the message it answers, its place."""
    return "\x1f".join(("reply", instance, remote_jid, inbound_message_id, str(seq))).encode()


def state_aad(instance: str, remote_jid: str) -> bytes:
    return "\x1f".join(("state", instance, remote_jid)).encode()


def edit_aad(edit: Edit, stream_id: str) -> bytes:
    return "\x1f".join(
        ("edit", edit.instance, edit.remote_jid, edit.message_id, stream_id)
    ).encode()


@dataclass(frozen=True, slots=True)
class Context:
    """What every write of one entry shares."""

    stream_id: str
    received_at: datetime
    span: trace.Span
    resolution: Resolution
    keyring: Keyring | None


def message_write(
    ctx: Context,
    message: Message,
    content: RowContent,
    trace_id: str | None,
    *,
    replies: list[str] | None = None,
    partition: int = 0,
    carrier: dict[str, str] | None = None,
    state: dict[str, Any] | None = None,
) -> Write:
    """A message row, with its replies and the chat's new state if any."""
    r = ctx.resolution
    row = (
        message.instance,
        message.remote_jid,
        message.from_me,
        message.message_id,
        message.participant,
        content.push_name,
        message.message_type,
        content.text_body,
        content.raw_payload,
        message.timestamp,
        r.source,
        r.instance_name,
        r.instance_id,
        r.organization_id,
        r.clinic_id,
        trace_id,
        ctx.stream_id,
        ctx.received_at,
        orjson.dumps(sorted(message.issues)).decode(),
        content.text_body_enc,
        content.push_name_enc,
        content.raw_payload_enc,
        content.key_id,
        uuid.UUID(message.media.id) if message.media and message.media.id else None,
    )
    if not replies and state is None:
        statement = Statement(_INSERT_MESSAGE, row, returns=True, bulk=_BULK_MESSAGES)
    else:
        keyring = ctx.keyring
        texts = replies or []
        if keyring is None:
            clear: list[str | None] = list(texts)
            sealed: list[str | None] = [None] * len(texts)
        else:
            clear = [None] * len(texts)
            sealed = [
                keyring.seal(
                    t.encode(),
                    reply_aad(message.instance, message.remote_jid, message.message_id, i + 1),
                )
                for i, t in enumerate(texts)
            ]
        carrier = carrier or {}
        state_json: str | None = None
        state_enc: str | None = None
        if state is not None:
            encoded = orjson.dumps(state).decode()
            if keyring is None:
                state_json = encoded
            else:
                state_enc = keyring.seal(
                    encoded.encode(), state_aad(message.instance, message.remote_jid)
                )
        key_id = keyring.primary if keyring else None
        params = (
            *row,
            message.instance,
            message.remote_jid,
            partition,
            r.organization_id,
            message.message_id,
            key_id,
            carrier.get("traceparent"),
            carrier.get("tracestate"),
            ctx.received_at,
            clear,
            sealed,
            message.instance,
            message.remote_jid,
            state_json,
            state_enc,
            key_id,
            state is not None,
        )
        statement = Statement(_WITH_REPLIES, params, returns=True)
    return Write([statement], ctx.span, "INSERT", TABLE, r.instance_id)


def receipt_write(ctx: Context, receipt: Receipt) -> Write:
    """A status of a message: recorded, and set on the reply or message it names."""
    at = ctx.received_at
    statements = [
        Statement(
            _INSERT_RECEIPT,
            (
                receipt.instance,
                receipt.remote_jid,
                receipt.from_me,
                receipt.message_id,
                receipt.status,
                ctx.stream_id,
                at,
                ctx.resolution.organization_id,
            ),
            returns=True,
        ),
        Statement(
            _MESSAGE_STATUS,
            (
                receipt.status,
                at,
                receipt.instance,
                receipt.remote_jid,
                receipt.from_me,
                receipt.message_id,
            ),
        ),
    ]
    if receipt.from_me:
        statements.append(
            Statement(
                _REPLY_RECEIPT,
                {
                    "status": receipt.status,
                    "at": at,
                    "instance": receipt.instance,
                    "id": receipt.message_id,
                },
            )
        )
    return Write(statements, ctx.span, "INSERT", RECEIPTS)


def edit_write(ctx: Context, edit: Edit) -> Write:
    """A message's new text, kept beside its earlier ones (the edit history)."""
    keyring = ctx.keyring
    clear, sealed = edit.text, None
    if keyring is not None and edit.text is not None:
        clear, sealed = None, keyring.seal(edit.text.encode(), edit_aad(edit, ctx.stream_id))
    params = (
        edit.instance,
        edit.remote_jid,
        edit.from_me,
        edit.message_id,
        clear,
        sealed,
        keyring.primary if keyring and sealed else None,
        edit.edited_at,
        ctx.stream_id,
        ctx.received_at,
        ctx.resolution.organization_id,
    )
    return Write([Statement(_INSERT_EDIT, params, returns=True)], ctx.span, "INSERT", EDITS)


def deletion_write(ctx: Context, deletion: Deletion) -> Write:
    """A message deleted for everyone: marked (its content follows retention)."""
    params = (
        ctx.received_at,
        deletion.instance,
        deletion.remote_jid,
        deletion.from_me,
        deletion.message_id,
    )
    return Write([Statement(_DELETE, params)], ctx.span, "UPDATE", TABLE)
