"""A stream entry read into work: its chat event, or why it cannot be processed."""

from __future__ import annotations

from dataclasses import dataclass

from wabot_shared import names
from wabot_shared.crypto import DecryptError, Keyring
from wabot_shared.entry import read_entry
from wabot_shared.message import ChatEvent, WebhookError
from wabot_shared.queue import StreamEntry
from wabot_worker.scheduler import Work


@dataclass(frozen=True, slots=True)
class Decoded:
    """A readable entry: its chat event and the JSON to store for it."""

    event: ChatEvent
    raw_json: str


@dataclass(frozen=True, slots=True)
class Sealed:
    """An entry no configured key opens: retried (the key may be restored),
    and counted only while other entries open (so the keys evidently work)."""

    key_id: str | None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An entry that can never be processed; dead-lettered at once."""

    reason: str
    error_type: str


def decode(entry: StreamEntry, keyring: Keyring | None) -> Work:
    """Read an entry with the same model ingest validated it with."""
    poison_chat = f"!{entry.partition}:{entry.id}"
    payload = entry.fields.get(names.FIELD_PAYLOAD)
    if payload is None:
        return Work(entry, poison_chat, Unreadable("entry has no payload", "MissingPayload"))
    try:
        event, raw_json = read_entry(entry.fields, keyring)
    except WebhookError as exc:
        return Work(entry, poison_chat, Unreadable(exc.detail, "InvalidPayload"))
    except DecryptError:
        return Work(entry, poison_chat, Sealed(Keyring.key_id_of(payload)))
    return Work(entry, f"{event.instance}\n{event.remote_jid}", Decoded(event, raw_json))
