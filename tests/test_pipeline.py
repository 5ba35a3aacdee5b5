"""End to end through real processes: webhook → ingest → Redis → worker → PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack
from wabot_shared.minimize import minimize


def is_upsert(sample: dict[str, Any]) -> bool:
    return sample["event"] == "messages.upsert"


# Chat events are queued and recorded (receipts, edits, deletions); the rest is ignored.
QUEUED = {"messages.upsert", "messages.update", "messages.edited", "messages.delete"}


def test_each_sample_gets_its_documented_answer_and_one_row(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    stack.start_ingest()
    stack.start_worker()
    upserts = {name: s for name, s in samples.items() if is_upsert(s)}
    assert len(upserts) >= 3, "expected several messages.upsert samples"

    for _round in range(2):  # the second round is Evolution redelivering everything
        for name, sample in samples.items():
            resp = stack.post(sample)
            assert resp.status_code == 202, (name, resp.text)
            body = resp.json()
            if sample["event"] in QUEUED:
                assert body["status"] == "queued", (name, body)
                assert body["stream_id"]
                assert len(body["trace_id"]) == 32
            else:
                assert body == {"status": "ignored", "event": sample["event"]}, (name, body)

    rows = stack.wait_rows(len(upserts))
    ids = sorted(r["message_id"] for r in rows)
    assert ids == sorted(s["data"]["key"]["id"] for s in upserts.values())
    # The receipt is recorded against its message, once.
    receipts = stack.sql("SELECT status, message_id FROM healthcare.whatsapp_receipts")
    update = samples["messages-update-status"]["data"]
    assert receipts == [(update["status"], update["keyId"])]
    # Both deliveries of every message have been processed (and the second deduplicated).
    wait_for(lambda: stack.queue.pending() == 0, timeout=20, what="no pending entries")
    assert len(stack.rows()) == len(upserts)
    for row in rows:
        sample = next(s for s in upserts.values() if s["data"]["key"]["id"] == row["message_id"])
        assert row["remote_jid"] == sample["data"]["key"]["remoteJid"]
        assert row["from_me"] == sample["data"]["key"]["fromMe"]
        assert row["instance_name"] == sample["instance"]
        # What is stored is the minimized envelope: no instance token, no media keys.
        assert row["raw_payload"] == minimize(sample)
        assert "apikey" not in row["raw_payload"]
        # ... and only sealed: the clear columns are empty.
        [sealed] = stack.rows("id = %s", (row["id"],), sealed=True)
        assert sealed["raw_payload"] is None
        assert sealed["text_body"] is None
        assert sealed["content_key_id"] == "test1"
        assert row["message_type"] == sample["data"]["messageType"]
