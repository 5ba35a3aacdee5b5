"""uvicorn, with a drain phase, a clean exit code and a header timeout."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def protocol_with_header_timeout(seconds: float) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol, cutting a client that has not sent its request
    line and headers within ``seconds`` of connecting (or of starting its
    next request): uvicorn itself waits forever, so a handful of slow clients
    could hold every connection."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


class DrainingServer(uvicorn.Server):
    """uvicorn with a drain phase and a clean exit code.

    First SIGTERM/SIGINT: the app starts answering 503 (``/ready`` and new
    webhooks, with ``Retry-After``) while in-flight requests finish; after the
    drain delay the listener closes and uvicorn waits for what is left. A second
    signal stops at once. Unlike stock uvicorn, the signal is not re-raised after
    the graceful stop, so the process flushes its telemetry and exits 0.
    """

    def __init__(
        self, config: uvicorn.Config, on_drain: Callable[[str], None], drain_delay: float
    ) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._drain_delay = drain_delay
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self._drain_delay
            self._on_drain(signal.Signals(sig).name)
        else:
            self.should_exit = True
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
            self.should_exit = True
        return await super().on_tick(counter)


def config(app: Any, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn config without its own logging setup or access log."""
    return uvicorn.Config(app, log_config=None, access_log=False, server_header=False, **kwargs)
