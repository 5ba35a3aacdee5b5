"""A minimal HTTP server for the worker's ``/health`` (no framework needed).

Healthy means: the consumer loop made progress recently, Redis answers PING,
PostgreSQL answers a query, and the worker has completed its first partition
assignment tick. Anything else is 503 with the failing checks.

There is one check, used both as readiness (a rolling deploy waits for it
before it stops the next old worker) and as liveness (``worker --check``,
Fly's machine check). The assignment part is why it doubles as readiness: a
worker that answered 200 before its first tick would not yet be counted by
the others nor own anything, so the deploy would stop the last running worker
with nobody ready to take its partitions. After the first tick it is
counted, holds a heartbeat, and took the free partitions up to its fair share
(possibly none, if the others hold them all: they give its share up at their
next tick, and their release wakes it; see :meth:`Assignment.ready`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wabot_worker.assignment import Assignment

log = logging.getLogger("wabot.worker.health")

HealthFn = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def assignment_check(assignment: Assignment) -> Callable[[], Awaitable[dict[str, Any]]]:
    """The readiness part of /health: fails until the first assignment tick."""

    async def check() -> dict[str, Any]:
        return {
            "status": "pass" if assignment.ready() else "fail",
            "ticks": assignment.ticks,
            "partitions": len(assignment.owned),
            "live_workers": assignment.live_workers,
        }

    return check


class HealthServer:
    """Serves ``GET /health`` on its own port."""

    def __init__(self, host: str, port: int, health: HealthFn) -> None:
        self.host = host
        self.port = port
        self._health = health
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        log.info("health server listening", extra={"server.port": self.port})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = request_line.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            if method not in ("GET", "HEAD"):
                status, body = 405, {"error": "method not allowed"}
            elif path in ("/health", "/healthz", "/ready"):
                ok, body = await self._health()
                status = 200 if ok else 503
            else:
                status, body = 404, {"error": "not found"}
            payload = json.dumps(body).encode()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head + (payload if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # a client that went away or never finished its request
        finally:
            writer.close()
