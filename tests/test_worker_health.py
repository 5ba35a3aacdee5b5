"""The worker's /health also fails when a message is stuck (the loops keep
running but nothing is acknowledged), and a stuck message cannot hold a
shutdown beyond its budget (the entry stays pending, not lost)."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from tests.support.stack.net import http_get, wait_for
from tests.support.stack.pipeline import Stack


def test_stuck_loop_fails_health_and_shutdown_still_meets_its_budget(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    stack.start_ingest()
    worker = stack.start_worker(
        name="w-stuck",
        FAULT_INJECTION="hang_processing",
        WORKER_STALL_SECONDS="1",
        SHUTDOWN_TIMEOUT="4",
    )
    wait_for(lambda: http_get(worker.health_url)[0] == 200, timeout=10, what="healthy worker")
    assert stack.post(samples["messages-upsert-text"]).status_code == 202

    def stuck() -> dict[str, Any] | None:
        status, body = http_get(worker.health_url)
        checks = json.loads(body)["checks"]
        return checks if status == 503 else None

    checks = wait_for(stuck, timeout=15, what="/health to report the stuck message")
    assert checks["loop"]["status"] == "pass"
    assert checks["progress"]["status"] == "fail"
    assert checks["progress"]["waiting"] == 1
    assert checks["progress"]["since_last_ack_s"] >= 1
    assert checks["redis"]["status"] == "pass"
    assert checks["postgres"]["status"] == "pass"

    started = time.monotonic()
    assert worker.terminate(signal.SIGTERM, timeout=15) == 0
    assert time.monotonic() - started < 4 + 1.0  # SHUTDOWN_TIMEOUT plus process exit
    logs = [r.get("message", "") for r in worker.json_logs()]
    assert any("drain budget exceeded" in m for m in logs), logs[-10:]
    assert stack.queue.pending() == 1  # not lost

    # A healthy worker with the same name picks it up after the lease expires.
    stack.start_worker(name="w-stuck")
    rows = stack.wait_rows(1)
    assert rows[0]["message_id"] == samples["messages-upsert-text"]["data"]["key"]["id"]
