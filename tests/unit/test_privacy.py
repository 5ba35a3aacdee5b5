"""Privacy by allow-list: the scrubber's formats, the log filter (extras,
exception messages) and the span exporter (attributes, events, status)."""

from __future__ import annotations

import logging

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from tests.support.pii import CONTEXTS, NOT_PHONES, PHONE_LIKE, digits_of, subscriber_digits
from tests.support.telemetry import InMemoryTelemetry
from wabot_shared.privacy import REDACTED, chat_kind, scrub


@pytest.mark.parametrize("value", PHONE_LIKE)
def test_scrub_removes_every_format_of_a_phone_or_jid(value: str) -> None:
    for text in (context.format(value) for context in CONTEXTS):
        out = scrub(text)
        assert REDACTED in out, text
        assert subscriber_digits(value) not in digits_of(out), (text, out)


@pytest.mark.parametrize("value", NOT_PHONES)
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
