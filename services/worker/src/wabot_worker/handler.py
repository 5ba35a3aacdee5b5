"""Your bot's logic, plugged in: ``WORKER_HANDLER=package.module:callable``.

The callable gets one :class:`IncomingMessage` and returns None, a reply text
or a list of reply texts; it may be a plain function or a coroutine function.
The contract (see README, "Your handler"):

* it runs once per stored message on the success path, in the chat's order,
  never twice at once for one chat, in its own child span of the message's
  ``process`` span; across crashes it is *at least* once (a crash after the
  handler and before the commit runs it again);
* its replies are written to the outbox in the same transaction as the
  message row, and sent by the worker in order, with retries;
* ``message.state`` is the chat's state (a JSON object): what the handler
  leaves in it is committed with the message;
* an exception is a failed delivery: retried, then dead-lettered after
  ``MAX_DELIVERIES``; ``WORKER_HANDLER_TIMEOUT`` bounds a slow handler (a
  plain function then keeps running in its thread, but its result is dropped).

Without ``WORKER_HANDLER``, the built-in :class:`AutoReply` answers every
patient message with ``REPLY_TEXT`` when ``REPLY_ENABLED=true``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Reply = str | list[str] | tuple[str, ...] | None
Handler = Callable[["IncomingMessage"], Reply | Awaitable[Reply]]


class HandlerError(Exception):
    """The handler's result is not one it may return."""


@dataclass(frozen=True, slots=True)
class Media:
    """A media message's bytes (stored sealed; :meth:`read` opens them)."""

    kind: str  # imageMessage, documentMessage, audioMessage ...
    mimetype: str | None
    size: int | None
    _reader: Callable[[], Awaitable[bytes]] | None = field(default=None, repr=False)

    @property
    def available(self) -> bool:
        """Whether the bytes came with the webhook (Evolution's webhookBase64)."""
        return self._reader is not None

    async def read(self) -> bytes:
        """The media's bytes; raises LookupError if they were not stored."""
        if self._reader is None:
            raise LookupError("this message's media bytes were not sent with the webhook")
        return await self._reader()


@dataclass(slots=True)
class IncomingMessage:
    """What a handler gets: one stored message, in clear."""

    instance: str
    chat_id: str  # the remoteJid
    message_id: str
    from_me: bool
    message_type: str | None
    text: str | None
    timestamp: datetime | None
    push_name: str | None
    organization_id: uuid.UUID | None
    clinic_id: uuid.UUID | None
    trace_id: str | None
    media: Media | None
    state: dict[str, Any]


class AutoReply:
    """The built-in handler: one fixed text to every patient message."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __call__(self, message: IncomingMessage) -> Reply:
        return None if message.from_me else self.text


def resolve_handler(settings: Any) -> Handler | None:
    """The configured handler: WORKER_HANDLER, else the auto-reply when replies
    are enabled, else none (messages are only stored)."""
    if settings.handler:
        return load_handler(settings.handler)
    if settings.reply_enabled:
        return AutoReply(settings.reply_text)
    return None


def load_handler(spec: str) -> Handler:
    """Import ``package.module:callable``; raises ValueError saying what is wrong."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError("WORKER_HANDLER must be 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"WORKER_HANDLER: cannot import {module_name} ({exc.name})") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"WORKER_HANDLER: {module_name} has no {attribute}")
    if not callable(target):
        raise ValueError(f"WORKER_HANDLER: {spec} is not callable")
    handler: Handler = target
    return handler


def _replies(result: Any) -> list[str]:
    if result is None:
        return []
    if isinstance(result, str):
        return [result] if result else []
    if isinstance(result, list | tuple) and all(isinstance(r, str) for r in result):
        return [r for r in result if r]
    raise HandlerError(
        f"a handler returns None, a text or a list of texts, not {type(result).__name__}"
    )


def is_async(handler: Handler) -> bool:
    """A coroutine function, or an object whose ``__call__`` is one."""
    call = getattr(handler, "__call__", None)  # noqa: B004 - instances with async __call__
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


async def invoke(handler: Handler, message: IncomingMessage, timeout: float) -> list[str]:
    """Run ``handler`` (sync in a thread, async in the loop) within ``timeout``."""
    result: Any
    if is_async(handler):
        result = await asyncio.wait_for(_awaited(handler(message)), timeout)
    else:
        result = await asyncio.wait_for(asyncio.to_thread(_call, handler, message), timeout)
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(_awaited(result), timeout)
    return _replies(result)


def _call(handler: Handler, message: IncomingMessage) -> Any:
    return handler(message)


async def _awaited(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
