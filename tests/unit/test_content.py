"""Sealing content (AES-256-GCM keyring), minimization and the key setting."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from wabot_shared.content import open_payload, open_row, row_aad, seal_payload, seal_row
from wabot_shared.crypto import DecryptError, KeyError_, Keyring, new_key_setting
from wabot_shared.minimize import minimize
from wabot_shared.settings import QueueSettings

IDENTITY = ("clinic", "5511987650001@s.whatsapp.net", False, "3EB0")


def test_first_key_seals_every_key_opens() -> None:
    old, new = new_key_setting("old"), new_key_setting("new")
    sealed_old = Keyring.parse(old).seal(b"text", b"aad")
    both = Keyring.parse(f"{new},{old}")
    assert both.primary == "new"
    assert both.open(sealed_old, b"aad") == b"text"
    assert Keyring.key_id_of(both.seal(b"x", b"aad")) == "new"
    with pytest.raises(DecryptError, match="no configured key 'old'"):
        Keyring.parse(new).open(sealed_old, b"aad")


def test_a_sealed_value_is_bound_to_what_it_is_and_tamper_evident() -> None:
    ring = Keyring.parse(new_key_setting())
    sealed = ring.seal(b"glicemia alterada", row_aad("text_body", IDENTITY))
    assert b"glicemia" not in sealed.encode()
    with pytest.raises(DecryptError):
        ring.open(sealed, row_aad("push_name", IDENTITY))  # moved to another column
    other_row = (*IDENTITY[:3], "OTHER")
    with pytest.raises(DecryptError):
        ring.open(sealed, row_aad("text_body", other_row))  # moved to another row
    body = sealed.rsplit(".", 1)[1]
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(DecryptError):
        ring.open(sealed.rsplit(".", 1)[0] + "." + flipped, row_aad("text_body", IDENTITY))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("k1", "expected <key-id>:<base64 of 32 bytes>"),
        ("k1:not base64!", "not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "must be 32 bytes, got 5"),
        (new_key_setting("a") + "," + new_key_setting("a"), "listed twice"),
        ("bad id!:" + base64.b64encode(b"x" * 32).decode(), "expected <key-id>"),
    ],
)
def test_bad_key_settings_are_refused_without_echoing_material(setting: str, message: str) -> None:
    with pytest.raises(KeyError_, match=message) as info:
        Keyring.parse(setting)
    material = setting.partition(":")[2]
    assert not material or material[:8] not in str(info.value)


def test_rows_and_payloads_round_trip_sealed_and_clear() -> None:
    ring = Keyring.parse(new_key_setting("k"))
    payload = '{"event": "messages.upsert"}'
    assert open_payload(ring, seal_payload(ring, payload)) == payload
    assert open_payload(None, payload) == payload  # stored in clear
    with pytest.raises(DecryptError):
        open_payload(None, seal_payload(ring, payload))
    content = seal_row(ring, IDENTITY, "texto", "Maria", '{"a": 1}')
    assert (content.text_body, content.push_name, content.raw_payload) == (None, None, None)
    row: dict[str, Any] = {
        "instance_name": IDENTITY[0],
        "remote_jid": IDENTITY[1],
        "from_me": IDENTITY[2],
        "message_id": IDENTITY[3],
        "text_body_enc": content.text_body_enc,
        "push_name_enc": content.push_name_enc,
        "raw_payload_enc": content.raw_payload_enc,
        "content_key_id": content.key_id,
    }
    opened = open_row(ring, row)
    assert (opened["text_body"], opened["push_name"], opened["raw_payload"]) == (
        "texto",
        "Maria",
        {"a": 1},
    )


def test_keys_are_required_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESSAGE_ENCRYPTION_KEYS", raising=False)
    base = {"redis_url": "redis://127.0.0.1:1/0"}
    with pytest.raises(ValidationError, match="MESSAGE_ENCRYPTION_KEYS is required"):
        QueueSettings(**base, app_env="production")
    assert QueueSettings(**base, app_env="development").keyring() is None
    disabled = QueueSettings(**base, app_env="production", message_encryption_keys="disabled")
    assert disabled.keyring() is None
    assert disabled.encryption_disabled_explicitly
    with pytest.raises(ValidationError, match="MESSAGE_ENCRYPTION_KEYS: entry 1"):
        QueueSettings(**base, app_env="production", message_encryption_keys="nonsense")


def test_minimize_drops_credentials_everywhere_and_media_keys_in_content(
    samples: dict[str, dict[str, Any]],
) -> None:
    image = samples["messages-upsert-image"]
    body = {**image, "data": {**image["data"], "contextInfo": {"token": "t", "url": "https://x"}}}
    small = minimize(body)
    assert "apikey" not in small
    assert "token" not in small["data"]["contextInfo"]
    assert small["data"]["contextInfo"]["url"] == "https://x"  # not message content
    media = small["data"]["message"]["imageMessage"]
    for key in ("mediaKey", "url", "jpegThumbnail", "directPath"):
        assert key not in media
    assert media["caption"] == image["data"]["message"]["imageMessage"]["caption"]
    kept = minimize(body, keep_media_keys=True)["data"]["message"]["imageMessage"]
    assert kept["mediaKey"] == image["data"]["message"]["imageMessage"]["mediaKey"]
    assert "apikey" not in minimize(body, keep_media_keys=True)
