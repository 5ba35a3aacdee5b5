"""Where message content is sealed and opened, by what it is.

Content = the message text, the sender's push name and the raw payload. With
keys configured it exists only sealed (:mod:`wabot_shared.crypto`): in the
stream entry's ``payload`` field (ingest seals, the worker opens), in the
dead-letter stream (the same field, moved as is) and in the row's ``*_enc``
columns, each bound to its column and the message's identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from wabot_shared.crypto import DecryptError, Keyring, is_sealed

STREAM_PAYLOAD_AAD = b"stream.payload"
CONTENT_COLUMNS = ("text_body", "push_name", "raw_payload")


def seal_payload(keyring: Keyring | None, payload: str) -> str:
    """The stream ``payload`` field for ``payload`` (as is without keys)."""
    return payload if keyring is None else keyring.seal(payload.encode(), STREAM_PAYLOAD_AAD)


def open_payload(keyring: Keyring | None, value: str) -> str:
    """The payload JSON of a stream field; raises DecryptError if it is sealed
    and no configured key opens it."""
    if not is_sealed(value):
        return value  # written in clear (keys disabled, or before they were set)
    if keyring is None:
        raise DecryptError("payload is sealed and no MESSAGE_ENCRYPTION_KEYS are configured")
    return keyring.open(value, STREAM_PAYLOAD_AAD).decode()


def media_aad(media_id: str) -> bytes:
    """What sealed media bytes are bound to: their id."""
    return f"media\x1f{media_id}".encode()


def row_aad(column: str, identity: tuple[str, str, bool, str]) -> bytes:
    """What a sealed column value is bound to: its column and the message identity."""
    instance, remote_jid, from_me, message_id = identity
    return "\x1f".join((column, instance, remote_jid, "1" if from_me else "0", message_id)).encode()


@dataclass(frozen=True, slots=True)
class RowContent:
    """The content columns of one row, clear or sealed."""

    text_body: str | None
    push_name: str | None
    raw_payload: str | None  # JSON text
    text_body_enc: str | None = None
    push_name_enc: str | None = None
    raw_payload_enc: str | None = None
    key_id: str | None = None


def seal_row(
    keyring: Keyring | None,
    identity: tuple[str, str, bool, str],
    text: str | None,
    push_name: str | None,
    raw_json: str,
) -> RowContent:
    """The columns to write for a message's content."""
    if keyring is None:
        return RowContent(text, push_name, raw_json)
    return RowContent(
        None,
        None,
        None,
        keyring.seal_text(text, row_aad("text_body", identity)),
        keyring.seal_text(push_name, row_aad("push_name", identity)),
        keyring.seal(raw_json.encode(), row_aad("raw_payload", identity)),
        keyring.primary,
    )


def open_row(keyring: Keyring | None, row: Mapping[str, Any]) -> dict[str, Any]:
    """A row (a dict of columns) with its content in clear, whichever way it was
    stored. Raises DecryptError if sealed content cannot be opened."""
    out = dict(row)
    if row.get("content_key_id") is None:
        return out
    if keyring is None:
        raise DecryptError("row content is sealed and no keys are configured")
    identity = (row["instance_name"], row["remote_jid"], row["from_me"], row["message_id"])
    for column in CONTENT_COLUMNS:
        sealed = row.get(f"{column}_enc")
        if sealed is None:
            continue
        clear = keyring.open(sealed, row_aad(column, identity)).decode()
        out[column] = orjson.loads(clear) if column == "raw_payload" else clear
    return out
