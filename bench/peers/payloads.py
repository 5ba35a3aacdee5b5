"""The same payloads for everyone: the Evolution sample with a unique message
id and one of ``chats`` patients' chats per message (stdlib only: the arq peer
imports it from its own environment)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

CHAT_BASE = 900000000


def chat_jid(n: int) -> str:
    """The ``n``-th patient's chat (a Brazilian mobile number's JID)."""
    return f"5511{CHAT_BASE + n:09d}@s.whatsapp.net"


def webhooks(
    template: dict[str, Any], count: int, chats: int, prefix: str = "P"
) -> Iterator[dict[str, Any]]:
    """``count`` copies of ``template`` with fresh message ids, round robin over chats."""
    run = uuid.uuid4().hex[:8].upper()
    for i in range(count):
        body = copy.deepcopy(template)
        body["data"]["key"]["id"] = f"{prefix}{run}{i:09d}"
        body["data"]["key"]["remoteJid"] = chat_jid(i % chats)
        yield body
