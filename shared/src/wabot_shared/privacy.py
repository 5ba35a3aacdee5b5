"""Keeping health data out of telemetry.

Code never puts message text, phone numbers or names into spans, metrics or
logs in the first place; :func:`scrub` is the backstop applied to every log line
in case a library (or a future change) formats one into a message.
"""

from __future__ import annotations

import re

# WhatsApp JIDs (phone@s.whatsapp.net, group@g.us, lid) and E.164-looking numbers.
_JID = re.compile(r"\b[0-9][0-9-]{5,}@(?:s\.whatsapp\.net|g\.us|c\.us|lid|broadcast)\b")
_E164 = re.compile(r"\+[0-9][0-9 ()-]{8,}[0-9]")
REDACTED = "[redacted]"


def scrub(text: str) -> str:
    """Replace JIDs and phone numbers in ``text`` with a fixed marker."""
    if "@" in text:
        text = _JID.sub(REDACTED, text)
    if "+" in text:
        text = _E164.sub(REDACTED, text)
    return text


def chat_kind(remote_jid: str) -> str:
    """A non-identifying description of a chat: ``group``, ``user`` or ``other``."""
    if remote_jid.endswith("@g.us"):
        return "group"
    if remote_jid.endswith(("@s.whatsapp.net", "@c.us", "@lid")):
        return "user"
    return "other"
