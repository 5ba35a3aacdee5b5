"""Message content encrypted at rest: AES-256-GCM with named, rotatable keys.

``MESSAGE_ENCRYPTION_KEYS`` is ``<key-id>:<base64 of 32 bytes>[,...]``: the
first key encrypts, every key decrypts, so a key is rotated by putting a new
one first, running ``wabot reencrypt``, then removing the old one.

A sealed value is ``v1.<key-id>.<base64url(nonce ‖ ciphertext ‖ tag)>``: text,
so the same form fits a Redis stream field and a PostgreSQL column, and the
key id travels with every value. Each value is bound to what it is (``aad``,
e.g. the column name), so a ciphertext cannot be moved into another field and
still decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION: Final = "v1"
DISABLED: Final = "disabled"
_NONCE = 12
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class KeyError_(ValueError):
    """A key setting that cannot be used (the message names no key material)."""


class DecryptError(ValueError):
    """A sealed value that no configured key opens (or that was tampered with)."""


@dataclass(frozen=True)
class Keyring:
    """The configured keys; ``primary`` encrypts."""

    keys: dict[str, AESGCM]
    primary: str

    @classmethod
    def parse(cls, setting: str) -> Keyring:
        """Parse ``MESSAGE_ENCRYPTION_KEYS`` (never echoing key material)."""
        keys: dict[str, AESGCM] = {}
        order: list[str] = []
        for n, item in enumerate(p.strip() for p in setting.split(",")):
            if not item:
                continue
            key_id, sep, material = item.partition(":")
            if not sep or not _KEY_ID.fullmatch(key_id):
                raise KeyError_(f"entry {n + 1}: expected <key-id>:<base64 of 32 bytes>")
            try:
                raw = base64.b64decode(material, validate=True)
            except (binascii.Error, ValueError):
                raise KeyError_(f"key {key_id}: not valid base64") from None
            if len(raw) != 32:
                raise KeyError_(f"key {key_id}: must be 32 bytes, got {len(raw)}")
            if key_id in keys:
                raise KeyError_(f"key {key_id}: listed twice")
            keys[key_id] = AESGCM(raw)
            order.append(key_id)
        if not order:
            raise KeyError_("no keys given")
        return cls(keys, order[0])

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        """Encrypt ``plaintext`` with the primary key, bound to ``aad``."""
        nonce = os.urandom(_NONCE)
        sealed = self.keys[self.primary].encrypt(nonce, plaintext, aad)
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{VERSION}.{self.primary}.{body}"

    def open(self, value: str, aad: bytes) -> bytes:
        """Decrypt a value sealed by any configured key."""
        version, _, rest = value.partition(".")
        key_id, _, body = rest.partition(".")
        key = self.keys.get(key_id)
        if version != VERSION or key is None:
            raise DecryptError(f"no configured key {key_id!r} (version {version!r})")
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return key.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except (InvalidTag, ValueError, binascii.Error):
            raise DecryptError(f"value does not open with key {key_id!r}") from None

    def seal_bytes(self, plaintext: bytes, aad: bytes) -> bytes:
        """The binary form, for large values (media): ``b"v1" ‖ len(id) ‖ id ‖
        nonce ‖ ciphertext ‖ tag`` (no base64 inflation)."""
        nonce = os.urandom(_NONCE)
        kid = self.primary.encode()
        sealed = self.keys[self.primary].encrypt(nonce, plaintext, aad)
        return VERSION.encode() + bytes([len(kid)]) + kid + nonce + sealed

    def open_bytes(self, value: bytes, aad: bytes) -> bytes:
        """Decrypt a value sealed by :meth:`seal_bytes` with any configured key."""
        if value[:2] != VERSION.encode() or len(value) < 3:
            raise DecryptError("not a sealed value")
        end = 3 + value[2]
        key_id = value[3:end].decode(errors="replace")
        key = self.keys.get(key_id)
        if key is None:
            raise DecryptError(f"no configured key {key_id!r}")
        try:
            return key.decrypt(value[end : end + _NONCE], value[end + _NONCE :], aad)
        except InvalidTag:
            raise DecryptError(f"value does not open with key {key_id!r}") from None

    @staticmethod
    def key_id_of(value: str) -> str | None:
        """The key id a sealed value was made with (None if not sealed)."""
        version, _, rest = value.partition(".")
        return rest.partition(".")[0] if version == VERSION else None

    def seal_text(self, text: str | None, aad: bytes) -> str | None:
        return None if text is None else self.seal(text.encode(), aad)

    def open_text(self, value: str | None, aad: bytes) -> str | None:
        return None if value is None else self.open(value, aad).decode()


def is_sealed(value: str) -> bool:
    """Whether ``value`` has the sealed form (``v1.<key-id>.``)."""
    return value.startswith(VERSION + ".") and value.count(".") >= 2


def new_key_setting(key_id: str = "k1") -> str:
    """A fresh ``<key-id>:<base64>`` entry (for set-up and tests)."""
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


def keyring_from_setting(value: str | None) -> Keyring | None:
    """The keyring of a setting; None when explicitly ``disabled`` or unset."""
    if value is None or value.strip().lower() == DISABLED:
        return None
    return Keyring.parse(value)
