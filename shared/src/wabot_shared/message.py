"""The one model of an Evolution API webhook, used by ingest *and* worker.

Ingest validates a body with :func:`parse_webhook` and :func:`read_message`
and queues the normalized envelope; the worker reads the queued envelope with
the same two functions, so the two services can never read a message
differently (``fromMe: "false"`` once meant False to one and True to the
other).

Refusal is reserved for what can never become a row: a body that is not JSON
(400), and a message whose identity (instance, remoteJid, fromMe, id) is
missing, of the wrong type or longer than the unique index can hold (422).
Evolution never retries a 4xx, so everything else is kept: a field that cannot
be read becomes null, and its name is recorded in ``issues`` (stored with the
row and counted), never its value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from wabot_shared.jsonbody import MalformedJson, parse_json

# Lengths in characters. The identity columns share one unique btree index,
# whose rows must stay under ~2,700 bytes: 4 bytes per character at most,
# (100 + 128 + 256) * 4 = 1,936 bytes plus overhead. Real values are far
# shorter (instance names are chosen by the operator, JIDs ~30, ids ~20-40).
MAX_EVENT: Final = 100
MAX_INSTANCE: Final = 100
MAX_JID: Final = 128
MAX_MESSAGE_ID: Final = 256
MAX_PUSH_NAME: Final = 256
MAX_MESSAGE_TYPE: Final = 64

EVENT_MESSAGES_UPSERT: Final = "messages.upsert"
EVENT_MESSAGES_UPDATE: Final = "messages.update"
EVENT_MESSAGES_EDITED: Final = "messages.edited"
EVENT_MESSAGES_DELETE: Final = "messages.delete"
# Events that belong to a chat and are queued in its order (the rest: ignored).
CHAT_EVENTS: Final = frozenset(
    {EVENT_MESSAGES_UPSERT, EVENT_MESSAGES_UPDATE, EVENT_MESSAGES_EDITED, EVENT_MESSAGES_DELETE}
)
# Where Evolution's webhookBase64 option puts a media message's bytes.
MEDIA_REFERENCE_KEY: Final = "wabotMedia"
MEDIA_TYPES: Final = frozenset(
    {"imageMessage", "videoMessage", "audioMessage", "documentMessage", "stickerMessage"}
)

# Evolution API v2 event names; anything else is counted as "other" so an
# unexpected sender cannot blow up metric cardinality.
KNOWN_EVENTS: Final = frozenset(
    {
        "application.startup",
        "qrcode.updated",
        "connection.update",
        "messages.set",
        "messages.upsert",
        "messages.edited",
        "messages.update",
        "messages.delete",
        "send.message",
        "send.message.update",
        "contacts.set",
        "contacts.upsert",
        "contacts.update",
        "presence.update",
        "chats.set",
        "chats.update",
        "chats.upsert",
        "chats.delete",
        "groups.upsert",
        "groups.update",
        "group.participants.update",
        "call",
        "typebot.start",
        "typebot.change.status",
        "labels.edit",
        "labels.association",
        "logout.instance",
        "remove.instance",
        "instance.create",
        "instance.delete",
        "status.instance",
    }
)

# Issue codes (bounded: they are metric attribute values).
ISSUE_TIMESTAMP = "timestamp_unreadable"
ISSUE_PUSH_NAME = "push_name_unreadable"
ISSUE_PUSH_NAME_TRUNCATED = "push_name_truncated"
ISSUE_PARTICIPANT = "participant_unreadable"
ISSUE_MESSAGE_TYPE = "message_type_unreadable"

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

# Unix seconds up to the year 9999 (what PostgreSQL and datetime both hold).
_MAX_SECONDS = 253_402_300_799
# A value this large can only be milliseconds (1e11 s is the year 5138).
_MILLIS_THRESHOLD = 1e11


class WebhookError(Exception):
    """The body cannot be accepted; ``status`` says how to answer.

    ``detail`` and ``errors`` name locations and rules, never values: they are
    returned to the caller and logged.
    """

    def __init__(
        self, status: int, code: str, detail: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []


@dataclass(frozen=True, slots=True)
class Envelope:
    """Any webhook body: its normalized event, instance and JSON object."""

    event: str
    instance: str
    body: dict[str, Any]
    issues: frozenset[str]

    @property
    def metric_event(self) -> str:
        """The event as a bounded-cardinality attribute value."""
        return self.event if self.event in KNOWN_EVENTS else "other"

    @property
    def is_message(self) -> bool:
        return self.event == EVENT_MESSAGES_UPSERT

    @property
    def is_chat_event(self) -> bool:
        return self.event in CHAT_EVENTS


@dataclass(frozen=True, slots=True)
class MediaInfo:
    """A media message's bytes, stored apart (``id``) when they came with the
    webhook; ``kind`` is the content type (``imageMessage`` ...)."""

    kind: str
    mimetype: str | None
    size: int | None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One WhatsApp message of a ``messages.upsert`` webhook."""

    instance: str
    remote_jid: str
    from_me: bool
    message_id: str
    participant: str | None
    push_name: str | None
    message_type: str | None
    text: str | None
    timestamp: datetime | None
    issues: frozenset[str]
    media: MediaInfo | None = None

    @property
    def chat(self) -> tuple[str, str]:
        """The conversation this message belongs to: (instance, remoteJid)."""
        return self.instance, self.remote_jid


@dataclass(frozen=True, slots=True)
class Receipt:
    """``messages.update``: a message (ours or theirs) reached a status."""

    instance: str
    remote_jid: str
    from_me: bool
    message_id: str
    status: str  # SERVER_ACK, DELIVERY_ACK, READ, PLAYED, ERROR, DELETED ...


@dataclass(frozen=True, slots=True)
class Edit:
    """``messages.edited``: a message's new text (Baileys' protocolMessage)."""

    instance: str
    remote_jid: str
    from_me: bool
    message_id: str
    text: str | None
    edited_at: datetime | None


@dataclass(frozen=True, slots=True)
class Deletion:
    """``messages.delete``: a message was deleted for everyone."""

    instance: str
    remote_jid: str
    from_me: bool
    message_id: str


ChatEvent = Message | Receipt | Edit | Deletion


def normalize_event(event: str) -> str:
    """``MESSAGES_UPSERT``, ``messages-upsert`` and ``messages.upsert`` are one event."""
    return event.strip().lower().replace("_", ".").replace("-", ".")


def _error(loc: Iterable[str], kind: str, msg: str) -> dict[str, Any]:
    return {"loc": list(loc), "type": kind, "msg": msg}


def _identity_str(
    value: Any, loc: tuple[str, ...], limit: int, errors: list[dict[str, Any]]
) -> str:
    if not isinstance(value, str):
        kind = "missing" if value is None else "string_type"
        errors.append(_error(loc, kind, "a non-empty string is required"))
        return ""
    if not value.strip():
        errors.append(_error(loc, "string_too_short", "must not be empty"))
    elif len(value) > limit:
        errors.append(_error(loc, "string_too_long", f"at most {limit} characters"))
    return value


def parse_webhook(raw: bytes | bytearray) -> Envelope:
    """Parse any webhook body; raises :class:`WebhookError` (400 or 422)."""
    try:
        parsed = parse_json(raw)
    except MalformedJson:
        raise WebhookError(400, "malformed_json", "request body is not valid JSON") from None
    body = parsed.value
    if not isinstance(body, dict):
        raise WebhookError(
            422,
            "invalid_envelope",
            "webhook envelope is invalid",
            [_error((), "dict_type", "the body must be a JSON object")],
        )
    errors: list[dict[str, Any]] = []
    event = _identity_str(body.get("event"), ("event",), MAX_EVENT, errors)
    instance = _identity_str(body.get("instance"), ("instance",), MAX_INSTANCE, errors)
    if errors:
        raise WebhookError(422, "invalid_envelope", "webhook envelope is invalid", errors)
    return Envelope(normalize_event(event), instance, body, parsed.issues)


def _from_me(value: Any, errors: list[dict[str, Any]]) -> bool:
    # Only what unambiguously means a boolean: Evolution sends JSON booleans;
    # "true"/"false" strings are read as what they say, never as truthiness.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    kind = "missing" if value is None else "bool_type"
    errors.append(_error(("data", "key", "fromMe"), kind, "a boolean is required"))
    return False


def read_message(envelope: Envelope) -> Message:
    """The message of a ``messages.upsert`` envelope; raises :class:`WebhookError`
    (422) only when its identity is unusable."""
    data = envelope.body.get("data")
    key = data.get("key") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(key, dict):
        raise WebhookError(
            422,
            "invalid_message",
            "messages.upsert body is invalid",
            [_error(("data", "key"), "missing", "an object is required")],
        )
    errors: list[dict[str, Any]] = []
    remote_jid = _identity_str(key.get("remoteJid"), ("data", "key", "remoteJid"), MAX_JID, errors)
    message_id = _identity_str(key.get("id"), ("data", "key", "id"), MAX_MESSAGE_ID, errors)
    from_me = _from_me(key.get("fromMe"), errors)
    if errors:
        raise WebhookError(422, "invalid_message", "messages.upsert body is invalid", errors)
    issues = set(envelope.issues)
    participant = _optional(key.get("participant"), MAX_JID, issues, ISSUE_PARTICIPANT)
    push_name = _push_name(data.get("pushName"), issues)
    content = data.get("message")
    message_type = _optional(data.get("messageType"), MAX_MESSAGE_TYPE, issues, ISSUE_MESSAGE_TYPE)
    if message_type is None and isinstance(content, dict) and content:
        first = next(iter(content))
        message_type = first if len(first) <= MAX_MESSAGE_TYPE else None
    timestamp = normalize_timestamp(data.get("messageTimestamp"))
    if timestamp is None and data.get("messageTimestamp") is not None:
        issues.add(ISSUE_TIMESTAMP)
    return Message(
        instance=envelope.instance,
        remote_jid=remote_jid,
        from_me=from_me,
        message_id=message_id,
        participant=participant,
        push_name=push_name,
        message_type=message_type,
        text=_text(content),
        timestamp=timestamp,
        issues=frozenset(issues),
        media=_media(content, message_type),
    )


def _media(content: Any, message_type: str | None) -> MediaInfo | None:
    if not isinstance(content, dict):
        return None
    kind = message_type if message_type in MEDIA_TYPES else None
    kind = kind or next((k for k in content if k in MEDIA_TYPES), None)
    if kind is None:
        return None
    meta = content.get(kind) if isinstance(content.get(kind), dict) else {}
    assert isinstance(meta, dict)
    size: int | None = None
    try:
        size = int(str(meta.get("fileLength")))
    except ValueError:
        size = None
    mimetype = meta.get("mimetype") if isinstance(meta.get("mimetype"), str) else None
    ref = content.get(MEDIA_REFERENCE_KEY)
    media_id = ref.get("id") if isinstance(ref, dict) and isinstance(ref.get("id"), str) else None
    if isinstance(ref, dict) and isinstance(ref.get("size"), int):
        size = int(ref["size"])
    return MediaInfo(kind, mimetype, size, media_id)


def _event_key(data: Any) -> dict[str, Any] | None:
    """The message key of an update/edit/delete event, in Evolution's shapes:
    ``data.key`` or the key's fields flat in ``data`` (``keyId`` or ``id``)."""
    if not isinstance(data, dict):
        return None
    key = data.get("key") if isinstance(data.get("key"), dict) else data
    assert isinstance(key, dict)
    message_id = key.get("id") if "id" in key else key.get("keyId", data.get("keyId"))
    out = {"remoteJid": key.get("remoteJid"), "fromMe": key.get("fromMe"), "id": message_id}
    return out


def read_event(envelope: Envelope) -> ChatEvent | None:
    """The chat event of an envelope, or None when the event is not one we
    record (or names no usable message: nothing to attach it to)."""
    if envelope.is_message:
        return read_message(envelope)
    if not envelope.is_chat_event:
        return None
    key = _event_key(envelope.body.get("data"))
    if key is None:
        return None
    errors: list[dict[str, Any]] = []
    remote_jid = _identity_str(key.get("remoteJid"), ("data", "remoteJid"), MAX_JID, errors)
    message_id = _identity_str(key.get("id"), ("data", "id"), MAX_MESSAGE_ID, errors)
    from_me = _from_me(key.get("fromMe"), errors)
    if errors:
        return None
    data = envelope.body["data"]
    if envelope.event == EVENT_MESSAGES_UPDATE:
        status = data.get("status")
        if not isinstance(status, str) or not status or len(status) > 32:
            return None
        return Receipt(envelope.instance, remote_jid, from_me, message_id, status.upper())
    if envelope.event == EVENT_MESSAGES_EDITED:
        edited = data.get("editedMessage")
        when = data.get("timestampMs")
        seconds = normalize_timestamp(when)
        return Edit(envelope.instance, remote_jid, from_me, message_id, _text(edited), seconds)
    return Deletion(envelope.instance, remote_jid, from_me, message_id)


def _optional(value: Any, limit: int, issues: set[str], issue: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) <= limit:
        return value
    issues.add(issue)
    return None


def _push_name(value: Any, issues: set[str]) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        issues.add(ISSUE_PUSH_NAME)
        return None
    if len(value) > MAX_PUSH_NAME:
        issues.add(ISSUE_PUSH_NAME_TRUNCATED)
        return value[:MAX_PUSH_NAME]
    return value


def _dig(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _text(content: Any) -> str | None:
    for path in _TEXT_PATHS:
        value = _dig(content, path)
        if isinstance(value, str):
            return value
    return None


def _long(value: dict[str, Any]) -> int | None:
    # A protobuf.js Long as Baileys serializes it: two signed 32-bit halves.
    low, high = value.get("low"), value.get("high")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        return None
    assert isinstance(low, int)
    assert isinstance(high, int)
    if not (-(2**31) <= low < 2**32 and -(2**31) <= high < 2**32):
        return None
    combined = ((high & 0xFFFFFFFF) << 32) | (low & 0xFFFFFFFF)
    if value.get("unsigned") is not True and combined >= 2**63:
        combined -= 2**64
    return combined


def normalize_timestamp(value: Any) -> datetime | None:
    """Seconds (or milliseconds) since the epoch as a number, a numeric string or
    a Baileys Long ``{low, high, unsigned}``; anything else is None."""
    seconds: float | None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            return None
    elif isinstance(value, dict):
        combined = _long(value)
        seconds = None if combined is None else float(combined)
    else:
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    if seconds > _MILLIS_THRESHOLD:
        seconds /= 1000
    if not 0 <= seconds <= _MAX_SECONDS:
        return None
    return datetime.fromtimestamp(seconds, UTC)
