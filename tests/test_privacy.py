"""No phone number, name, message text or secret leaves a service in telemetry or logs."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import jwt

from tests.support.evolution import EvolutionStub
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import WEBHOOK_SECRET, Stack

SENSITIVE_KEYS = {"pushName", "conversation", "caption", "profileName", "apikey", "text"}
JID = re.compile(r"^(\d{6,})(?:-\d+)?@")


def sensitive_values(node: Any, out: set[str]) -> set[str]:
    """Names, texts, keys and every phone number found anywhere in a sample."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SENSITIVE_KEYS and isinstance(value, str) and value:
                out.add(value)
            sensitive_values(value, out)
    elif isinstance(node, list):
        for value in node:
            sensitive_values(value, out)
    elif isinstance(node, str):
        match = JID.match(node)
        if match:
            out.add(match.group(1))  # the bare phone number covers the JID too
    return out


def test_no_sensitive_value_appears_in_exported_telemetry_or_log_lines(
    stack: Stack, samples: dict[str, dict[str, Any]], evolution_stub: EvolutionStub
) -> None:
    jwt_key = "jwt-" + secrets.token_hex(16)
    evolution_key = "evo-" + secrets.token_hex(16)
    stack.register_instance("clinic-sao-paulo")
    stack.start_ingest(WEBHOOK_JWT_KEY=jwt_key, LOG_LEVEL="DEBUG")
    stack.start_worker(
        REPLY_ENABLED="true",
        EVOLUTION_API_URL=evolution_stub.url,
        EVOLUTION_API_KEY=evolution_key,
        LOG_LEVEL="DEBUG",
    )
    now = int(time.time())
    token = jwt.encode(
        {"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook"},
        jwt_key,
        algorithm="HS256",
    )
    trace_ids = []
    for sample in samples.values():
        for headers in ({}, {"authorization": f"Bearer {token}"}):
            resp = stack.post(sample, auth=not headers, headers=headers)
            assert resp.status_code == 202
            if resp.json()["status"] == "queued":
                trace_ids.append(resp.json()["trace_id"])
        stack.post(sample, auth=False, headers={"x-webhook-secret": "wrong-" + WEBHOOK_SECRET})
    upserts = sum(1 for s in samples.values() if s["event"] == "messages.upsert")
    stack.wait_rows(upserts)
    # Every trace fully exported, every log record flushed: then scan.
    for trace_id in trace_ids:
        wait_for(
            lambda t=trace_id: any(s["service"] == "worker" for s in stack.sink.spans_of(t)),
            timeout=20,
            what=f"worker spans of {trace_id}",
        )
    wait_for(
        lambda: stack.metric_points("whatsapp.message.outcomes", "worker"),
        timeout=10,
        what="worker metrics exported",
    )
    stack.stop_all()  # flushes telemetry as the last step of shutdown

    secrets_ = {WEBHOOK_SECRET, jwt_key, evolution_key, token}
    needles = set(secrets_)
    for sample in samples.values():
        sensitive_values(sample, needles)
    assert len(needles) > 10, needles  # the scan looks for something real
    assert any(n.isdigit() for n in needles)

    exported = b"".join(stack.sink.raw)
    assert exported, "nothing was exported"
    logs = "\n".join(stack.all_logs())
    assert '"level":"DEBUG"' in logs or '"level":"INFO"' in logs
    leaks = [n for n in needles if n.encode() in exported]
    assert not leaks, f"exported telemetry contains sensitive values: {leaks}"
    leaks = [n for n in needles if n in logs or n.encode("unicode_escape").decode() in logs]
    assert not leaks, f"log lines contain sensitive values: {leaks}"
