"""A worker SIGKILLed between reading and XACK loses nothing and duplicates nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack


@pytest.mark.parametrize(
    ("fault", "rows_after_crash"), [("crash_after_read", 0), ("crash_before_ack", 1)]
)
def test_killed_worker_leaves_entry_pending_and_restart_processes_it_once(
    stack: Stack, samples: dict[str, dict[str, Any]], fault: str, rows_after_crash: int
) -> None:
    stack.start_ingest()
    crashing = stack.start_worker(name="w-crash", FAULT_INJECTION=fault)
    resp = stack.post(samples["messages-upsert-text"])
    assert resp.status_code == 202

    wait_for(lambda: not crashing.alive(), timeout=20, what=f"worker to SIGKILL itself at {fault}")
    assert crashing.proc is not None
    assert crashing.proc.returncode == -9
    assert len(stack.rows()) == rows_after_crash
    assert stack.queue.pending("w-crash") == 1

    # Same consumer name = the same container restarted: its own pending entries come first.
    stack.start_worker(name="w-crash")
    rows = stack.wait_rows(1)
    wait_for(
        lambda: stack.queue.pending() == 0, timeout=20, what="the pending entry to be acknowledged"
    )
    assert len(stack.rows()) == 1
    assert rows[0]["message_id"] == samples["messages-upsert-text"]["data"]["key"]["id"]
    assert rows[0]["trace_id"] == resp.json()["trace_id"]

    expected = "duplicate" if rows_after_crash else "processed"
    wait_for(
        lambda: any(
            p["attributes"].get("whatsapp.outcome") == expected
            for p in stack.metric_points("whatsapp.message.outcomes", "worker")
        ),
        timeout=10,
        what=f"outcome {expected} counted",
    )
