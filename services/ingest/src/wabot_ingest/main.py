"""``ingest`` entrypoint: settings → telemetry → uvicorn → flush telemetry."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from importlib.metadata import version as package_version
from types import FrameType

import uvicorn

from wabot_ingest.app import create_app
from wabot_shared.logs import configure_logging
from wabot_shared.settings import IngestSettings, load_settings
from wabot_shared.telemetry import setup_telemetry

log = logging.getLogger("wabot.ingest")
SERVICE_NAME = "ingest"


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


def main() -> None:
    """Run the ingest service until SIGTERM/SIGINT."""
    settings = load_settings(IngestSettings, SERVICE_NAME)
    version = package_version("wabot-ingest")
    telemetry = setup_telemetry(SERVICE_NAME, version, settings.app_env)
    configure_logging(SERVICE_NAME, settings.log_level, telemetry.logger_provider)
    app = create_app(settings, version)
    # The budget: drain delay, then in-flight requests, then the telemetry flush.
    drain_delay = min(settings.shutdown_drain_delay, settings.shutdown_timeout / 3)
    flush_budget = min(5.0, settings.shutdown_timeout / 4)
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=settings.ingest_host,
            port=settings.ingest_port,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=max(
                1, int(settings.shutdown_timeout - drain_delay - flush_budget)
            ),
        ),
        on_drain=app.state.ingest.start_draining,
        drain_delay=drain_delay,
    )
    try:
        server.run()
    finally:
        # Last step: nothing else will log or emit spans after this.
        telemetry.shutdown(timeout=flush_budget)
