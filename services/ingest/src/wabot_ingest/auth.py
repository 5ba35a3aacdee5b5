"""Webhook authentication: a shared secret header or Evolution's JWT mode.

Evolution sends per-instance custom headers, so ``X-Webhook-Secret`` works
everywhere a header can be configured. When the instance header is configured
as ``jwt_key``, Evolution replaces it with ``Authorization: Bearer <JWT>``
(HS256, ``exp`` = iat + 600 s, ``app`` = "evolution", ``action`` = "webhook").
"""

from __future__ import annotations

import hmac

import jwt
from pydantic import SecretStr

SECRET_HEADER = "x-webhook-secret"  # noqa: S105 - a header name, not a secret
JWT_APP = "evolution"
JWT_ACTION = "webhook"
JWT_LEEWAY_S = 30


class Unauthorized(Exception):
    """Authentication failed; the message is safe to return and log."""


class WebhookAuth:
    """Checks one request's headers; constant-time for the shared secret."""

    def __init__(self, secret: SecretStr, jwt_key: SecretStr | None) -> None:
        self._secret = secret.get_secret_value().encode()
        self._jwt_key = jwt_key.get_secret_value() if jwt_key else None

    def check(self, secret_header: str | None, authorization: str | None) -> str:
        """Return the scheme that authenticated the request, or raise Unauthorized."""
        if secret_header is not None:
            if hmac.compare_digest(secret_header.encode(), self._secret):
                return "secret"
            raise Unauthorized("invalid webhook secret")
        if authorization and self._jwt_key is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthorized("unsupported authorization scheme")
            self._check_jwt(token.strip())
            return "jwt"
        raise Unauthorized("missing credentials")

    def _check_jwt(self, token: str) -> None:
        assert self._jwt_key is not None
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=["HS256"],
                options={"require": ["exp", "iat"]},
                leeway=JWT_LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token ({type(exc).__name__})") from None
        if claims.get("app") != JWT_APP or claims.get("action") != JWT_ACTION:
            raise Unauthorized("token claims do not match an Evolution webhook")
