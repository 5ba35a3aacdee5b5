"""Privacy by allow-list: the scrubber's formats, the log filter (extras,
exception messages) and the span exporter (attributes, events, status)."""

from __future__ import annotations

import logging

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from tests.support.telemetry import InMemoryTelemetry
from wabot_shared.privacy import REDACTED, chat_kind, scrub

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


@pytest.mark.parametrize("value", PHONE_LIKE)
def test_scrub_removes_every_format_of_a_phone_or_jid(value: str) -> None:
    for text in (value, f"chat {value} said", f"({value})", f"id={value},"):
        out = scrub(text)
        assert REDACTED in out, text
        digits = "".join(ch for ch in value if ch.isdigit())
        assert digits[-8:] not in "".join(ch for ch in out if ch.isdigit()), (text, out)


@pytest.mark.parametrize(
    "value",
    [
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
    ],
)
def test_scrub_keeps_what_only_looks_like_numbers(value: str) -> None:
    assert scrub(value) == value


def test_scrub_is_idempotent() -> None:
    text = "from +55 (11) 98765-4321 and 5511987650001@s.whatsapp.net"
    assert scrub(scrub(text)) == scrub(text)


def test_chat_kind() -> None:
    assert chat_kind("5511987650001@S.WHATSAPP.NET") == "user"
    assert chat_kind("1@g.us") == "group"
    assert chat_kind("status@broadcast") == "other"
    assert chat_kind("1@newsletter") == "other"


def test_log_records_keep_only_allow_listed_extras(telemetry: InMemoryTelemetry) -> None:
    log = logging.getLogger("wabot.test")
    log.warning(
        "stored for 5511987650001@s.whatsapp.net",
        extra={"error.type": "X", "push_name": "Maria Silva", "text": "dor no peito"},
    )
    [record] = telemetry.log_records()
    assert record.body == f"stored for {REDACTED}"
    attrs = dict(record.attributes or {})
    assert attrs["error.type"] == "X"
    assert "push_name" not in attrs
    assert "text" not in attrs


def test_exception_messages_never_leave_in_logs(
    telemetry: InMemoryTelemetry, db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_text = "paciente com dor no peito"
    log = logging.getLogger("wabot.test")
    with psycopg.connect(db_dsn) as conn:
        try:
            # PostgreSQL quotes the bad input in its message, as it did for jsonb.
            conn.execute("SELECT %s::jsonb", ('{"conversation": "' + secret_text + '" oops',))
        except psycopg.Error:
            log.exception("insert failed")
    [record] = telemetry.log_records()
    attrs = dict(record.attributes or {})
    assert attrs["exception.type"] == "InvalidTextRepresentation"
    assert attrs["exception.message"] == "permanent, code 22P02; message withheld"
    assert "psycopg" in str(attrs["exception.stacktrace"])
    assert secret_text not in str(attrs)
    assert secret_text not in capsys.readouterr().out


def test_spans_keep_only_allow_listed_attributes_and_exception_types(
    telemetry: InMemoryTelemetry,
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("op", record_exception=False) as span:
        span.set_attribute("whatsapp.instance.name", "clinic")
        span.set_attribute("db.query.text", "INSERT ... 'dor no peito'")
        span.set_attribute("enduser.id", "5511987650001")
        try:
            raise ValueError("Maria Silva 5511987650001")
        except ValueError as exc:
            span.record_exception(exc)
        span.set_status(StatusCode.ERROR, "failed for Maria Silva: dor no peito!")
    [exported] = telemetry.finished("op")
    assert dict(exported.attributes or {}) == {"whatsapp.instance.name": "clinic"}
    [event] = exported.events
    assert dict(event.attributes or {}) == {"exception.type": "ValueError"}
    assert exported.status.status_code == StatusCode.ERROR
    assert exported.status.description is None


def test_span_names_are_scrubbed_too(telemetry: InMemoryTelemetry) -> None:
    with trace.get_tracer("test").start_as_current_span("GET /chats/5511987650001"):
        pass
    [exported] = telemetry.finished()
    assert exported.name == f"GET /chats/{REDACTED}"
