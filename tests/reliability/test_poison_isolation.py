"""One message that fails forever with a connection-class error while the
database is up (a trigger raises SQLSTATE 08006 for it alone) cannot stop the
others, before or after a worker restart; /health and the oldest-age gauge
show the stall while it lasts, and the message ends dead-lettered within its
budget, its chat's later message stored after it."""

from __future__ import annotations

import json
from typing import Any

from tests.support.messages import upsert
from tests.support.stack.net import http_get, wait_for
from tests.support.stack.pipeline import Stack
from wabot_shared import names

POISON = "POISON-08006"
CHAT = "5511900000099@s.whatsapp.net"
MAX_DELIVERIES = 6
WORKER = {
    "MAX_DELIVERIES": str(MAX_DELIVERIES),
    "RETRY_BACKOFF_INITIAL": "0.5",
    "RETRY_BACKOFF_MAX": "1",
    "WORKER_STALL_SECONDS": "1",
}


def stall(svc_health_url: str) -> dict[str, Any] | None:
    status, body = http_get(svc_health_url)
    checks = json.loads(body)["checks"]
    return checks["progress"] if status == 503 and checks["progress"]["status"] == "fail" else None


def test_a_message_failing_forever_never_blocks_the_others(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    template = samples["messages-upsert-text"]
    stack.sql(
        f"""
        CREATE FUNCTION healthcare.test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.message_id = '{POISON}' THEN
                RAISE EXCEPTION 'connection lost' USING ERRCODE = '08006';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_poison BEFORE INSERT ON healthcare.whatsapp_messages
            FOR EACH ROW EXECUTE FUNCTION healthcare.test_poison();
        """
    )
    stack.start_ingest()
    first = stack.start_worker("w-poison", **WORKER)
    assert stack.post(upsert(template, message_id=POISON, remote_jid=CHAT)).status_code == 202
    assert (
        stack.post(upsert(template, message_id="after-poison", remote_jid=CHAT)).status_code == 202
    )

    def send(prefix: str, count: int) -> list[str]:
        ids = [f"{prefix}-{i}" for i in range(count)]
        for i, message_id in enumerate(ids):
            jid = f"55119{i:08d}@s.whatsapp.net"
            assert (
                stack.post(upsert(template, message_id=message_id, remote_jid=jid)).status_code
                == 202
            )
        return ids

    # Other chats flow while the poison fails; /health shows the stall.
    before = send("before", 20)
    stack.wait_rows(len(before), timeout=15, where="message_id LIKE 'before-%%'")
    shown = wait_for(lambda: stall(first.health_url), timeout=15, what="/health to show the stall")
    assert shown["oldest_failing_s"] >= 1
    assert not stack.rows("message_id = 'after-poison'"), "the poison's chat must wait behind it"

    # A restart: the new worker claims the poison again and the others still flow.
    assert first.terminate() == 0
    second = stack.start_worker("w-poison", **WORKER)
    after = send("after", 20)
    stack.wait_rows(
        len(after),
        timeout=20,
        where="message_id LIKE 'after-%%' AND remote_jid <> %s",
        params=(CHAT,),
    )

    # Dead-lettered within its budget (the count survived the restart).
    wait_for(stack.queue.dead_letters, timeout=60, what="the poison dead-lettered")
    [(_, dead)] = stack.queue.dead_letters()
    assert dead[names.FIELD_MESSAGE_ID] == POISON
    assert dead[names.FIELD_ERROR_TYPE] == "ConnectionFailure 08006"
    assert int(dead[names.FIELD_DELIVERIES]) == MAX_DELIVERIES
    # Its chat's later message came after it: stored once the poison was set aside.
    [row] = stack.wait_rows(1, timeout=10, where="message_id = 'after-poison'")
    assert row["processed_at"].timestamp() >= int(dead[names.FIELD_DEAD_AT])
    wait_for(lambda: stack.queue.unacknowledged() == 0, timeout=20, what="nothing waiting")
    wait_for(
        lambda: http_get(second.health_url)[0] == 200, timeout=15, what="/health healthy again"
    )
    # The age of the oldest waiting entry showed the stall whatever the outcomes said.
    ages = [p["value"] for p in stack.metric_points(names.METRIC_QUEUE_OLDEST_AGE, "worker")]
    assert max(ages) >= 2, ages
