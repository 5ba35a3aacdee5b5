"""The few raw-ASGI pieces the webhook path needs (it bypasses FastAPI's
routing, which cost more per request than everything else the path does)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = (b"content-type", b"application/json")


class BodyError(Exception):
    """The body cannot be read; ``status`` says how to answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def send_json(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    close: bool = False,
) -> None:
    """Answer with a JSON body."""
    payload = orjson.dumps(body)
    all_headers = [_JSON, (b"content-length", str(len(payload)).encode())]
    if close:
        all_headers.append((b"connection", b"close"))
    if headers:
        all_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": payload})


async def read_body(
    scope: Scope,
    receive: Receive,
    limit: int,
    timeout: float,
    *,
    large: int | None = None,
    on_large: Callable[[], Awaitable[bool]] | None = None,
) -> bytes | bytearray:
    """The request body; 413 as soon as it exceeds ``limit`` bytes (before the
    rest is read), 408 when it takes longer than ``timeout`` seconds. Once it
    is known to exceed ``large`` bytes, ``on_large`` must grant it a slot
    (else 503)."""
    declared = header(scope, b"content-length")
    granted = False

    async def need_slot() -> None:
        nonlocal granted
        if on_large is not None and not granted:
            if not await on_large():
                raise BodyError(503, "busy", "too many large bodies at once")
            granted = True

    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BodyError(400, "bad_content_length", "invalid Content-Length") from None
        if size > limit:
            raise BodyError(413, "body_too_large", f"body exceeds {limit} bytes")
        if large is not None and size > large:
            await need_slot()
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise BodyError(400, "client_disconnected", "client went away")
                body += message.get("body", b"")
                if len(body) > limit:
                    raise BodyError(413, "body_too_large", f"body exceeds {limit} bytes")
                if large is not None and len(body) > large:
                    await need_slot()
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise BodyError(408, "body_timeout", f"body not received within {timeout:g}s") from None
    return body  # a bytearray: no copy of a large body (it reads like bytes)
