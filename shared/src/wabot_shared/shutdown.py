"""Signal handling for a graceful, bounded shutdown.

The first SIGTERM/SIGINT asks the process to drain; a second one exits at once
(anything unacknowledged stays pending in Redis and is read again, so nothing is
lost either way).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

log = logging.getLogger(__name__)

EXIT_ON_SECOND_SIGNAL = 130


class GracefulShutdown:
    """An event set by the first termination signal."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.signal_name: str | None = None
        self.requested_at: float | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle SIGTERM and SIGINT on ``loop``."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.requested.is_set():
            log.warning("second %s: exiting immediately", sig.name)
            logging.shutdown()
            os._exit(EXIT_ON_SECOND_SIGNAL)
        self.signal_name = sig.name
        self.requested_at = time.monotonic()
        log.info("%s received: draining", sig.name)
        self.requested.set()

    def request(self, reason: str) -> None:
        """Ask for shutdown from code (e.g. a fatal error)."""
        if not self.requested.is_set():
            self.signal_name = reason
            self.requested_at = time.monotonic()
            self.requested.set()

    def elapsed(self) -> float:
        """Seconds since shutdown was requested."""
        return 0.0 if self.requested_at is None else time.monotonic() - self.requested_at
