"""A stand-in for Evolution API's send-text endpoint (the one thing we cannot run).

It answers 201 with a message key, as Evolution does, and can be told to fail
for a while (a 503 or a 429, with or without ``Retry-After``), the way an
Evolution outage looks to the reply sender.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from tests.support.httpstub import HttpStub


class EvolutionStub(HttpStub):
    """Records every request (``requests``) and every accepted one (``accepted``)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self._fail_until = 0.0
        self._fail_status = 503
        self._retry_after: str | None = None
        # Set unless a test holds the answers back (see :meth:`hold`).
        self._answering = threading.Event()
        self._answering.set()

    def hold(self) -> None:
        """Keep every answer back until :meth:`answer` (a send in flight)."""
        self._answering.clear()

    def answer(self) -> None:
        """Let held and later requests be answered."""
        self._answering.set()

    def fail_for(self, seconds: float, status: int = 503, retry_after: float | None = None) -> None:
        """Answer ``status`` (with ``Retry-After``) for the next ``seconds``."""
        with self.lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_status = status
            self._retry_after = None if retry_after is None else f"{retry_after:g}"

    def handle(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[Any, ...]:
        assert self._answering.wait(timeout=30), "a held request was never answered"
        request = {
            "path": path,
            "headers": dict(headers),
            "json": json.loads(body or b"null"),
            "at": time.monotonic(),
        }
        with self.lock:
            self.requests.append(request)
            if time.monotonic() < self._fail_until:
                extra = {"retry-after": self._retry_after} if self._retry_after else {}
                request["status"] = self._fail_status
                return self._fail_status, "application/json", b'{"error": "unavailable"}', extra
            key = f"STUB{next(self._ids):06d}"
            request["status"] = 201
            request["key"] = key
            self.accepted.append(request)
        payload = json.dumps({"key": {"id": key, "fromMe": True}, "status": "PENDING"})
        return 201, "application/json", payload.encode()
