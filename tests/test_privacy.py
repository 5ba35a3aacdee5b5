"""No phone number, name, message text or secret leaves a service in telemetry or logs."""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt

from tests.support.evolution import EvolutionStub
from tests.support.leaks import assert_no_leaks, sensitive_values
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import WEBHOOK_SECRET, Stack


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

    needles = {WEBHOOK_SECRET, jwt_key, evolution_key, token}
    for sample in samples.values():
        sensitive_values(sample, needles)
    assert len(needles) > 10, needles  # the scan looks for something real
    assert any(n.isdigit() for n in needles)
    assert_no_leaks(stack, needles)
    assert '"level":"DEBUG"' in "\n".join(stack.all_logs())
