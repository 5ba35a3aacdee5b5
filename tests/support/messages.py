"""Webhook bodies for tests, and the stream entry ingest would make of one."""

from __future__ import annotations

import copy
import json
from typing import Any

from wabot_shared import names
from wabot_shared.crypto import Keyring
from wabot_shared.entry import entry_fields
from wabot_shared.message import parse_webhook, read_message


def upsert(
    template: dict[str, Any],
    *,
    message_id: str,
    remote_jid: str | None = None,
    instance: str | None = None,
    text: str | None = None,
    from_me: Any = None,
) -> dict[str, Any]:
    """A copy of a ``messages.upsert`` sample with another identity or text."""
    body = copy.deepcopy(template)
    key = body["data"]["key"]
    key["id"] = message_id
    if remote_jid is not None:
        key["remoteJid"] = remote_jid
    if from_me is not None:
        key["fromMe"] = from_me
    if instance is not None:
        body["instance"] = instance
    if text is not None:
        body["data"]["message"] = {"conversation": text}
    return body


def stream_entry(
    body: dict[str, Any] | bytes, partitions: int, keyring: Keyring | None = None
) -> tuple[int, dict[str, str]]:
    """The partition and fields ingest would XADD for ``body`` (no trace context)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    envelope = parse_webhook(raw)
    message = read_message(envelope)
    partition = names.partition_of(message.instance, message.remote_jid, partitions)
    return partition, entry_fields(envelope, message, partition, keyring)
