"""The ingest HTTP contract: what each kind of request gets, and what is enqueued."""

from __future__ import annotations

import copy
import json
import secrets
import time
from typing import Any

import httpx
import jwt
import pytest

from tests.support.stack.net import http_get, wait_for
from tests.support.stack.pipeline import WEBHOOK_SECRET, Stack
from tests.support.stack.servers import running_redis

JWT_KEY = "jwt-key-" + secrets.token_hex(16)


def token(**overrides: Any) -> str:
    now = int(time.time())
    claims = {"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook", **overrides}
    key = claims.pop("key", JWT_KEY)
    return jwt.encode(claims, key, algorithm="HS256")


@pytest.fixture
def ingest(stack: Stack) -> Stack:
    stack.start_ingest(WEBHOOK_JWT_KEY=JWT_KEY)
    return stack


def test_event_suffix_paths_of_webhook_by_events_mode(
    ingest: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    resp = ingest.post(samples["messages-upsert-text"], path="/webhooks/evolution/messages-upsert")
    assert resp.status_code == 202
    assert resp.json()["status"] == "queued"
    resp = ingest.post(samples["connection-update"], path="/webhooks/evolution/connection-update")
    assert resp.json() == {"status": "ignored", "event": "connection.update"}
    assert ingest.queue.length() == 1


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing credentials"),
        ({"x-webhook-secret": "wrong-" + secrets.token_hex(8)}, "invalid webhook secret"),
        (
            {"authorization": "Bearer " + token(key="forged-" + secrets.token_hex(16))},
            "invalid token",
        ),
        ({"authorization": "Bearer " + token(iat=1, exp=2)}, "token expired"),
        ({"authorization": "Bearer " + token(app="other")}, "claims"),
        ({"authorization": "Bearer " + token(action="other")}, "claims"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "unsupported"),
    ],
)
def test_bad_credentials_get_401_and_nothing_is_enqueued(
    ingest: Stack, samples: dict[str, dict[str, Any]], headers: dict[str, str], detail: str
) -> None:
    resp = ingest.post(samples["messages-upsert-text"], auth=False, headers=headers)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "unauthorized"
    assert detail in resp.json()["detail"]
    assert ingest.queue.length() == 0


def test_evolution_jwt_mode_is_accepted(ingest: Stack, samples: dict[str, dict[str, Any]]) -> None:
    resp = ingest.post(
        samples["messages-upsert-text"], auth=False, headers={"authorization": f"Bearer {token()}"}
    )
    assert resp.status_code == 202, resp.text
    assert ingest.queue.length() == 1


def _without(sample: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(sample)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


@pytest.mark.parametrize(
    ("mutate", "status", "error"),
    [
        (lambda s: b'{"event": "messages.upsert", "instance": ', 400, "malformed_json"),
        (lambda s: b"\xff\xfe not json", 400, "malformed_json"),
        (lambda s: b"[]", 422, "invalid_envelope"),
        (lambda s: _without(s, "event"), 422, "invalid_envelope"),
        (lambda s: _without(s, "instance"), 422, "invalid_envelope"),
        (lambda s: _without(s, "data", "key", "id"), 422, "invalid_message"),
        (lambda s: _without(s, "data", "key", "remoteJid"), 422, "invalid_message"),
        (lambda s: _without(s, "data", "key"), 422, "invalid_message"),
        (lambda s: {**s, "data": "not an object"}, 422, "invalid_message"),
    ],
)
def test_malformed_bodies_are_rejected_with_a_clear_error(
    ingest: Stack, samples: dict[str, dict[str, Any]], mutate: Any, status: int, error: str
) -> None:
    body = mutate(samples["messages-upsert-text"])
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = ingest.post(None, raw=raw)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error
    assert ingest.queue.length() == 0
    # The error names where the problem is, never the submitted values.
    assert "Olá" not in resp.text
    assert "5511987650001" not in resp.text


def test_unknown_message_types_and_extra_fields_are_still_queued(
    ingest: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    body = copy.deepcopy(samples["messages-upsert-text"])
    body["data"]["messageType"] = "someFutureMessage"
    body["data"]["message"] = {"someFutureMessage": {"x": 1}}
    body["data"]["key"]["remoteJidAlt"] = "123@lid"
    body["brandNewEnvelopeField"] = {"nested": True}
    resp = ingest.post(body)
    assert resp.status_code == 202, resp.text
    assert ingest.queue.length() == 1


def test_wrong_content_type_is_415(ingest: Stack, samples: dict[str, dict[str, Any]]) -> None:
    resp = ingest.post(samples["messages-upsert-text"], headers={"content-type": "text/plain"})
    assert resp.status_code == 415
    assert resp.json()["error"] == "unsupported_media_type"
    assert ingest.queue.length() == 0


def test_oversized_body_is_413(stack: Stack, samples: dict[str, dict[str, Any]]) -> None:
    stack.start_ingest(MAX_BODY_BYTES="4096")
    body = copy.deepcopy(samples["messages-upsert-text"])
    body["data"]["message"]["conversation"] = "x" * 10_000
    resp = stack.post(body)
    assert resp.status_code == 413
    assert resp.json()["error"] == "body_too_large"
    assert stack.queue.length() == 0


def test_redis_down_gives_503_with_retry_after_and_recovers(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    with running_redis("wabot-redis-own-") as own:
        stack.use_redis(own)
        stack.start_ingest()
        assert stack.post(samples["messages-upsert-text"]).status_code == 202
        own.stop()
        resp = stack.post(samples["messages-upsert-image"])
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "5"
        assert resp.json()["error"] == "unavailable"
        assert http_get(stack.url("/ready"))[0] == 503
        own.start()  # AOF on: the first message is still there
        wait_for(
            lambda: stack.post(samples["messages-upsert-image"]).status_code == 202,
            timeout=20,
            what="ingest accepting again after Redis came back",
        )
        assert stack.queue.length() == 2


def test_health_and_ready_report_their_checks(ingest: Stack) -> None:
    # No worker yet: ingest can enqueue (ready) but the pipeline is not healthy.
    # An anonymous caller learns only that; the checks are for the webhook's sender.
    status, body = http_get(ingest.url("/health"))
    assert (status, json.loads(body)) == (503, {"status": "fail"})
    resp = httpx.get(ingest.url("/health"), headers={"x-webhook-secret": WEBHOOK_SECRET})
    assert resp.status_code == 503
    checks = resp.json()["checks"]
    assert checks["workers"] == {
        "status": "fail",
        "live": 0,
        "duration_ms": checks["workers"]["duration_ms"],
    }
    assert checks["redis"]["status"] == "pass"
    assert checks["postgres"]["status"] == "pass"
    assert http_get(ingest.url("/ready"))[0] == 200
    worker = ingest.start_worker()
    wait_for(
        lambda: http_get(ingest.url("/health"))[0] == 200,
        timeout=20,
        what="ingest /health once a worker heartbeats",
    )
    worker.terminate()
    wait_for(
        lambda: http_get(ingest.url("/health"))[0] == 503,
        timeout=20,
        what="ingest /health failing once the worker is gone",
    )
    status, body = http_get(ingest.url("/ready"))
    assert status == 200
    assert WEBHOOK_SECRET not in body.decode()


def test_chunked_oversized_body_is_refused_before_the_rest_is_read(stack: Stack) -> None:
    """413 arrives while the client is still sending: the server stops reading at
    the cap (the largest body it ever reads: the media cap, as only a media
    message's body may exceed MAX_BODY_BYTES; both set to the cap here)."""
    import socket

    cap = 64 * 1024
    stack.start_ingest(MAX_BODY_BYTES=str(cap), INGEST_MAX_MEDIA_BODY_BYTES=str(cap))
    chunk = b"x" * 16384
    with socket.create_connection(("127.0.0.1", stack.ingest_port or 0), timeout=10) as sock:
        sock.sendall(
            b"POST /webhooks/evolution HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            + f"X-Webhook-Secret: {WEBHOOK_SECRET}\r\n\r\n".encode()
        )
        sent = 0
        response = b""
        sock.settimeout(0.05)
        # Bounded: a server that read everything would let us send 100 MiB.
        for _ in range(100 * 1024 * 1024 // len(chunk)):
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            try:
                response = sock.recv(4096)
            except TimeoutError:
                continue
            if response:
                break
        sock.settimeout(10)
        while b"\r\n\r\n" not in response:
            more = sock.recv(4096)
            if not more:
                break
            response += more
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    # The answer came after at most a few chunks beyond the cap, not after the
    # whole (100 MiB) body: bytes read are bounded by the cap.
    assert sent <= cap + 8 * len(chunk), sent
    assert stack.queue.length() == 0
