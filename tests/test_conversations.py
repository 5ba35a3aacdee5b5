"""Bot-grade conversations against real processes: per-chat order across
workers and through a crash, replies that survive an Evolution outage and a
restart, a failing or slow handler that holds up only its own chat, media in
the webhook, and receipts, edits and deletions recorded where they belong."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import signal
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.support.evolution import EvolutionStub
from tests.support.messages import upsert
from tests.support.stack.net import wait_for
from tests.support.stack.paths import REPO
from tests.support.stack.pipeline import Stack
from tests.support.stack.services import messages, run_cli
from wabot_shared import names
from wabot_shared.message import MEDIA_REFERENCE_KEY
from wabot_worker.examples import appointments

HANDLERS = {"PYTHONPATH": str(REPO)}
EVOLUTION_KEY = "evolution-key-0123456789"


def handler_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def jid(n: int) -> str:
    return f"5511977{n:06d}@s.whatsapp.net"


def test_per_chat_order_holds_across_workers_a_new_one_and_a_crash(
    stack: Stack, samples: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    template = samples["messages-upsert-text"]
    log = tmp_path / "handler.jsonl"
    env = {
        **HANDLERS,
        "WORKER_HANDLER": "tests.support.handlers:recording",
        "TEST_HANDLER_LOG": str(log),
        "TEST_HANDLER_DELAY": "0.003",
        "WORKER_PARTITION_LEASE_MS": "1500",
    }
    stack.start_ingest()
    first = stack.start_worker("w-a", **env)
    stack.start_worker("w-b", **env)
    chats, per_chat = 30, 40
    sent: dict[str, list[str]] = defaultdict(list)
    accepted = threading.Semaphore(0)
    client = httpx.Client(timeout=10)

    def send_chat(c: int) -> None:
        # One chat's messages one after another (that is its acceptance order);
        # the chats interleave across the threads.
        for i in range(per_chat):
            message_id = f"c{c:02d}-{i:03d}"
            body = upsert(template, message_id=message_id, remote_jid=jid(c))
            resp = client.post(
                stack.url("/webhooks/evolution"),
                content=json.dumps(body),
                headers={"content-type": "application/json", "x-webhook-secret": stack.secret},
            )
            assert resp.status_code == 202, resp.text
            sent[jid(c)].append(message_id)
            accepted.release()

    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(send_chat, c) for c in range(chats)]
        for n in range(chats * per_chat):
            assert accepted.acquire(timeout=30), "the sender stalled"
            if n == chats * per_chat // 2:
                third = stack.start_worker("w-c", **env)  # a third worker half-way
            if n == chats * per_chat * 3 // 4:
                assert first.proc is not None
                first.proc.send_signal(signal.SIGKILL)  # and one dies mid-run
        for future in futures:
            future.result()
    client.close()
    total = chats * per_chat
    stack.wait_rows(total, timeout=120)
    wait_for(lambda: stack.queue.unacknowledged() == 0, timeout=60, what="nothing waiting")

    rows = stack.rows()
    assert len(rows) == total  # every message stored once
    for chat, ids in sent.items():
        stored = [r["message_id"] for r in rows if r["remote_jid"] == chat]
        assert stored == ids, f"rows of {chat} out of acceptance order"
    calls = handler_log(log)
    for chat, ids in sent.items():
        mine = sorted((c for c in calls if c["chat"] == chat), key=lambda c: c["start"])
        first_calls = list(dict.fromkeys(c["message_id"] for c in mine))
        assert first_calls == ids, f"handler calls of {chat} out of order"
        for earlier, later in itertools.pairwise(mine):
            assert later["start"] >= earlier["end"], (
                f"two calls of {chat} overlapped: {earlier} {later}"
            )
    # The third worker takes its share of the partitions (and the dead one's).
    # On a starved machine it may boot after the others drained everything, so
    # this is the rebalance that follows, polled for, not a race with the drain.
    wait_for(
        lambda: bool(messages(third, "took over partitions")),
        timeout=30,
        what="the third worker taking over partitions",
    )
    assert len({c["pid"] for c in calls}) >= 2
    assert len(calls) >= total  # at least once; a crash may repeat one


def test_replies_survive_an_evolution_outage_and_a_restart(
    stack: Stack, samples: dict[str, dict[str, Any]], evolution_stub: EvolutionStub
) -> None:
    template = samples["messages-upsert-text"]
    stack.register_instance(template["instance"])
    stack.start_ingest()
    env = {
        "REPLY_ENABLED": "true",
        "EVOLUTION_API_URL": evolution_stub.url,
        "EVOLUTION_API_KEY": EVOLUTION_KEY,
        "REPLY_BACKOFF_INITIAL": "0.5",
        "REPLY_BACKOFF_MAX": "3",
    }
    evolution_stub.fail_for(20, status=503, retry_after=2)
    outage_started = time.monotonic()
    worker = stack.start_worker("w-replies", **env)
    traces: dict[str, str] = {}
    for i in range(20):
        body = upsert(template, message_id=f"r-{i:02d}", remote_jid=jid(i % 5))
        resp = stack.post(body)
        assert resp.status_code == 202
        traces[resp.json()["trace_id"]] = jid(i % 5)
    stack.wait_rows(20)
    # A restart in the middle of the outage: the outbox is in PostgreSQL.
    wait_for(
        lambda: len(evolution_stub.requests) >= 5, timeout=15, what="attempts during the outage"
    )
    assert worker.terminate() == 0
    stack.start_worker("w-replies", **env)

    def all_replied() -> bool:
        return len(evolution_stub.accepted) >= 20

    wait_for(all_replied, timeout=60, what="every message replied after the outage")
    # Exactly one accepted reply per inbound message, each in its message's trace.
    replied = [
        next(t for t in traces if t in r["headers"].get("traceparent", ""))
        for r in evolution_stub.accepted
    ]
    assert sorted(replied) == sorted(traces)
    assert min(r["at"] for r in evolution_stub.accepted) >= outage_started + 20 - 0.5
    # Retry-After (2 s) was honoured between a chat's attempts.
    attempts: dict[str, list[float]] = defaultdict(list)
    for r in evolution_stub.requests:
        attempts[r["json"]["number"]].append(r["at"])
    for times in attempts.values():
        failed = [t for t in times if t < outage_started + 20]
        gaps = [b - a for a, b in itertools.pairwise(failed)]
        assert all(g >= 1.9 for g in gaps), gaps
    outbox = stack.sql(
        "SELECT status, count(*), max(attempts) FROM healthcare.whatsapp_outbox GROUP BY status"
    )
    [(status, count, max_attempts)] = outbox
    assert (status, count) == ("sent", 20)
    assert max_attempts >= 2  # each chat's first reply was retried through the outage
    # A chat's replies went out in the order of its messages.
    for number in {r["json"]["number"] for r in evolution_stub.accepted}:
        order = [
            next(t for t in traces if t in r["headers"]["traceparent"])
            for r in evolution_stub.accepted
            if r["json"]["number"] == number
        ]
        assert order == [t for t, chat in traces.items() if chat.split("@")[0] == number]
    keys = stack.sql("SELECT evolution_message_id FROM healthcare.whatsapp_outbox")
    assert {k for (k,) in keys} == {r["key"] for r in evolution_stub.accepted}


def test_a_failing_or_slow_handler_holds_up_only_its_chat(
    stack: Stack, samples: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    template = samples["messages-upsert-text"]
    failing, slow = jid(900), jid(901)
    stack.start_ingest()
    stack.start_worker(
        **HANDLERS,
        WORKER_HANDLER="tests.support.handlers:failing",
        TEST_HANDLER_LOG=str(tmp_path / "handler.jsonl"),
        TEST_FAILING_CHAT=failing,
        TEST_SLOW_CHAT=slow,
        WORKER_HANDLER_TIMEOUT="1",
        MAX_DELIVERIES="3",
        RETRY_BACKOFF_INITIAL="0.2",
        RETRY_BACKOFF_MAX="0.5",
    )
    for chat in (failing, slow):
        assert (
            stack.post(
                upsert(template, message_id=f"first-{chat[:12]}", remote_jid=chat)
            ).status_code
            == 202
        )
    for i in range(10):
        assert (
            stack.post(upsert(template, message_id=f"other-{i}", remote_jid=jid(i))).status_code
            == 202
        )
    for chat in (failing, slow):
        assert (
            stack.post(
                upsert(template, message_id=f"second-{chat[:12]}", remote_jid=chat)
            ).status_code
            == 202
        )
    # The others are stored at once, while both chats are still retrying.
    stack.wait_rows(10, timeout=10, where="message_id LIKE 'other-%%'")
    assert len(stack.queue.dead_letters()) < 4
    wait_for(lambda: len(stack.queue.dead_letters()) == 4, timeout=60, what="4 dead letters")
    errors = sorted(f[names.FIELD_ERROR_TYPE] for _, f in stack.queue.dead_letters())
    assert errors == ["HandlerTimeout", "HandlerTimeout", "RuntimeError", "RuntimeError"]
    assert all(f[names.FIELD_DELIVERIES] == "3" for _, f in stack.queue.dead_letters())
    assert {r["remote_jid"] for r in stack.rows()} == {jid(i) for i in range(10)}


def image_body(template: dict[str, Any], message_id: str, data: bytes) -> bytes:
    body = upsert(template, message_id=message_id, remote_jid=jid(700))
    body["data"]["messageType"] = "imageMessage"
    body["data"]["message"] = {
        "imageMessage": {
            "mimetype": "image/jpeg",
            "fileLength": str(len(data)),
            "caption": "foto do exame",
            "mediaKey": "a2V5",
        },
        "base64": base64.b64encode(data).decode(),
    }
    return json.dumps(body).encode()


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_media_in_the_webhook_is_stored_once_sealed_and_readable_by_the_handler(
    stack: Stack, samples: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    template = samples["messages-upsert-text"]
    log = tmp_path / "handler.jsonl"
    ingest = stack.start_ingest()
    stack.start_worker(
        **HANDLERS, WORKER_HANDLER="tests.support.handlers:media", TEST_HANDLER_LOG=str(log)
    )
    data = os.urandom(10 * 1024 * 1024)
    resp = stack.post(None, raw=image_body(template, "img-0", data))
    assert resp.status_code == 202, resp.text
    [row] = stack.wait_rows(1)
    image = row["raw_payload"]["data"]["message"]
    assert "base64" not in image
    assert image[MEDIA_REFERENCE_KEY]["size"] == len(data)
    wait_for(lambda: handler_log(log), timeout=15, what="the handler to read the media")
    [call] = handler_log(log)
    assert (call["size"], call["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    # Not in Redis: the entry carries a reference only.
    assert all(len(json.dumps(f)) < 20_000 for _, f in stack.queue.entries())
    [(sealed, clear)] = stack.sql(
        "SELECT data_enc IS NOT NULL, data IS NULL FROM healthcare.whatsapp_media"
    )
    assert sealed
    assert clear

    # Ten at once: memory stays bounded (large bodies take turns).
    assert ingest.proc is not None
    pid = ingest.proc.pid
    before = vm(pid, "VmRSS")
    bodies = [image_body(template, f"img-{i}", os.urandom(10 * 1024 * 1024)) for i in range(1, 11)]

    backoff = threading.Event()  # never set: its wait is the retry delay

    def post_until_accepted(raw: bytes) -> int:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r = httpx.post(
                stack.url("/webhooks/evolution"),
                content=raw,
                headers={"content-type": "application/json", "x-webhook-secret": stack.secret},
                timeout=60,
            )
            if r.status_code != 503:
                return r.status_code
            backoff.wait(float(r.headers.get("retry-after", "1")) / 5)  # Evolution's retry, faster
        raise AssertionError("never accepted")

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(post_until_accepted, bodies))
    assert statuses == [202] * 10
    peak = vm(pid, "VmHWM")
    assert peak - before < 300 * 1024 * 1024, f"ingest grew by {(peak - before) >> 20} MiB"
    stack.wait_rows(11, timeout=60)
    assert stack.sql("SELECT count(*) FROM healthcare.whatsapp_media") == [(11,)]


def post_event(stack: Stack, event: str, instance: str, data: dict[str, Any]) -> None:
    resp = stack.post({"event": event, "instance": instance, "data": data})
    assert resp.status_code == 202
    assert resp.json()["status"] == "queued", resp.json()


def test_the_example_flow_with_receipts_edits_and_deletes(
    stack: Stack, samples: dict[str, dict[str, Any]], evolution_stub: EvolutionStub
) -> None:
    template = samples["messages-upsert-text"]
    instance = template["instance"]
    patient = jid(555)
    stack.register_instance(instance)
    stack.start_ingest()
    stack.start_worker(
        WORKER_HANDLER="wabot_worker.examples.appointments:handle",
        REPLY_ENABLED="true",
        EVOLUTION_API_URL=evolution_stub.url,
        EVOLUTION_API_KEY=EVOLUTION_KEY,
    )
    before = len(evolution_stub.accepted)
    conversation = [("m1", "oi"), ("m2", "2"), ("m3", "sexta às 10h")]
    for message_id, text in conversation:
        body = upsert(template, message_id=message_id, remote_jid=patient, text=text)
        assert stack.post(body).status_code == 202
        replies = len(evolution_stub.accepted)
        wait_for(
            lambda n=replies: len(evolution_stub.accepted) > n,
            timeout=15,
            what=f"the reply to {text!r}",
        )
    texts = [r["json"]["text"] for r in evolution_stub.accepted[before:]]
    assert texts == [
        appointments.OPTIONS,
        appointments.ASK_DAY,
        appointments.RESCHEDULE_NOTED.format(day="sexta às 10h"),
    ]
    [(sealed,)] = stack.sql("SELECT state_enc IS NOT NULL FROM healthcare.chat_state")
    assert sealed  # the state is stored sealed, like message content

    # Our first reply was read: linked to its outbox row by Evolution's key.
    first_key = evolution_stub.accepted[before]["key"]
    post_event(
        stack,
        "messages.update",
        instance,
        {"keyId": first_key, "remoteJid": patient, "fromMe": True, "status": "READ"},
    )
    # The patient edits "2" into "3", then deletes "oi".
    post_event(
        stack,
        "messages.edited",
        instance,
        {
            "key": {"remoteJid": patient, "fromMe": False, "id": "m2"},
            "editedMessage": {"conversation": "3"},
            "timestampMs": int(time.time() * 1000),
        },
    )
    post_event(
        stack, "messages.delete", instance, {"remoteJid": patient, "fromMe": False, "id": "m1"}
    )

    def linked() -> bool:
        read = stack.sql(
            "SELECT read_at IS NOT NULL AND delivered_at IS NOT NULL"
            " FROM healthcare.whatsapp_outbox WHERE evolution_message_id = %s",
            (first_key,),
        )
        edits = stack.sql("SELECT message_id FROM healthcare.whatsapp_message_edits")
        deleted = stack.sql(
            "SELECT message_id FROM healthcare.whatsapp_messages WHERE deleted_at IS NOT NULL"
        )
        return read == [(True,)] and edits == [("m2",)] and deleted == [("m1",)]

    wait_for(linked, timeout=20, what="the receipt, the edit and the deletion recorded")
    [(text_enc, clear)] = stack.sql(
        "SELECT text_enc IS NOT NULL, text_body FROM healthcare.whatsapp_message_edits"
    )
    assert text_enc
    assert clear is None
    # A deleted message keeps its content until retention (then it is purged).
    [row] = stack.rows("message_id = 'm1'")
    assert row["text_body"] == "oi"


def test_a_refused_reply_fails_is_counted_and_can_be_redriven(
    stack: Stack, samples: dict[str, dict[str, Any]], evolution_stub: EvolutionStub
) -> None:
    template = samples["messages-upsert-text"]
    stack.register_instance(template["instance"])
    stack.start_ingest()
    stack.start_worker(
        REPLY_ENABLED="true", EVOLUTION_API_URL=evolution_stub.url, EVOLUTION_API_KEY=EVOLUTION_KEY
    )
    evolution_stub.fail_for(3600, status=400)  # e.g. a number WhatsApp refuses
    assert stack.post(upsert(template, message_id="refused-reply")).status_code == 202
    wait_for(
        lambda: (
            stack.sql("SELECT status, last_error FROM healthcare.whatsapp_outbox")
            == [("failed", "400")]
        ),
        timeout=20,
        what="the reply failed for good on a 400",
    )
    wait_for(
        lambda: (
            stack.cumulative(names.METRIC_REPLIES, "worker", **{names.ATTR_OUTCOME: "failed"}) == 1
        ),
        timeout=15,
        what="the failed reply counted",
    )
    evolution_stub.fail_for(0)
    result = run_cli("wabot", "redrive-replies", env={**stack.env, "OTEL_SDK_DISABLED": "true"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["redriven"] == 1
    wait_for(
        lambda: stack.sql("SELECT status FROM healthcare.whatsapp_outbox") == [("sent",)],
        timeout=20,
        what="the re-driven reply sent",
    )
    assert stack.sql("SELECT action FROM healthcare.audit_log") == [("redrive_replies",)]
