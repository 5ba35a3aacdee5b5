"""Settings of the ``ingest`` service (built in its entrypoint, passed down)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from wabot_shared.settings import QueueSettings, check_secret, env

AuthMode = Literal["header", "jwt", "path"]
AUTH_MODES: tuple[AuthMode, ...] = ("header", "jwt", "path")


class InstanceCredentials(BaseModel):
    """One instance's own webhook credentials (a secret, a JWT key, or both)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: SecretStr | None = None
    jwt_key: SecretStr | None = None


class IngestSettings(QueueSettings):
    """Settings of the ``ingest`` service."""

    # --- authentication (see README, "Authenticating Evolution") -----------------
    webhook_secret: SecretStr | None = Field(default=None, validation_alias=env("WEBHOOK_SECRET"))
    # Accepted too, so a secret can be rotated without a single 401.
    webhook_secret_previous: SecretStr | None = Field(
        default=None, validation_alias=env("WEBHOOK_SECRET_PREVIOUS")
    )
    webhook_jwt_key: SecretStr | None = Field(default=None, validation_alias=env("WEBHOOK_JWT_KEY"))
    webhook_jwt_key_previous: SecretStr | None = Field(
        default=None, validation_alias=env("WEBHOOK_JWT_KEY_PREVIOUS")
    )
    # Evolution signs a token once per delivery and reuses it for ~25 minutes
    # of retries; a validly signed token is accepted this long past its exp.
    webhook_jwt_grace_seconds: int = Field(
        default=1800, ge=0, le=86_400, validation_alias=env("WEBHOOK_JWT_GRACE_SECONDS")
    )
    # For the global webhook, which sends no headers: /webhooks/evolution/<secret>.
    webhook_path_secret: SecretStr | None = Field(
        default=None, validation_alias=env("WEBHOOK_PATH_SECRET")
    )
    webhook_path_secret_previous: SecretStr | None = Field(
        default=None, validation_alias=env("WEBHOOK_PATH_SECRET_PREVIOUS")
    )
    # {"<instance>": "<secret>"} or {"<instance>": {"secret": ..., "jwt_key": ...}}:
    # an instance listed here is accepted only with its own credentials, and
    # its credentials only for its own messages (otherwise 403).
    webhook_instance_secrets: dict[str, InstanceCredentials] = Field(
        default_factory=dict, validation_alias=env("WEBHOOK_INSTANCE_SECRETS")
    )
    # Which schemes are accepted; default: every one whose secret is set.
    # `jwt` alone refuses the static header secret even when it is set.
    webhook_auth_modes: tuple[AuthMode, ...] | None = Field(
        default=None, validation_alias=env("WEBHOOK_AUTH_MODES")
    )

    # Keep media keys, direct media URLs and thumbnails in what is stored
    # (off: a media key with its URL is enough to decrypt a patient's photo).
    store_media_keys: bool = Field(default=False, validation_alias=env("STORE_MEDIA_KEYS"))

    # --- the server ------------------------------------------------------------------
    database_url: SecretStr | None = Field(default=None, validation_alias=env("DATABASE_URL"))
    host: str = Field(
        default="0.0.0.0",  # noqa: S104 - a container service listens on all interfaces
        validation_alias=env("INGEST_HOST"),
    )
    port: int = Field(default=8000, ge=0, le=65535, validation_alias=env("INGEST_PORT"))
    max_body_bytes: int = Field(
        default=1_048_576, gt=0, validation_alias=env("INGEST_MAX_BODY_BYTES", "MAX_BODY_BYTES")
    )
    # A media message with its bytes in the webhook (Evolution's webhookBase64)
    # may be this large (~26 MB of media); at most this many such bodies are
    # read and stored at once (more wait, then get 503 with Retry-After).
    max_media_body_bytes: int = Field(
        default=36 * 1_048_576, gt=0, validation_alias=env("INGEST_MAX_MEDIA_BODY_BYTES")
    )
    max_large_bodies: int = Field(default=2, ge=1, validation_alias=env("INGEST_MAX_LARGE_BODIES"))
    retry_after_seconds: int = Field(
        default=5, ge=1, validation_alias=env("INGEST_RETRY_AFTER_SECONDS", "RETRY_AFTER_SECONDS")
    )
    # A client has this long to send its request line and headers, and this
    # long to send its body; then the connection is cut (slow-client defence).
    header_timeout: float = Field(default=10.0, gt=0, validation_alias=env("INGEST_HEADER_TIMEOUT"))
    body_timeout: float = Field(default=30.0, gt=0, validation_alias=env("INGEST_BODY_TIMEOUT"))
    # Webhooks handled at once; more get 503 with Retry-After (Evolution retries).
    max_concurrency: int = Field(default=512, ge=1, validation_alias=env("INGEST_MAX_CONCURRENCY"))
    # /health details (dependencies, worker counts) for callers without the
    # webhook secret; off by default (they describe the deployment).
    health_details: bool = Field(default=False, validation_alias=env("INGEST_HEALTH_DETAILS"))
    # After SIGTERM, keep answering (503 on /ready and on webhooks) this long so
    # load balancers stop routing here before the listener closes.
    drain_delay: float = Field(
        default=2.0, ge=0, validation_alias=env("INGEST_DRAIN_DELAY", "SHUTDOWN_DRAIN_DELAY")
    )

    @field_validator("webhook_instance_secrets", mode="before")
    @classmethod
    def _credentials(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"secret": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("webhook_auth_modes", mode="before")
    @classmethod
    def _split_modes(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(m.strip().lower() for m in value.split(",") if m.strip())
        return value

    @property
    def auth_modes(self) -> frozenset[AuthMode]:
        """The schemes accepted, after defaults."""
        if self.webhook_auth_modes is not None:
            return frozenset(self.webhook_auth_modes)
        configured: set[AuthMode] = set()
        instances = self.webhook_instance_secrets.values()
        if self.webhook_secret is not None or any(c.secret for c in instances):
            configured.add("header")
        if self.webhook_jwt_key is not None or any(c.jwt_key for c in instances):
            configured.add("jwt")
        if self.webhook_path_secret is not None:
            configured.add("path")
        return frozenset(configured)

    @model_validator(mode="after")
    def _check(self) -> IngestSettings:
        dev = self.is_development
        for name, value in (
            ("WEBHOOK_SECRET", self.webhook_secret),
            ("WEBHOOK_SECRET_PREVIOUS", self.webhook_secret_previous),
            ("WEBHOOK_JWT_KEY", self.webhook_jwt_key),
            ("WEBHOOK_JWT_KEY_PREVIOUS", self.webhook_jwt_key_previous),
            ("WEBHOOK_PATH_SECRET", self.webhook_path_secret),
            ("WEBHOOK_PATH_SECRET_PREVIOUS", self.webhook_path_secret_previous),
        ):
            check_secret(name, value, dev)
        for instance, creds in self.webhook_instance_secrets.items():
            if creds.secret is None and creds.jwt_key is None:
                raise ValueError(f"WEBHOOK_INSTANCE_SECRETS: {instance!r} has no secret or jwt_key")
            check_secret(f"WEBHOOK_INSTANCE_SECRETS[{instance!r}].secret", creds.secret, dev)
            check_secret(f"WEBHOOK_INSTANCE_SECRETS[{instance!r}].jwt_key", creds.jwt_key, dev)
        modes = self.auth_modes
        if not modes:
            raise ValueError(
                "no webhook authentication configured: set WEBHOOK_SECRET "
                "(or WEBHOOK_JWT_KEY, WEBHOOK_PATH_SECRET, WEBHOOK_INSTANCE_SECRETS)"
            )
        instances = self.webhook_instance_secrets.values()
        needs: dict[str, object] = {
            "header": self.webhook_secret or next((c.secret for c in instances if c.secret), None),
            "jwt": self.webhook_jwt_key or next((c.jwt_key for c in instances if c.jwt_key), None),
            "path": self.webhook_path_secret,
        }
        names = {
            "header": "WEBHOOK_SECRET",
            "jwt": "WEBHOOK_JWT_KEY",
            "path": "WEBHOOK_PATH_SECRET",
        }
        for mode in modes:
            if needs[mode] is None:
                raise ValueError(f"WEBHOOK_AUTH_MODES includes {mode} but {names[mode]} is not set")
        return self
