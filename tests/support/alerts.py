"""A local stand-in for the chat bridge Alertmanager's webhooks go to: it
records every notification, and tests wait for the one they expect."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tests.support.httpstub import HttpStub
from tests.support.stack.net import wait_for


@dataclass
class Notification:
    """One webhook POST from Alertmanager (payload version 4)."""

    index: int
    body: dict[str, Any]

    def alerts(self, alertname: str, status: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.body.get("alerts", [])
            if a["labels"].get("alertname") == alertname and a["status"] == status
        ]


class AlertReceiver(HttpStub):
    """A local stand-in for the chat bridge Alertmanager's webhooks go to."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[Notification] = []
        self.lock = threading.Lock()

    def handle(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str, bytes]:
        with self.lock:
            self.received.append(Notification(len(self.received), json.loads(body)))
        return 200, "application/json", b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def mark(self) -> int:
        """A position; later waits only look at notifications after it."""
        with self.lock:
            return len(self.received)

    def notifications(self, after: int = 0) -> list[Notification]:
        with self.lock:
            return list(self.received[after:])

    def wait_for(
        self, alertname: str, status: str, *, after: int, timeout: float
    ) -> tuple[Notification, dict[str, Any]]:
        """The first notification after ``after`` carrying ``alertname`` in ``status``."""

        def found() -> tuple[Notification, dict[str, Any]] | None:
            for note in self.notifications(after):
                alerts = note.alerts(alertname, status)
                if alerts:
                    return note, alerts[0]
            return None

        try:
            result = wait_for(
                found, timeout=timeout, what=f"a {status} {alertname} notification", interval=0.2
            )
            assert result is not None
            return result
        except AssertionError as exc:
            seen = [
                (a["labels"].get("alertname"), a["status"])
                for n in self.notifications(after)
                for a in n.body.get("alerts", [])
            ]
            raise AssertionError(f"{exc}; notifications since the mark: {seen}") from None
