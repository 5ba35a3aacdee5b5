"""What the worker needs from a queued ``messages.upsert`` body."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Where Evolution/Baileys put human text, by message type.
_TEXT_PATHS: tuple[tuple[str, ...], ...] = (
    ("conversation",),
    ("extendedTextMessage", "text"),
    ("imageMessage", "caption"),
    ("videoMessage", "caption"),
    ("documentMessage", "caption"),
    ("documentWithCaptionMessage", "message", "documentMessage", "caption"),
    ("buttonsResponseMessage", "selectedDisplayText"),
    ("listResponseMessage", "title"),
    ("templateButtonReplyMessage", "selectedDisplayText"),
    ("ephemeralMessage", "message", "conversation"),
    ("ephemeralMessage", "message", "extendedTextMessage", "text"),
)


class PoisonMessage(ValueError):
    """The entry can never be processed (not JSON, not a message)."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One WhatsApp message as stored; ``raw`` is the whole webhook body."""

    instance_name: str
    remote_jid: str
    from_me: bool
    message_id: str
    participant: str | None
    push_name: str | None
    message_type: str | None
    text_body: str | None
    message_timestamp: datetime | None
    raw: dict[str, Any]
    raw_json: str


def _dig(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _timestamp(value: Any) -> datetime | None:
    # Baileys sends seconds as a number, a numeric string, or a Long {low, high}.
    if isinstance(value, dict):
        value = (int(value.get("high") or 0) << 32) + int(value.get("low") or 0)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if seconds > 1e11:  # milliseconds
        seconds /= 1000
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _text(message: Any) -> str | None:
    for path in _TEXT_PATHS:
        value = _dig(message, path)
        if isinstance(value, str):
            return value
    return None


def without_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL (U+0000): replace it with U+FFFD,
    deterministically, so a redelivered message still maps to the same row."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _opt_str(value: Any) -> str | None:
    return without_nul(value) if isinstance(value, str) and value else None


def parse_payload(payload: str) -> InboundMessage:
    """Parse a stream entry's ``payload`` field; raises :class:`PoisonMessage`."""
    try:
        body = json.loads(payload)
    except (TypeError, ValueError):
        raise PoisonMessage("payload is not valid JSON") from None
    if not isinstance(body, dict):
        raise PoisonMessage("payload is not a JSON object")
    data = body.get("data")
    key = data.get("key") if isinstance(data, dict) else None
    if not isinstance(key, dict):
        raise PoisonMessage("payload has no data.key")
    instance = body.get("instance")
    remote_jid, message_id, from_me = key.get("remoteJid"), key.get("id"), key.get("fromMe")
    if not (isinstance(instance, str) and instance):
        raise PoisonMessage("payload has no instance")
    if not (
        isinstance(remote_jid, str) and remote_jid and isinstance(message_id, str) and message_id
    ):
        raise PoisonMessage("payload has no data.key.remoteJid/id")
    assert isinstance(data, dict)
    message = data.get("message")
    message_type = _opt_str(data.get("messageType"))
    if message_type is None and isinstance(message, dict) and message:
        message_type = without_nul(str(next(iter(message))))
    text = _text(message)
    return InboundMessage(
        instance_name=without_nul(instance),
        remote_jid=without_nul(remote_jid),
        from_me=bool(from_me),
        message_id=without_nul(message_id),
        participant=_opt_str(key.get("participant")),
        push_name=_opt_str(data.get("pushName")),
        message_type=message_type,
        text_body=without_nul(text) if text is not None else None,
        message_timestamp=_timestamp(data.get("messageTimestamp")),
        raw=body,
        raw_json=payload,
    )
