"""The one message model: what is refused (never a value echoed), what is kept
and recorded as an issue, and that ingest's output reads the same in the worker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from wabot_shared import message as m
from wabot_shared.jsonbody import ISSUE_NUL_REPLACED, ISSUE_NUMBER_OUT_OF_RANGE, dumps


def envelope(**data: Any) -> dict[str, Any]:
    key = {"remoteJid": "5511987650001@s.whatsapp.net", "fromMe": False, "id": "3EB0ABC"}
    key.update(data.pop("key", {}))
    return {
        "event": "messages.upsert",
        "instance": "clinic",
        "data": {"key": key, "message": {"conversation": "Olá"}, **data},
    }


def read(body: bytes | dict[str, Any]) -> m.Message:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return m.read_message(m.parse_webhook(raw))


def refused(body: bytes | dict[str, Any]) -> m.WebhookError:
    with pytest.raises(m.WebhookError) as info:
        read(body)
    return info.value


def test_a_sample_message_reads_as_sent(samples: dict[str, dict[str, Any]]) -> None:
    sample = samples["messages-upsert-text"]
    msg = read(sample)
    assert msg.instance == sample["instance"]
    assert msg.remote_jid == sample["data"]["key"]["remoteJid"]
    assert msg.message_id == sample["data"]["key"]["id"]
    assert msg.from_me is sample["data"]["key"]["fromMe"]
    assert msg.text == sample["data"]["message"]["conversation"]
    assert msg.push_name == sample["data"]["pushName"]
    assert msg.timestamp == datetime.fromtimestamp(sample["data"]["messageTimestamp"], UTC)
    assert msg.issues == frozenset()


@pytest.mark.parametrize(
    ("loc", "value", "kind"),
    [
        ("id", "x" * (m.MAX_MESSAGE_ID + 1), "string_too_long"),
        ("id", "x" * 8000, "string_too_long"),
        ("remoteJid", "5" * (m.MAX_JID + 1), "string_too_long"),
        ("id", "", "string_too_short"),
        ("id", "   ", "string_too_short"),
        ("id", 12345, "string_type"),
        ("remoteJid", None, "missing"),
        ("fromMe", "maybe", "bool_type"),
        ("fromMe", 1, "bool_type"),
        ("fromMe", None, "missing"),
    ],
)
def test_an_unusable_identity_is_refused_with_its_location_never_its_value(
    loc: str, value: Any, kind: str
) -> None:
    body = envelope(key={loc: value})
    if value is None:
        del body["data"]["key"][loc]
    error = refused(body)
    assert error.status == 422
    assert error.errors == [
        {"loc": ["data", "key", loc], "type": kind, "msg": error.errors[0]["msg"]}
    ]
    assert str(value) not in json.dumps(error.errors) or len(str(value)) < 3


def test_identity_limits_are_inclusive() -> None:
    msg = read(envelope(key={"id": "i" * m.MAX_MESSAGE_ID, "remoteJid": "5" * m.MAX_JID}))
    assert len(msg.message_id) == m.MAX_MESSAGE_ID
    long_instance = {**envelope(), "instance": "c" * (m.MAX_INSTANCE + 1)}
    assert refused(long_instance).errors[0]["loc"] == ["instance"]


@pytest.mark.parametrize(
    ("value", "expected"), [("false", False), ("TRUE", True), (" true ", True)]
)
def test_from_me_strings_mean_what_they_say(value: str, expected: bool) -> None:
    # bool("false") is True: the worker once read this as a message sent by us.
    assert read(envelope(key={"fromMe": value})).from_me is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1764321302, 1764321302),
        (1764321302.5, 1764321302.5),
        ("1764321302", 1764321302),
        (1764321302000, 1764321302),  # milliseconds
        ({"low": 1764321302, "high": 0, "unsigned": False}, 1764321302),
        ({"low": -1, "high": 0, "unsigned": True}, 2**32 - 1),
        ({"low": 1764321302, "high": 0}, 1764321302),
    ],
)
def test_timestamps_in_every_shape_baileys_sends(value: Any, expected: float) -> None:
    msg = read(envelope(messageTimestamp=value))
    assert msg.timestamp == datetime.fromtimestamp(expected, UTC)
    assert m.ISSUE_TIMESTAMP not in msg.issues


@pytest.mark.parametrize(
    "value",
    [
        {"low": "x"},
        {"high": 1e300},
        {"low": 1, "high": 2**40},
        "soon",
        True,
        [1764321302],
        -5,
        1e30,
        {"low": 0, "high": -(2**31), "unsigned": False},
    ],
)
def test_an_unreadable_timestamp_becomes_null_and_the_message_is_kept(value: Any) -> None:
    msg = read(envelope(messageTimestamp=value))
    assert msg.timestamp is None
    assert m.ISSUE_TIMESTAMP in msg.issues


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(literal: bytes) -> None:
    body = json.dumps(envelope()).encode().replace(b'"Ol\\u00e1"', literal)
    error = refused(body)
    assert (error.status, error.code) == (400, "malformed_json")


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"123456789012345678901234567890"])
def test_numbers_out_of_range_become_null_and_are_recorded(number: bytes) -> None:
    body = envelope(extra={"n": 1})
    raw = json.dumps(body).encode().replace(b'{"n": 1}', b'{"n": ' + number + b"}")
    envelope_ = m.parse_webhook(raw)
    assert envelope_.body["data"]["extra"] == {"n": None}
    assert ISSUE_NUMBER_OUT_OF_RANGE in m.read_message(envelope_).issues
    # What is queued re-encodes and reads back identically in the worker.
    again = m.parse_webhook(dumps(envelope_.body).encode())
    assert again.body == envelope_.body


def test_nul_characters_are_replaced_everywhere_and_recorded() -> None:
    body = envelope(pushName="a\x00b", key={"id": "id\x00x"})
    body["data"]["message"] = {"conversation": "t\x00xt", "k\x00": "v"}
    msg = read(body)
    assert msg.message_id == "id\ufffdx"
    assert msg.push_name == "a\ufffdb"
    assert msg.text == "t\ufffdxt"
    assert ISSUE_NUL_REPLACED in msg.issues


def test_optional_fields_of_the_wrong_type_are_nulled_and_recorded() -> None:
    msg = read(envelope(pushName={"x": 1}, messageType=["t"], key={"participant": 42}))
    assert (msg.push_name, msg.participant) == (None, None)
    assert msg.message_type == "conversation"  # falls back to the content's key
    assert {m.ISSUE_PUSH_NAME, m.ISSUE_PARTICIPANT, m.ISSUE_MESSAGE_TYPE} <= msg.issues


def test_a_long_push_name_is_truncated_not_refused() -> None:
    msg = read(envelope(pushName="N" * 10_000))
    assert msg.push_name == "N" * m.MAX_PUSH_NAME
    assert m.ISSUE_PUSH_NAME_TRUNCATED in msg.issues


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"[1, 2]", 422, "invalid_envelope"),
        (b'{"event": "messages.upsert"}', 422, "invalid_envelope"),
        (b'{"event": "messages.upsert", "instance": "c", "data": []}', 422, "invalid_message"),
        (b"[" * 100_000, 400, "malformed_json"),
        (b'{"a":' * 300 + b"1" + b"}" * 300, 422, "invalid_envelope"),
    ],
)
def test_what_is_refused(body: bytes, status: int, code: str) -> None:
    error = refused(body)
    assert (error.status, error.code) == (status, code)


def test_deeply_nested_content_with_nul_is_refused_not_crashing() -> None:
    nested: Any = "x\x00"
    for _ in range(300):
        nested = {"n": nested}
    body = json.dumps(envelope(extra=nested)).encode()
    assert refused(body).status == 400


def test_event_names_normalize_and_unknown_ones_count_as_other() -> None:
    for spelling in ("MESSAGES_UPSERT", "messages-upsert", " Messages.Upsert "):
        env = m.parse_webhook(json.dumps({**envelope(), "event": spelling}).encode())
        assert env.is_message
        assert env.metric_event == "messages.upsert"
    other = m.parse_webhook(b'{"event": "x.y", "instance": "c"}')
    assert (other.is_message, other.metric_event) == (False, "other")


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"x\\ud83dy"])
def test_lone_surrogates_are_replaced_and_recorded(escape: bytes) -> None:
    raw = json.dumps(envelope(pushName="P")).encode().replace(b'"P"', b'"' + escape + b'"')
    env = m.parse_webhook(raw)
    msg = m.read_message(env)
    assert msg.push_name is not None
    assert "\ufffd" in msg.push_name
    assert "surrogate_replaced" in msg.issues
    assert m.parse_webhook(dumps(env.body).encode()).body == env.body  # re-encodes
