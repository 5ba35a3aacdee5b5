"""The stream entry of an accepted message: written by ingest, read by the worker.

The entry carries the normalized envelope (what :func:`parse_webhook` made
storable), minimized (:mod:`wabot_shared.minimize`) and sealed when content
keys are configured, and a few fields the worker and operators need without
decoding it:
event, instance, message id, partition, and the codes of what ingest could
not read. Trace context fields are added by the propagator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from wabot_shared import names
from wabot_shared.content import open_payload, seal_payload
from wabot_shared.crypto import Keyring
from wabot_shared.jsonbody import dumps
from wabot_shared.message import (
    ChatEvent,
    Envelope,
    Message,
    WebhookError,
    parse_webhook,
    read_event,
)
from wabot_shared.minimize import minimize


def entry_fields(
    envelope: Envelope,
    message: ChatEvent,
    partition: int,
    keyring: Keyring | None,
    *,
    keep_media_keys: bool = False,
) -> dict[str, str]:
    """The fields of the stream entry for a chat event: its minimized envelope,
    sealed when keys are configured."""
    payload = dumps(minimize(envelope.body, keep_media_keys=keep_media_keys))
    fields = {
        names.FIELD_PAYLOAD: seal_payload(keyring, payload),
        names.FIELD_EVENT: envelope.event,
        names.FIELD_INSTANCE: envelope.instance,
        names.FIELD_MESSAGE_ID: message.message_id,
        names.FIELD_PARTITION: str(partition),
    }
    if isinstance(message, Message) and message.issues:
        fields[names.FIELD_ISSUES] = ",".join(sorted(message.issues))
    return fields


def read_entry(fields: Mapping[str, str], keyring: Keyring | None) -> tuple[ChatEvent, str]:
    """The chat event of an entry and the JSON to store for it; raises
    :class:`~wabot_shared.message.WebhookError` (also for an entry whose event
    is not a chat event), DecryptError (sealed with no configured key) or
    KeyError (no payload)."""
    payload = open_payload(keyring, fields[names.FIELD_PAYLOAD])
    envelope = parse_webhook(payload.encode())
    message = read_event(envelope)
    if message is None:
        raise WebhookError(422, "not_a_chat_event", "entry carries no readable chat event")
    carried = fields.get(names.FIELD_ISSUES)
    if carried and isinstance(message, Message):
        issues = message.issues | {i for i in carried.split(",") if i}
        message = dataclasses.replace(message, issues=frozenset(issues))
    # Entries written by this version are already normalized; older ones may not be.
    raw_json = dumps(envelope.body) if envelope.issues else payload
    return message, raw_json
