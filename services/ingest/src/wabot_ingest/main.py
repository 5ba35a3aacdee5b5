"""``ingest`` entrypoint: settings → telemetry → uvicorn → flush telemetry."""

from __future__ import annotations

import logging
from importlib.metadata import version as package_version

from wabot_ingest.app import create_app
from wabot_ingest.server import DrainingServer, config, protocol_with_header_timeout
from wabot_ingest.settings import IngestSettings
from wabot_shared.logs import configure_logging
from wabot_shared.redis_policy import check_at_start
from wabot_shared.settings import load_settings
from wabot_shared.telemetry import setup_telemetry

log = logging.getLogger("wabot.ingest")
SERVICE_NAME = "ingest"


def main() -> None:
    """Run the ingest service until SIGTERM/SIGINT."""
    settings = load_settings(IngestSettings, SERVICE_NAME)
    version = package_version("wabot-ingest")
    telemetry = setup_telemetry(SERVICE_NAME, version, settings.app_env)
    configure_logging(SERVICE_NAME, settings.log_level, telemetry.logger_provider)
    check_at_start(
        settings.redis_url.get_secret_value(), settings.redis_allow_eviction, log, SERVICE_NAME
    )
    app = create_app(settings, version)
    # The budget: drain delay, then in-flight requests, then the telemetry flush.
    drain_delay = min(settings.drain_delay, settings.shutdown_timeout / 3)
    flush_budget = min(5.0, settings.shutdown_timeout / 4)
    server = DrainingServer(
        config(
            app,
            host=settings.host,
            port=settings.port,
            http=protocol_with_header_timeout(settings.header_timeout),
            timeout_keep_alive=5,
            # A backstop behind the webhook's own limit (which answers with
            # Retry-After): connections beyond this get uvicorn's bare 503.
            limit_concurrency=settings.max_concurrency * 2 + 16,
            timeout_graceful_shutdown=max(
                1, int(settings.shutdown_timeout - drain_delay - flush_budget)
            ),
        ),
        on_drain=app.ingest.start_draining,
        drain_delay=drain_delay,
    )
    try:
        server.run()
    finally:
        # Last step: nothing else will log or emit spans after this.
        telemetry.shutdown(timeout=flush_budget)
