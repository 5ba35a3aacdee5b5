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
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable

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

    def path_secret_matches(self, candidate: str) -> bool:
        """Whether a URL path segment is a configured path secret."""
        return "path" in self.modes and _matches(candidate, self._path)

    def check(
        self, secret_header: str | None, authorization: str | None, path_secret: bool = False
    ) -> AuthMode:
        """Return the scheme that authenticated the request, or raise Unauthorized."""
        if path_secret:
            return "path"
        if secret_header is not None and "header" in self.modes:
            if _matches(secret_header, self._header):
                return "header"
            raise Unauthorized("invalid webhook secret")
        if authorization and "jwt" in self.modes:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("unsupported authorization scheme")
            self._check_jwt(token.strip())
            return "jwt"
        raise Unauthorized("missing credentials")

    def _check_jwt(self, token: str) -> None:
        claims = None
        for key in self._jwt_keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["HS256"],
                    options={"require": ["exp", "iat"], "verify_exp": False, "verify_iat": False},
                )
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
