"""An open-loop webhook sender that stays cheap: one request every 1/rate s,
whatever the answers do, over plain asyncio keep-alive connections (a
connection carries one request at a time; a new one is opened when all are
busy, up to ``max_connections``). An HTTP client library would cost the
benchmark process more CPU per request than the service it measures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, raw: bytes) -> int:
        """Send one request and read its answer; the status code."""
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            await self.reader.readexactly(length)
        if b"connection: close" in head.lower():
            raise ConnectionResetError("server closed the connection")
        return status

    def close(self) -> None:
        self.writer.close()


def request_bytes(port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def open_loop(
    port: int,
    path: str,
    headers: dict[str, str],
    bodies: Iterator[bytes],
    rate: float,
    seconds: float,
    *,
    max_connections: int = 256,
    timeout: float = 10.0,
) -> tuple[int, int]:
    """POST ``bodies`` at ``rate`` per second for ``seconds``; (sent, accepted 2xx).
    A request with no answer within ``timeout`` or whose connection failed
    counts as not accepted (never retried)."""
    idle: list[_Connection] = []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    statuses: list[int] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(raw: bytes) -> None:
        nonlocal opened
        conn: _Connection | None = None
        try:
            if idle:
                conn = idle.pop()
            else:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                conn = _Connection(reader, writer)
                opened += 1
            status = await asyncio.wait_for(conn.request(raw), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            statuses.append(0)
            if conn is not None:
                conn.close()
            return
        finally:
            slots.release()
        statuses.append(status)
        idle.append(conn)

    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        due = start + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing, not synchronisation
        await slots.acquire()
        task = asyncio.create_task(one(request_bytes(port, path, headers, next(bodies))))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 5)
    for conn in idle:
        with contextlib.suppress(Exception):
            conn.close()
    return sent, sum(1 for s in statuses if 200 <= s < 300)
