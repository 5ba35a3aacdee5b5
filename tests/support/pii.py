"""The phone-number and JID formats the privacy backstops must mask, and the
look-alikes they must leave alone: one list for both backstops, the services'
scrubber (tests/unit/test_privacy.py) and the collector's transform/pii
processor (tests/observability/test_collector.py), so the two cover the same
formats by construction."""

from __future__ import annotations

PHONE_LIKE = [
    "5511987650001@s.whatsapp.net",
    "5511987650001:12@s.whatsapp.net",
    "5511987650001@S.WHATSAPP.NET",
    "5511987650001@c.us",
    "123456789012345@lid",
    "120363041234567890@g.us",
    "5511987650001-1600000000@g.us",
    "120363041234567890@newsletter",
    "+55 (11) 98765-4321",
    "+55 11 98765-4321",
    "(11) 98765-4321",
    "11 98765-4321",
    "11987654321",
    "+5511987654321",
    "5511987654321",
    "98765-4321",
    "+1 415 555 2671",
    "415-555-2671",
    "+44 20 7946 0958",
]

NOT_PHONES = [
    "1764321302000-0",  # a stream entry id
    "4bf92f3577b34da6a3ce929d0e0e4736",  # a trace id
    "00f067aa0ba902b7",
    "7f1c2b9e-2d1a-4c43-9d1e-0c2b5e6f7a80",  # a uuid
    "127.0.0.1:8000",
    "192.168.100.200",
    "retrying in 0.5s after 1234 ms",
    "3.14159265",
    "status@broadcast",
    "port 5432",
]

# How a value appears in text: alone, inside a sentence, in parentheses, as a
# key=value, at the end of a sentence.
CONTEXTS = ["{}", "chat {} said", "({})", "id={},", "call {}."]


def subscriber_digits(value: str) -> str:
    """The last 8 digits: what identifies the person (a country or area code
    left over would not)."""
    return "".join(ch for ch in value if ch.isdigit())[-8:]


def digits_of(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())
