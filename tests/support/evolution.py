"""A stand-in for Evolution API's send-text endpoint (the one thing we cannot run)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from tests.support.httpstub import StubServer


class EvolutionStub:
    """Records every request; answers 201 like Evolution does."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = StubServer(self._handle)
        self.port = self.server.port

    def _handle(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str, bytes]:
        with self.lock:
            self.requests.append(
                {"path": path, "headers": dict(headers), "json": json.loads(body or b"null")}
            )
        return 201, "application/json", b'{"key": {"id": "stub"}, "status": "PENDING"}'

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EvolutionStub:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
