"""The one environment builder: what every process the harness starts is given.

Children start from this process's environment minus every variable the
OpenTelemetry SDK or the backend configs read, so a developer's shell never
changes what a test measures; the harness then sets exactly what it means.
``make run`` is the exception: it passes the caller's OTEL_* on, as documented.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from wabot_shared.crypto import new_key_setting

# Read by the SDK (OTEL_*) and by otel-collector/, jaeger/ and the tool lookups.
CONFIG_PREFIXES = (
    "OTEL_",
    "OTELCOL_",
    "JAEGER_",
    "PROMETHEUS_",
    "ALERTMANAGER_",
    "VICTORIALOGS_",
)
# The exporters' "off" switches, for runs with no OTLP endpoint at all.
NO_EXPORT = {
    "OTEL_TRACES_EXPORTER": "none",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}


def clean_env(*drop: str, **overrides: str) -> dict[str, str]:
    """This process's environment without CONFIG_PREFIXES variables and ``drop``,
    then ``overrides``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES) and k not in drop
    }
    env.update(overrides)
    return env


# Content is sealed in every test run, as in production (one key per session).
CONTENT_KEYS = new_key_setting("test1")


def pipeline_env(
    *,
    redis_url: str,
    database_url: str,
    webhook_secret: str,
    app_env: str,
    otlp_endpoint: str | None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The settings ingest and worker share: where Redis, PostgreSQL and the OTLP
    receiver are, and the content keys. Without an endpoint the exporters are
    off (unless ``extra`` says otherwise) instead of logging export errors."""
    env = {
        "APP_ENV": app_env,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "WEBHOOK_SECRET": webhook_secret,
        "MESSAGE_ENCRYPTION_KEYS": CONTENT_KEYS,
    }
    if otlp_endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    else:
        env.update(NO_EXPORT)
    env.update(extra or {})
    return env
