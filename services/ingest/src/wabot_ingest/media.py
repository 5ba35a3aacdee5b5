"""Media that arrive inside the webhook (Evolution's ``webhookBase64`` option).

The bytes never enter the Redis stream: ingest decodes them, seals them like
the rest of the content (AES-256-GCM, bound to the media id), stores them in
PostgreSQL through ``healthcare.put_media`` (its role has no table access),
and queues the message with a reference (``message.wabotMedia``) in place of
the base64. The 2xx still means "queued": the media row is written first.

Memory: a body larger than ``LARGE_BODY_BYTES`` needs one of
``INGEST_MAX_LARGE_BODIES`` slots for as long as it is read and stored;
without a free slot within a few seconds it gets 503 with Retry-After
(Evolution retries), so ten 10 MB images arriving at once cost at most a
few slots' worth of memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from wabot_shared.content import media_aad
from wabot_shared.crypto import Keyring
from wabot_shared.message import MEDIA_REFERENCE_KEY, Message

LARGE_BODY_BYTES = 1_048_576
_PUT = "SELECT healthcare.put_media(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"


class MediaUnavailable(Exception):
    """The media cannot be stored now (no database configured, or it is down)."""


@dataclass(frozen=True, slots=True)
class StoredMedia:
    id: str
    size: int
    sha256: str


def base64_of(body: dict[str, Any]) -> str | None:
    """The base64 media of a messages.upsert body, if it carries any."""
    data = body.get("data")
    content = data.get("message") if isinstance(data, dict) else None
    value = content.get("base64") if isinstance(content, dict) else None
    return value if isinstance(value, str) and value else None


class MediaStore:
    """Stores webhook media; bounds how many large bodies are handled at once."""

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None,
        keyring: Keyring | None,
        max_large_bodies: int,
        slot_wait_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self.keyring = keyring
        self.slots = asyncio.Semaphore(max_large_bodies)
        self.slot_wait_s = slot_wait_s

    async def acquire(self) -> bool:
        """Take a large-body slot; False if none frees up in time."""
        try:
            await asyncio.wait_for(self.slots.acquire(), self.slot_wait_s)
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        self.slots.release()

    async def store(self, body: dict[str, Any], message: Message) -> dict[str, Any]:
        """Store the body's base64 media; returns the body with a reference instead.
        Raises ValueError for base64 that is not base64, MediaUnavailable when
        it cannot be stored now."""
        encoded = base64_of(body)
        if encoded is None:
            return body
        if self.pool is None:
            raise MediaUnavailable("ingest has no DATABASE_URL to store media in")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("data.message.base64 is not valid base64") from None
        del encoded
        media_id = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"wabot:{message.instance}:{message.message_id}")
        )
        digest = hashlib.sha256(raw).hexdigest()
        size = len(raw)
        sealed = None
        clear: bytes | None = raw
        key_id = None
        if self.keyring is not None:
            sealed = self.keyring.seal_bytes(raw, media_aad(media_id))
            key_id = self.keyring.primary
            clear = None
        del raw
        mimetype = message.media.mimetype if message.media else None
        try:
            async with self.pool.connection() as conn:
                await conn.execute(
                    _PUT,
                    (
                        media_id,
                        message.instance,
                        message.remote_jid,
                        message.message_id,
                        mimetype,
                        size,
                        digest,
                        clear,
                        sealed,
                        key_id,
                    ),
                )
        except Exception as exc:
            raise MediaUnavailable(type(exc).__name__) from None
        content = dict(body["data"]["message"])
        del content["base64"]
        content[MEDIA_REFERENCE_KEY] = {"id": media_id, "size": size, "sha256": digest}
        return {**body, "data": {**body["data"], "message": content}}
