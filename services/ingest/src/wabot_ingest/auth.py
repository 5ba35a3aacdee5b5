"""Webhook authentication: a secret header, Evolution's JWT, or a path secret.

* ``X-Webhook-Secret``: a per-instance custom header in Evolution.
* ``Authorization: Bearer <JWT>``: Evolution replaces a custom header named
  ``jwt_key`` by a token (HS256, ``iat``, ``exp`` = iat + 600 s, ``app`` =
  "evolution", ``action`` = "webhook"). It signs once per delivery and reuses
  the token for every retry (~25 minutes), so a validly signed token is
  accepted for ``WEBHOOK_JWT_GRACE_SECONDS`` past its ``exp``; a 401 there
  would lose the message, since Evolution never retries a 401. Tokens whose
  lifetime exceeds Evolution's ten minutes are refused: they were not minted
  by Evolution's webhook code. A replayed message is a no-op insert.
* ``/webhooks/evolution/<secret>``: for the global webhook, which sends no
  headers at all.

Each scheme accepts a current and a previous secret (rotation), compares in
constant time, and can be switched off (``WEBHOOK_AUTH_MODES``).

Tenants: an instance listed in ``WEBHOOK_INSTANCE_SECRETS`` has credentials
of its own. A request authenticated with them may only carry that instance's
events, and that instance's events need them: the global credentials do not
speak for it. Anything else is 403 and nothing is stored, so clinic A's
credentials can never store (or, with replies on, send) as clinic B.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt
from pydantic import SecretStr

from wabot_ingest.settings import AuthMode, IngestSettings

SECRET_HEADER = "x-webhook-secret"  # noqa: S105 - a header name, not a secret
JWT_APP = "evolution"
JWT_ACTION = "webhook"
JWT_LEEWAY_S = 60
# Evolution's tokens live 600 s; anything longer was not minted by it.
JWT_MAX_LIFETIME_S = 600 + JWT_LEEWAY_S


class Unauthorized(Exception):
    """Authentication failed; the message is safe to return and log."""


class Forbidden(Exception):
    """Authenticated, but not for this instance; safe to return and log."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request authenticated as: the global credentials (``instance`` is
    None) or one instance's own."""

    mode: AuthMode
    instance: str | None = None


def _secrets(*values: SecretStr | None) -> tuple[bytes, ...]:
    return tuple(v.get_secret_value().encode() for v in values if v is not None)


def _matches(candidate: str, secrets: Iterable[bytes]) -> bool:
    given = candidate.encode()
    # Compare against every secret, so the time taken does not say which matched.
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret)
    return found


class WebhookAuth:
    """Checks one request's credentials."""

    def __init__(self, settings: IngestSettings) -> None:
        self.modes: frozenset[AuthMode] = settings.auth_modes
        self._header = _secrets(settings.webhook_secret, settings.webhook_secret_previous)
        self._path = _secrets(settings.webhook_path_secret, settings.webhook_path_secret_previous)
        self._jwt_keys = tuple(
            k.get_secret_value()
            for k in (settings.webhook_jwt_key, settings.webhook_jwt_key_previous)
            if k is not None
        )
        self.grace_s = settings.webhook_jwt_grace_seconds
        self._instance_secrets = {
            name: c.secret.get_secret_value().encode()
            for name, c in settings.webhook_instance_secrets.items()
            if c.secret is not None
        }
        self._instance_jwt_keys = {
            name: c.jwt_key.get_secret_value()
            for name, c in settings.webhook_instance_secrets.items()
            if c.jwt_key is not None
        }
        self.tenants = frozenset(settings.webhook_instance_secrets)

    def path_secret_matches(self, candidate: str) -> bool:
        """Whether a URL path segment is a configured path secret."""
        return "path" in self.modes and _matches(candidate, self._path)

    def check(
        self, secret_header: str | None, authorization: str | None, path_secret: bool = False
    ) -> Principal:
        """Who authenticated the request, or raise Unauthorized."""
        if path_secret:
            return Principal("path")
        if secret_header is not None and "header" in self.modes:
            if _matches(secret_header, self._header):
                return Principal("header")
            # Every instance's secret is compared, so timing says nothing of which.
            owner = None
            for name, secret in self._instance_secrets.items():
                if hmac.compare_digest(secret_header.encode(), secret):
                    owner = name
            if owner is not None:
                return Principal("header", owner)
            raise Unauthorized("invalid webhook secret")
        if authorization and "jwt" in self.modes:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("unsupported authorization scheme")
            return Principal("jwt", self._check_jwt(token.strip()))
        raise Unauthorized("missing credentials")

    def authorize(self, principal: Principal, instance: str) -> None:
        """Raise Forbidden unless ``principal`` may carry ``instance``'s events."""
        if principal.instance is not None and principal.instance != instance:
            raise Forbidden("these credentials belong to another instance")
        if principal.instance is None and instance in self.tenants:
            raise Forbidden("this instance has credentials of its own")

    def _check_jwt(self, token: str) -> str | None:
        """Validate a token; the instance whose key signed it (None: a global key)."""
        claims = None
        signer: str | None = None
        keys = [(None, k) for k in self._jwt_keys] + list(self._instance_jwt_keys.items())
        for owner, key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["HS256"],
                    options={"require": ["exp", "iat"], "verify_exp": False, "verify_iat": False},
                )
                signer = owner
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError as exc:
                raise Unauthorized(f"invalid token ({type(exc).__name__})") from None
        if claims is None:
            raise Unauthorized("invalid token (InvalidSignatureError)")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat)):
            raise Unauthorized("invalid token (exp/iat are not numbers)")
        assert isinstance(exp, int | float)
        assert isinstance(iat, int | float)
        now = time.time()
        if exp - iat > JWT_MAX_LIFETIME_S:
            raise Unauthorized("token lifetime exceeds Evolution's ten minutes")
        if iat > now + JWT_LEEWAY_S:
            raise Unauthorized("token issued in the future")
        if now > exp + self.grace_s + JWT_LEEWAY_S:
            raise Unauthorized("token expired")
        if claims.get("app") != JWT_APP or claims.get("action") != JWT_ACTION:
            raise Unauthorized("token claims do not match an Evolution webhook")
        return signer
