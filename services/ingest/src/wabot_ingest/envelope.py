"""Validation of Evolution API webhook bodies.

Only what the pipeline relies on is required; Evolution adds fields between
versions, so unknown fields are always accepted and the raw body is queued
as-is. Validation errors name the offending location, never the value.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wabot_shared import names

# Evolution API v2 event names; anything else is counted as "other" so an
# unexpected sender cannot blow up metric cardinality.
KNOWN_EVENTS = frozenset(
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


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class MessageKey(_Open):
    """``data.key`` of a message: WhatsApp's identity of the message."""

    remoteJid: str = Field(min_length=1)
    fromMe: bool
    id: str = Field(min_length=1)


class UpsertData(_Open):
    """``data`` of ``messages.upsert``."""

    key: MessageKey


class Envelope(_Open):
    """Every webhook body."""

    event: str = Field(min_length=1, max_length=100)
    instance: str = Field(min_length=1, max_length=200)
    data: Any = None


class UpsertEnvelope(Envelope):
    """A ``messages.upsert`` body."""

    data: UpsertData


def normalize_event(event: str) -> str:
    """``MESSAGES_UPSERT`` and ``messages.upsert`` are the same event."""
    return event.strip().lower().replace("_", ".").replace("-", ".")


def metric_event(event: str) -> str:
    """The event name as a bounded-cardinality metric attribute."""
    return event if event in KNOWN_EVENTS else "other"


class BodyError(Exception):
    """The body cannot be accepted; ``status`` says how to answer."""

    def __init__(
        self, status: int, code: str, detail: str, errors: list[dict[str, Any]] | None = None
    ):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []


def _describe(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "type": e["type"], "msg": e["msg"]} for e in exc.errors()]


def parse(body: bytes) -> Envelope:
    """Parse and validate a webhook body.

    Raises :class:`BodyError` with 400 for malformed JSON and 422 for a JSON
    document that is not a valid envelope.
    """
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BodyError(400, "malformed_json", "request body is not valid JSON") from None
        raise BodyError(
            422, "invalid_envelope", "webhook envelope is invalid", _describe(exc)
        ) from None
    if normalize_event(envelope.event) == names.EVENT_MESSAGES_UPSERT:
        try:
            return UpsertEnvelope.model_validate_json(body)
        except ValidationError as exc:
            raise BodyError(
                422, "invalid_message", "messages.upsert body is invalid", _describe(exc)
            ) from None
    return envelope
