"""Typed settings for every entrypoint, read from the environment.

Each entrypoint builds its settings once with :func:`load_settings` and passes
them down; nothing reads the environment at import time. The standard
``OTEL_*`` variables are deliberately *not* duplicated here: the OpenTelemetry
SDK reads them itself, exactly as the specification defines them.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wabot_shared import names

# Values people paste from examples; refused outside development.
_PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "password", "test", "example", "dev-secret", "xxx"}
)
MIN_SECRET_LENGTH = 16

FaultPoint = Literal["crash_after_read", "crash_before_ack", "hang_processing"]


class CommonSettings(BaseSettings):
    """Settings every process has."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    app_env: str = Field(
        default="production",
        description="deployment environment; 'development' relaxes secret checks",
    )
    log_level: str = "INFO"
    shutdown_timeout: float = Field(default=20.0, gt=0, description="drain budget in seconds")

    @property
    def is_development(self) -> bool:
        return self.app_env == "development"

    @field_validator("database_url", "redis_url", check_fields=False)
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty DSN makes libpq/redis fall back to their defaults (PG*
        # variables, the local socket) and use whatever server that happens to be.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


class QueueSettings(CommonSettings):
    """Settings of a process that talks to the Redis stream."""

    redis_url: SecretStr
    stream_name: str = names.DEFAULT_STREAM
    consumer_group: str = names.DEFAULT_GROUP


def _check_secret(name: str, value: SecretStr | None, development: bool) -> None:
    if value is None or development:
        return
    raw = value.get_secret_value()
    if raw.strip().lower() in _PLACEHOLDER_SECRETS or len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"{name} is a placeholder or shorter than {MIN_SECRET_LENGTH} characters; "
            "set a real secret (or APP_ENV=development for local use)"
        )


class IngestSettings(QueueSettings):
    """Settings of the ``ingest`` service."""

    webhook_secret: SecretStr
    webhook_jwt_key: SecretStr | None = None
    database_url: SecretStr | None = None
    ingest_host: str = "0.0.0.0"  # noqa: S104 - a container service listens on all interfaces
    ingest_port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    retry_after_seconds: int = Field(default=5, ge=1)
    # After SIGTERM, keep answering (503 on /ready and on webhooks) this long so
    # load balancers stop routing here before the listener closes.
    shutdown_drain_delay: float = Field(default=2.0, ge=0)

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> IngestSettings:
        _check_secret("WEBHOOK_SECRET", self.webhook_secret, self.is_development)
        _check_secret("WEBHOOK_JWT_KEY", self.webhook_jwt_key, self.is_development)
        return self


def _default_consumer_name() -> str:
    # Stable across restarts of the same container/machine, so a restarted
    # worker re-reads its own pending entries first.
    return socket.gethostname()


class WorkerSettings(QueueSettings):
    """Settings of the ``worker`` service."""

    database_url: SecretStr
    worker_health_host: str = "0.0.0.0"  # noqa: S104
    worker_health_port: int = Field(default=8001, ge=0, le=65535)
    worker_consumer_name: str = Field(default_factory=_default_consumer_name, min_length=1)
    worker_batch_size: int = Field(default=16, ge=1, le=1000)
    worker_block_ms: int = Field(default=1000, ge=1)
    # Tick of the maintenance task: heartbeat, queue depth sample, trimming.
    worker_stats_interval: float = Field(default=5.0, gt=0)
    db_pool_size: int = Field(default=10, ge=1)
    # Deliveries that fail with a non-transient error before dead-lettering.
    max_deliveries: int = Field(default=5, ge=1)
    # Backoff after a transient failure (PostgreSQL/Redis down), doubling to the max.
    retry_backoff_initial: float = Field(default=0.5, gt=0)
    retry_backoff_max: float = Field(default=30.0, gt=0)
    whatsapp_default_instance: str | None = None
    reply_enabled: bool = False
    evolution_api_url: str | None = None
    evolution_api_key: SecretStr | None = None
    reply_text: str = "Recebemos sua mensagem. Em breve retornaremos."
    reply_timeout: float = Field(default=5.0, gt=0)
    # Entries pending longer than this on a consumer are taken over (XAUTOCLAIM):
    # it must exceed the longest legitimate handling time of one message.
    reclaim_min_idle_ms: int = Field(default=60_000, ge=100)
    reclaim_interval: float = Field(default=15.0, gt=0)
    # Acknowledged entries are kept this long for inspection, then trimmed.
    stream_retention_seconds: int = Field(default=86_400, ge=0)
    # /health fails when the consumer loop made no progress for this long (a
    # stuck loop); must exceed the longest legitimate batch.
    worker_stall_seconds: float = Field(default=30.0, gt=0)
    # Test-only hook: SIGKILL itself at a precise point, or hang while processing.
    fault_injection: FaultPoint | None = None

    @field_validator("worker_consumer_name")
    @classmethod
    def _no_spaces(cls, value: str) -> str:
        if any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace")
        return value

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if self.reply_enabled and not (self.evolution_api_url and self.evolution_api_key):
            raise ValueError("REPLY_ENABLED needs EVOLUTION_API_URL and EVOLUTION_API_KEY")
        _check_secret("EVOLUTION_API_KEY", self.evolution_api_key, self.is_development)
        if self.fault_injection and self.app_env == "production":
            raise ValueError("FAULT_INJECTION is refused in production")
        return self


class WorkerCheckSettings(BaseSettings):
    """What ``worker --check`` needs: only where the health server listens."""

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    worker_health_port: int = Field(default=8001, ge=0, le=65535)


class MigrateSettings(CommonSettings):
    """Settings of the ``migrate`` command."""

    database_url: SecretStr
    migrations_dir: Path = Path("migrations")


S = TypeVar("S", bound=CommonSettings)


def _env_name(loc: tuple[int | str, ...]) -> str:
    return str(loc[0]).upper() if loc else "settings"


def load_settings(cls: type[S], program: str) -> S:
    """Build settings from the environment or exit with one clear line.

    The line names every missing or invalid variable and never echoes a value,
    since values may be secrets.
    """
    try:
        return cls()
    except ValidationError as exc:
        missing = [_env_name(e["loc"]) for e in exc.errors() if e["type"] == "missing"]
        invalid = [
            f"{_env_name(e['loc'])} ({e['msg']})" if e["loc"] else e["msg"]
            for e in exc.errors()
            if e["type"] != "missing"
        ]
        parts = []
        if missing:
            parts.append("missing required setting(s): " + ", ".join(missing))
        if invalid:
            parts.append("invalid setting(s): " + "; ".join(invalid))
        print(f"{program}: configuration error: " + " | ".join(parts), file=sys.stderr)
        raise SystemExit(2) from None


def env_flag(name: str) -> bool:
    """Read a boolean OTEL-style flag (``true``/``false``) from the environment."""
    return os.environ.get(name, "").strip().lower() == "true"
