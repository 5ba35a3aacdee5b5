"""Typed settings every process shares; each service owns its own on top.

Each entrypoint builds its settings once with :func:`load_settings` and passes
them down; nothing reads the environment at import time. The standard
``OTEL_*`` variables are deliberately *not* duplicated here: the OpenTelemetry
SDK reads them itself, exactly as the specification defines them.

Field names say what a setting is (``port``, ``batch_size``); the environment
variable of each is given once, as its alias, and the names documented before
the settings moved next to their services keep working.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from wabot_shared import names
from wabot_shared.crypto import DISABLED, KeyError_, Keyring, keyring_from_setting

# Values people paste from examples; refused outside development.
_PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "password", "test", "example", "dev-secret", "xxx"}
)
MIN_SECRET_LENGTH = 16
# Environments where test-only switches (fault injection) may be turned on.
TEST_ENVIRONMENTS = frozenset({"test", "development"})


def env(*variables: str) -> Any:
    """``validation_alias`` reading the first of ``variables`` that is set."""
    return AliasChoices(*variables)


SETTINGS_CONFIG = SettingsConfigDict(
    extra="ignore", case_sensitive=False, frozen=True, populate_by_name=True
)


class CommonSettings(BaseSettings):
    """Settings every process has."""

    model_config = SETTINGS_CONFIG

    app_env: str = Field(
        default="production",
        validation_alias=env("APP_ENV"),
        description="deployment environment; 'development' relaxes secret checks",
    )
    log_level: str = Field(default="INFO", validation_alias=env("LOG_LEVEL"))
    shutdown_timeout: float = Field(
        default=20.0, gt=0, validation_alias=env("SHUTDOWN_TIMEOUT"), description="seconds"
    )

    @property
    def is_development(self) -> bool:
        return self.app_env == "development"

    @property
    def allows_test_switches(self) -> bool:
        """Fault injection and similar switches: only in test or development."""
        return self.app_env in TEST_ENVIRONMENTS

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

    redis_url: SecretStr = Field(validation_alias=env("REDIS_URL"))
    stream_name: str = Field(
        default=names.DEFAULT_STREAM, min_length=1, validation_alias=env("STREAM_NAME")
    )
    consumer_group: str = Field(
        default=names.DEFAULT_GROUP, min_length=1, validation_alias=env("CONSUMER_GROUP")
    )
    # Must be the same for ingest and worker; changing it moves chats between
    # partitions, so drain the stream first (see README, "Per-chat order").
    stream_partitions: int = Field(
        default=names.DEFAULT_PARTITIONS, ge=1, le=1024, validation_alias=env("STREAM_PARTITIONS")
    )
    # An evicting Redis silently drops queued messages: refused unless allowed.
    redis_allow_eviction: bool = Field(default=False, validation_alias=env("REDIS_ALLOW_EVICTION"))
    # Message content (text, names, raw payload) is stored only sealed with
    # these keys, in the stream and in PostgreSQL; `disabled` stores it in clear.
    message_encryption_keys: SecretStr | None = Field(
        default=None, validation_alias=env("MESSAGE_ENCRYPTION_KEYS")
    )

    @model_validator(mode="after")
    def _check_keys(self) -> QueueSettings:
        value = self.message_encryption_keys
        if value is None:
            if not self.is_development:
                raise ValueError(
                    "MESSAGE_ENCRYPTION_KEYS is required outside development "
                    f"(<key-id>:<base64 of 32 bytes>, or '{DISABLED}' to store content in clear)"
                )
            return self
        try:
            keyring_from_setting(value.get_secret_value())
        except KeyError_ as exc:
            raise ValueError(f"MESSAGE_ENCRYPTION_KEYS: {exc}") from None
        return self

    def keyring(self) -> Keyring | None:
        """The content keys; None when content is stored in clear."""
        value = self.message_encryption_keys
        return keyring_from_setting(value.get_secret_value() if value is not None else None)

    @property
    def encryption_disabled_explicitly(self) -> bool:
        value = self.message_encryption_keys
        return value is not None and value.get_secret_value().strip().lower() == DISABLED


def warn_if_content_in_clear(settings: QueueSettings, log: logging.Logger) -> None:
    """At every start: say so when message content is stored in clear."""
    if settings.message_encryption_keys is None or settings.encryption_disabled_explicitly:
        log.warning(
            "MESSAGE_ENCRYPTION_KEYS is %s: message text, names and payloads are stored in clear",
            "disabled" if settings.encryption_disabled_explicitly else "not set (development)",
        )


_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object) -> float | None:
    """``365d``, ``12h``, ``15m``, ``90s``, ``500ms`` or a number of seconds."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    text = str(value).strip().lower()
    if text in ("", "none", "off", "forever"):
        return None
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError("expected a duration such as 365d, 12h, 15m, 90s or 500ms")
    return float(match.group(1)) * _UNITS[match.group(2)]


Duration = Annotated[float | None, BeforeValidator(parse_duration)]


def check_secret(name: str, value: SecretStr | None, development: bool) -> None:
    """Refuse a placeholder or short secret outside development."""
    if value is None or development:
        return
    raw = value.get_secret_value()
    if raw.strip().lower() in _PLACEHOLDER_SECRETS or len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"{name} is a placeholder or shorter than {MIN_SECRET_LENGTH} characters; "
            "set a real secret (or APP_ENV=development for local use)"
        )


class MigrateSettings(CommonSettings):
    """Settings of the ``migrate`` command."""

    database_url: SecretStr = Field(validation_alias=env("DATABASE_URL"))
    migrations_dir: Path = Field(default=Path("migrations"), validation_alias=env("MIGRATIONS_DIR"))


S = TypeVar("S", bound=BaseSettings)


def _env_name(model: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "settings"
    field = model.model_fields.get(str(loc[0]))
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0]).upper()
    if isinstance(alias, str):
        return alias.upper()
    return str(loc[0]).upper()


def load_settings(cls: type[S], program: str) -> S:
    """Build settings from the environment or exit with one clear line.

    The line names every missing or invalid variable and never echoes a value,
    since values may be secrets.
    """
    try:
        return cls()
    except ValidationError as exc:
        missing = [_env_name(cls, e["loc"]) for e in exc.errors() if e["type"] == "missing"]
        invalid = [
            f"{_env_name(cls, e['loc'])} ({e['msg']})" if e["loc"] else e["msg"]
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
