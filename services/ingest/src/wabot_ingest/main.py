"""``ingest`` entrypoint: settings → telemetry → uvicorn → flush telemetry."""

from __future__ import annotations

import logging
from importlib.metadata import version as package_version

import uvicorn

from wabot_ingest.app import create_app
from wabot_shared.logs import configure_logging
from wabot_shared.settings import IngestSettings, load_settings
from wabot_shared.telemetry import setup_telemetry

log = logging.getLogger("wabot.ingest")
SERVICE_NAME = "ingest"


def main() -> None:
    """Run the ingest service until SIGTERM/SIGINT."""
    settings = load_settings(IngestSettings, SERVICE_NAME)
    version = package_version("wabot-ingest")
    telemetry = setup_telemetry(SERVICE_NAME, version, settings.app_env)
    configure_logging(SERVICE_NAME, settings.log_level, telemetry.logger_provider)
    app = create_app(settings, version)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.ingest_host,
            port=settings.ingest_port,
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(settings.shutdown_timeout),
        )
    )
    try:
        server.run()
    finally:
        # Last step: nothing else will log or emit spans after this.
        telemetry.shutdown(timeout=min(5.0, settings.shutdown_timeout))
