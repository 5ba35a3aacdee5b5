"""Settings of the ``worker`` service (built in its entrypoint, passed down)."""

from __future__ import annotations

import socket

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from wabot_shared.settings import SETTINGS_CONFIG, Duration, QueueSettings, check_secret, env
from wabot_worker.faults import FaultPoint

DEFAULT_REPLY_TEXT = "Recebemos sua mensagem. Em breve retornaremos."


def _default_consumer_name() -> str:
    # Stable across restarts of the same container/machine, so logs and
    # Redis' consumer list read the same after a restart.
    return socket.gethostname()


class WorkerSettings(QueueSettings):
    """Settings of the ``worker`` service."""

    database_url: SecretStr = Field(validation_alias=env("DATABASE_URL"))
    health_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - a container service listens on all interfaces
        validation_alias=env("WORKER_HEALTH_HOST"),
    )
    health_port: int = Field(
        default=8001, ge=0, le=65535, validation_alias=env("WORKER_HEALTH_PORT")
    )
    consumer_name: str = Field(
        default_factory=_default_consumer_name,
        min_length=1,
        validation_alias=env("WORKER_CONSUMER_NAME"),
    )
    # Entries read per XREADGROUP, and the most one chat hands to one round of
    # storing (its later messages wait for the next round, in order).
    batch_size: int = Field(default=200, ge=1, le=5000, validation_alias=env("WORKER_BATCH_SIZE"))
    chat_batch_size: int = Field(
        default=50, ge=1, le=1000, validation_alias=env("WORKER_CHAT_BATCH_SIZE")
    )
    # Entries read but not yet acknowledged that this worker holds at most.
    max_buffered: int = Field(default=2000, ge=1, validation_alias=env("WORKER_MAX_BUFFERED"))
    # Chats handled at the same time (each one in order, one round at a time).
    concurrency: int = Field(
        default=256, ge=1, le=10_000, validation_alias=env("WORKER_CONCURRENCY")
    )
    block_ms: int = Field(default=1000, ge=1, validation_alias=env("WORKER_BLOCK_MS"))
    # Tick of the maintenance task: queue depth sample, trimming.
    stats_interval: float = Field(default=5.0, gt=0, validation_alias=env("WORKER_STATS_INTERVAL"))
    # Partition leases: a crashed worker's partitions are taken over after this
    # long; leases are renewed (and the share rebalanced) four times per period.
    # (RECLAIM_MIN_IDLE_MS, the setting of the same role before partitions, still works.)
    partition_lease_ms: int = Field(
        default=10_000,
        ge=500,
        validation_alias=env("WORKER_PARTITION_LEASE_MS", "RECLAIM_MIN_IDLE_MS"),
    )
    pool_size: int = Field(
        default=10, ge=1, validation_alias=env("WORKER_POOL_SIZE", "DB_POOL_SIZE")
    )
    # How long a statement waits for a pooled connection (then: transient failure).
    pool_timeout: float = Field(default=10.0, gt=0, validation_alias=env("WORKER_POOL_TIMEOUT"))
    # Rows written per transaction at most (group commit of concurrent chats).
    max_rows_per_commit: int = Field(
        default=1000, ge=1, validation_alias=env("WORKER_MAX_ROWS_PER_COMMIT")
    )
    # Failed attempts that count (see README, "Failures") before dead-lettering.
    max_deliveries: int = Field(default=5, ge=1, validation_alias=env("MAX_DELIVERIES"))
    # Backoff of one failing entry, doubling to the max.
    retry_backoff_initial: float = Field(
        default=0.5, gt=0, validation_alias=env("RETRY_BACKOFF_INITIAL")
    )
    retry_backoff_max: float = Field(default=30.0, gt=0, validation_alias=env("RETRY_BACKOFF_MAX"))
    default_instance: str | None = Field(
        default=None, validation_alias=env("WHATSAPP_DEFAULT_INSTANCE")
    )
    # Instance resolution is cached this long (and dropped when the tables change).
    instance_cache_seconds: float = Field(
        default=30.0, ge=0, validation_alias=env("WORKER_INSTANCE_CACHE_SECONDS")
    )
    reply_enabled: bool = Field(default=False, validation_alias=env("REPLY_ENABLED"))
    evolution_api_url: str | None = Field(default=None, validation_alias=env("EVOLUTION_API_URL"))
    evolution_api_key: SecretStr | None = Field(
        default=None, validation_alias=env("EVOLUTION_API_KEY")
    )
    reply_text: str = Field(default=DEFAULT_REPLY_TEXT, validation_alias=env("REPLY_TEXT"))
    reply_timeout: float = Field(default=5.0, gt=0, validation_alias=env("REPLY_TIMEOUT"))
    # Your bot: package.module:callable (see README, "Your handler"); unset:
    # the built-in auto-reply (REPLY_TEXT, when REPLY_ENABLED).
    handler: str | None = Field(default=None, validation_alias=env("WORKER_HANDLER"))
    handler_timeout: float = Field(
        default=10.0, gt=0, validation_alias=env("WORKER_HANDLER_TIMEOUT")
    )
    # Replies: retried with exponential backoff (honouring Retry-After) until
    # accepted, or failed after this many attempts or this long.
    reply_max_attempts: int = Field(default=15, ge=1, validation_alias=env("REPLY_MAX_ATTEMPTS"))
    reply_budget: Duration = Field(default=6 * 3600.0, validation_alias=env("REPLY_BUDGET"))
    reply_backoff_initial: float = Field(
        default=1.0, gt=0, validation_alias=env("REPLY_BACKOFF_INITIAL")
    )
    reply_backoff_max: float = Field(default=300.0, gt=0, validation_alias=env("REPLY_BACKOFF_MAX"))
    reply_concurrency: int = Field(default=16, ge=1, validation_alias=env("REPLY_CONCURRENCY"))
    reply_poll_interval: float = Field(
        default=1.0, gt=0, validation_alias=env("REPLY_POLL_INTERVAL")
    )
    # Acknowledged entries are kept this long (a replay window), then trimmed:
    # the row is the durable copy, and Redis then holds minutes of messages.
    stream_retention_seconds: int = Field(
        default=600, ge=0, validation_alias=env("STREAM_RETENTION_SECONDS")
    )
    # Content (text, name, raw payload) of older messages is purged, the row's
    # metadata kept; unset keeps it. Dead letters older than theirs are removed.
    message_retention: Duration = Field(default=None, validation_alias=env("MESSAGE_RETENTION"))
    dead_letter_retention: Duration = Field(
        default=14 * 86400.0, validation_alias=env("DEAD_LETTER_RETENTION")
    )
    purge_interval: float = Field(
        default=60.0, gt=0, le=60.0, validation_alias=env("WORKER_PURGE_INTERVAL")
    )
    purge_batch_size: int = Field(default=500, ge=1, validation_alias=env("WORKER_PURGE_BATCH"))
    # Replies go to person chats only (not groups, broadcasts or newsletters).
    reply_to_groups: bool = Field(default=False, validation_alias=env("REPLY_TO_GROUPS"))
    # /health fails when entries wait but nothing was acknowledged for this
    # long, or an entry has been failing for this long.
    stall_seconds: float = Field(default=30.0, gt=0, validation_alias=env("WORKER_STALL_SECONDS"))
    # Where `wabot trace` reads a message's trace and log lines (make run's ports).
    jaeger_query_url: str = Field(
        default="http://127.0.0.1:16686", validation_alias=env("JAEGER_QUERY_URL")
    )
    logs_query_url: str = Field(
        default="http://127.0.0.1:19428", validation_alias=env("LOGS_QUERY_URL")
    )
    # Test-only: kill or hang the worker at a precise point (test/development only).
    fault: FaultPoint | None = Field(
        default=None, validation_alias=env("WORKER_FAULT", "FAULT_INJECTION")
    )

    @field_validator("consumer_name")
    @classmethod
    def _no_spaces(cls, value: str) -> str:
        if any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace")
        return value

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        if self.reply_enabled and not (self.evolution_api_url and self.evolution_api_key):
            raise ValueError("REPLY_ENABLED needs EVOLUTION_API_URL and EVOLUTION_API_KEY")
        check_secret("EVOLUTION_API_KEY", self.evolution_api_key, self.is_development)
        if self.fault and not self.allows_test_switches:
            raise ValueError("WORKER_FAULT (FAULT_INJECTION) is only allowed with APP_ENV=test")
        return self


class WorkerCheckSettings(BaseSettings):
    """What ``worker --check`` needs: only where the health server listens."""

    model_config = SETTINGS_CONFIG

    health_port: int = Field(
        default=8001, ge=0, le=65535, validation_alias=env("WORKER_HEALTH_PORT")
    )
