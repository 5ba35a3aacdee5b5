"""A stand-in for Evolution API's send-text endpoint (the one thing we cannot run)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from tests.support.httpstub import HttpStub


class EvolutionStub(HttpStub):
    """Records every request; answers 201 like Evolution does."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def handle(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str, bytes]:
        with self.lock:
            self.requests.append(
                {"path": path, "headers": dict(headers), "json": json.loads(body or b"null")}
            )
        return 201, "application/json", b'{"key": {"id": "stub"}, "status": "PENDING"}'
