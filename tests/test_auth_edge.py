"""Authentication and edge limits of ingest, against the real process: what
Evolution really sends (JWTs reused through ~25 minutes of retries, the global
webhook's lack of headers), secret rotation, JWT-only mode, slow clients,
concurrency, and what production does not serve."""

from __future__ import annotations

import json
import secrets
import socket
import time
from typing import Any

import httpx
import jwt
import pytest

from tests.support.leaks import assert_no_leaks
from tests.support.messages import upsert
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import WEBHOOK_SECRET, Stack

JWT_KEY = "jwt-key-" + secrets.token_hex(16)


def token(key: str = JWT_KEY, *, issued_ago: float = 0, lifetime: float = 600) -> str:
    iat = int(time.time() - issued_ago)
    claims = {"iat": iat, "exp": iat + int(lifetime), "app": "evolution", "action": "webhook"}
    return jwt.encode(claims, key, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


@pytest.fixture
def body(samples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return upsert(samples["messages-upsert-text"], message_id="auth-" + secrets.token_hex(4))


def test_evolution_jwts_including_its_retries(stack: Stack, body: dict[str, Any]) -> None:
    stack.start_ingest(WEBHOOK_JWT_KEY=JWT_KEY)
    # A long-lived token was not minted by Evolution's webhook code.
    assert (
        stack.post(body, auth=False, headers=bearer(token(lifetime=10 * 365 * 86400))).status_code
        == 401
    )
    # Evolution reuses one token through its whole retry schedule (~25 min):
    # expired 15 minutes ago is still one of its retries.
    retry = token(issued_ago=25 * 60)
    assert stack.post(body, auth=False, headers=bearer(retry)).status_code == 202
    # Past the grace, or signed with another key: refused.
    stale = token(issued_ago=2 * 3600)
    assert stack.post(body, auth=False, headers=bearer(stale)).status_code == 401
    forged = token("another-key-" + secrets.token_hex(8), issued_ago=60)
    resp = stack.post(body, auth=False, headers=bearer(forged))
    assert (resp.status_code, resp.json()["detail"]) == (
        401,
        "invalid token (InvalidSignatureError)",
    )
    future = token(issued_ago=-3600)
    assert stack.post(body, auth=False, headers=bearer(future)).status_code == 401


def test_jwt_only_mode_refuses_the_static_secret(stack: Stack, body: dict[str, Any]) -> None:
    stack.start_ingest(WEBHOOK_JWT_KEY=JWT_KEY, WEBHOOK_AUTH_MODES="jwt")
    assert stack.post(body).status_code == 401  # the header secret is set but not accepted
    assert stack.post(body, auth=False, headers=bearer(token())).status_code == 202


def test_rotation_with_two_secrets_never_answers_401(
    stack: Stack, body: dict[str, Any], samples: dict[str, dict[str, Any]]
) -> None:
    old, new = WEBHOOK_SECRET, "new-" + secrets.token_hex(16)
    first = stack.start_ingest()
    assert stack.post(body, headers={"x-webhook-secret": old}).status_code == 202
    # Deploy the overlap: new secret first, the old one still accepted.
    port = stack.ingest_port
    assert first.terminate() == 0
    stack.start_ingest(port=port, WEBHOOK_SECRET=new, WEBHOOK_SECRET_PREVIOUS=old)
    for secret in (old, new, old, new):
        message = upsert(samples["messages-upsert-text"], message_id="rot-" + secrets.token_hex(4))
        assert stack.post(message, headers={"x-webhook-secret": secret}).status_code == 202
    assert stack.post(body, headers={"x-webhook-secret": "neither-" + old}).status_code == 401


def test_path_secret_mode_for_the_global_webhook(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    path_secret = "path-" + secrets.token_hex(16)
    stack.start_ingest(WEBHOOK_PATH_SECRET=path_secret, LOG_LEVEL="DEBUG")
    stack.start_worker(LOG_LEVEL="DEBUG")
    template = samples["messages-upsert-text"]
    for i, suffix in enumerate(["", "/messages-upsert", "/"]):
        message = upsert(template, message_id=f"path-{i}")
        resp = stack.post(message, auth=False, path=f"/webhooks/evolution/{path_secret}{suffix}")
        assert resp.status_code == 202, (suffix, resp.text)
    wrong = stack.post(template, auth=False, path="/webhooks/evolution/" + "x" * 32)
    assert wrong.status_code == 401
    # Header auth keeps working beside it, and so do event suffixes.
    assert (
        stack.post(
            upsert(template, message_id="hdr"), path="/webhooks/evolution/messages-upsert"
        ).status_code
        == 202
    )
    stack.wait_rows(4)
    # The secret is in no span name, url.path or http.route, metric or log line.
    assert_no_leaks(stack, {path_secret})


def raw_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing, or fail if it stays open."""
    deadline = time.monotonic() + seconds
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"connection still open after {seconds}s (got {received[:80]!r})")


def test_slow_clients_are_cut_off(stack: Stack, body: dict[str, Any]) -> None:
    stack.start_ingest(INGEST_HEADER_TIMEOUT="1", INGEST_BODY_TIMEOUT="1")
    assert stack.ingest_port is not None
    # Headers sent one slow piece at a time: cut after the header timeout.
    sock = raw_connection(stack.ingest_port)
    sock.sendall(b"POST /webhooks/evolution HTTP/1.1\r\nHost: x\r\n")
    assert closed_within(sock, 5) == b""
    sock.close()
    # A connection that never says anything is cut too.
    sock = raw_connection(stack.ingest_port)
    assert closed_within(sock, 5) == b""
    sock.close()
    # A body that never arrives in full: 408 (Evolution retries it), then closed.
    payload = json.dumps(body).encode()
    sock = raw_connection(stack.ingest_port)
    sock.sendall(
        b"POST /webhooks/evolution HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Webhook-Secret: {WEBHOOK_SECRET}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload[:10]
    )
    answer = closed_within(sock, 5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert b"retry-after" in answer.lower()
    # And the service still answers normally.
    assert stack.post(body).status_code == 202


def test_too_many_concurrent_webhooks_get_503_with_retry_after(
    stack: Stack, body: dict[str, Any]
) -> None:
    stack.start_ingest(INGEST_MAX_CONCURRENCY="1", INGEST_BODY_TIMEOUT="10")
    assert stack.ingest_port is not None
    payload = json.dumps(body).encode()
    hold = raw_connection(stack.ingest_port)
    hold.sendall(
        b"POST /webhooks/evolution HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Webhook-Secret: {WEBHOOK_SECRET}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload[:10]
    )

    def throttled() -> httpx.Response | None:
        resp = stack.post(body)
        return resp if resp.status_code == 503 else None

    resp = wait_for(throttled, timeout=10, what="a 503 while the only slot is held")
    assert resp.headers["retry-after"] == "5"
    hold.sendall(payload[10:])  # the held request completes normally
    assert hold.recv(4096).startswith(b"HTTP/1.1 202")
    hold.close()
    assert stack.post(body).status_code == 202


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
def test_api_docs_are_not_served_in_production(stack: Stack, path: str) -> None:
    stack.start_ingest(APP_ENV="production")
    assert httpx.get(stack.url(path)).status_code == 404


def test_api_docs_are_served_in_development(stack: Stack) -> None:
    stack.start_ingest(APP_ENV="development")
    assert httpx.get(stack.url("/openapi.json")).status_code == 200
