"""Handlers that tests plug into real workers (``WORKER_HANDLER=tests.support.handlers:...``).

They record what they saw in a JSON-lines file named by ``TEST_HANDLER_LOG``
(one line per call: chat, message id, wall-clock start and end, process id),
so a test can check order and overlap across worker processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

from wabot_worker.handler import IncomingMessage, Reply

# A chat whose messages make `failing` raise, and the handler's delay in seconds.
FAILING_CHAT = os.environ.get("TEST_FAILING_CHAT", "")
DELAY_S = float(os.environ.get("TEST_HANDLER_DELAY", "0.002"))
SLOW_CHAT = os.environ.get("TEST_SLOW_CHAT", "")


def _record(message: IncomingMessage, started: float) -> None:
    line = json.dumps(
        {
            "chat": message.chat_id,
            "message_id": message.message_id,
            "start": started,
            "end": time.time(),
            "pid": os.getpid(),
        }
    )
    _append(line)


def recording(message: IncomingMessage) -> Reply:
    """Takes a moment (so overlaps would show), records, replies once."""
    started = time.time()
    time.sleep(DELAY_S)
    _record(message, started)
    return None if message.from_me else f"ok {message.message_id}"


async def failing(message: IncomingMessage) -> Reply:
    """Raises for FAILING_CHAT, waits past any timeout for SLOW_CHAT."""
    started = time.time()
    if message.chat_id == FAILING_CHAT:
        raise RuntimeError("the handler refuses this chat")
    if message.chat_id == SLOW_CHAT:
        await asyncio.sleep(60)
    await asyncio.to_thread(_record, message, started)
    return None


async def media(message: IncomingMessage) -> Reply:
    """Reads the media bytes and records their size and digest."""
    started = time.time()
    size = digest = None
    if message.media is not None and message.media.available:
        data = await message.media.read()
        size, digest = len(data), hashlib.sha256(data).hexdigest()
    line = json.dumps(
        {
            "chat": message.chat_id,
            "message_id": message.message_id,
            "size": size,
            "sha256": digest,
            "start": started,
            "end": time.time(),
            "pid": os.getpid(),
        }
    )
    await asyncio.to_thread(_append, line)
    return None


def _append(line: str) -> None:
    with open(os.environ["TEST_HANDLER_LOG"], "a", encoding="utf-8") as log:
        log.write(line + "\n")
