"""Keeping health data out of telemetry: allow-lists first, a scrubber last.

What telemetry carries is chosen by name: span attributes and log extras pass
:data:`ALLOWED_ATTRIBUTES` (everything else is dropped), span events keep only
the exception type, and exceptions in logs keep their type, their kind and
code (see :mod:`wabot_shared.failures`) and their frames, never their message,
which for a database error can quote the row that failed. :func:`scrub` is the
backstop applied to every log line and span text in case a library formats a
phone number or a JID into a message anyway.
"""

from __future__ import annotations

import re
from typing import Final

# Attribute keys (span attributes, log extras) that may leave the process.
# Values under these keys are set by our code: ids, counts, codes, names of
# instances, never message content, phone numbers or secrets.
ALLOWED_ATTRIBUTES: Final = frozenset(
    {
        # OpenTelemetry semantic conventions
        "http.request.method",
        "http.response.status_code",
        "http.route",
        "url.path",
        "url.scheme",
        "url.full",
        "server.address",
        "server.port",
        "network.protocol.version",
        "network.peer.address",
        "network.peer.port",
        "error.type",
        "exception.type",
        "db.system.name",
        "db.namespace",
        "db.operation.name",
        "db.collection.name",
        "db.query.summary",
        "db.operation.batch.size",
        "db.response.status_code",
        "messaging.system",
        "messaging.operation.name",
        "messaging.operation.type",
        "messaging.destination.name",
        "messaging.destination.partition.id",
        "messaging.consumer.group.name",
        "messaging.client.id",
        "messaging.message.id",
        "messaging.batch.message_count",
        # ours
        "whatsapp.event",
        "whatsapp.outcome",
        "whatsapp.resolution",
        "whatsapp.instance.name",
        "whatsapp.message.type",
        "whatsapp.message.from_me",
        "whatsapp.message.failures",
        "whatsapp.chat.kind",
        "whatsapp.issue",
        "maintenance.step",
        "purged",
        "whatsapp.retention.kind",
        "transient",
        "counted",
        "in_flight",
        "signal",
        "drain_s",
        "shutdown_s",
        "uptime_s",
        "exit_code",
        "partition",
        "partitions",
        "live_workers",
        "entries",
        "trimmed",
        "dead_letter_id",
        "new_ids",
        "burst",
        "migration",
        "applied",
        "total",
        "already_applied",
        # tests tag their processes' telemetry with it (a resource attribute)
        "test.run.id",
    }
)

REDACTED = "[redacted]"

# WhatsApp JIDs, any case: phone@s.whatsapp.net, phone:device@s.whatsapp.net,
# group@g.us, legacy phone-creation@g.us, @c.us, @lid, @newsletter, @broadcast.
_JID = re.compile(
    r"\b[0-9][0-9]{4,}(?:[:.][0-9]{1,4})?(?:-[0-9]+)?@"
    r"(?:s\.whatsapp\.net|c\.us|g\.us|lid|broadcast|newsletter)\b",
    re.IGNORECASE,
)
# Phone-number-like: digits with the separators people write them with
# (+55 (11) 98765-4321, 11 98765-4321, 5511987654321 ...). Candidates are
# checked by _phone below, which keeps decimals and stream entry ids.
_PHONE = re.compile(r"(?<![\w+.-])\+?\(?[0-9][0-9 ().-]{6,}[0-9](?![\w])")
# Look like phone numbers but are not: stream entry ids, decimals, IPv4 addresses.
_NOT_PHONES = re.compile(r"[0-9]{13}-[0-9]+|[0-9]+\.[0-9]+|[0-9]{1,3}(?:\.[0-9]{1,3}){3}")


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    digits = sum(ch.isdigit() for ch in text)
    if not 8 <= digits <= 15 or _NOT_PHONES.fullmatch(text):
        return text
    return REDACTED


def scrub(text: str) -> str:
    """Replace JIDs and phone numbers in ``text`` with a fixed marker."""
    if "@" in text:
        text = _JID.sub(REDACTED, text)
    if any(ch.isdigit() for ch in text):
        text = _PHONE.sub(_phone, text)
    return text


def chat_kind(remote_jid: str) -> str:
    """A non-identifying description of a chat: ``group``, ``user`` or ``other``."""
    jid = remote_jid.lower()
    if jid.endswith("@g.us"):
        return "group"
    if jid.endswith(("@s.whatsapp.net", "@c.us", "@lid")):
        return "user"
    return "other"
