"""Health data protection against real processes: what is stored and where
(minimized, sealed), key rotation, retention, erasure, tenants and replies."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support.evolution import EvolutionStub
from tests.support.leaks import sensitive_values
from tests.support.messages import stream_entry, upsert
from tests.support.stack.net import wait_for
from tests.support.stack.paths import pg_tool
from tests.support.stack.pipeline import Stack
from tests.support.stack.servers import RedisServer, running_redis
from tests.support.stack.services import health, run_cli
from wabot_shared import names
from wabot_shared.content import open_row
from wabot_shared.crypto import Keyring, new_key_setting

TEXT = "Resultado do exame de sangue: glicemia alterada"


def pg_dump(dsn: str) -> str:
    result = subprocess.run(
        [pg_tool("pg_dump"), "--data-only", "--inserts", dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def redis_values(url: str) -> str:
    """Every value of every key, as text (streams, hashes, strings, sets)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    out: list[str] = []
    for key in client.scan_iter(count=500):
        kind = client.type(key)
        if kind == "stream":
            out.extend(json.dumps(fields) for _, fields in client.xrange(key))
        elif kind == "hash":
            out.append(json.dumps(client.hgetall(key)))
        elif kind == "string":
            out.append(str(client.get(key)))
        elif kind in ("set", "list", "zset"):
            out.append(str(client.dump(key)))
    client.close()
    return "\n".join(out)


def cli(stack: Stack, *args: str, **env: str) -> dict[str, Any]:
    result = run_cli("wabot", *args, env={**stack.env, "OTEL_SDK_DISABLED": "true", **env})
    assert result.returncode == 0, result.stderr[-2000:]
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


@pytest.fixture
def template(samples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return samples["messages-upsert-text"]


def test_what_is_stored_is_minimized_and_sealed(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    stack.start_ingest()
    worker = stack.start_worker()
    worker.terminate()  # some entries stay in the stream, to check Redis too
    upserts = [s for s in samples.values() if s["event"] == "messages.upsert"]
    for sample in samples.values():
        assert stack.post(sample).status_code == 202
    stack.start_worker()
    rows = stack.wait_rows(len(upserts))
    # Readable by the pipeline (opened with the key) and stored once each.
    assert sorted(r["message_id"] for r in rows) == sorted(s["data"]["key"]["id"] for s in upserts)
    image = next(r for r in rows if r["message_type"] == "imageMessage")
    media = image["raw_payload"]["data"]["message"]["imageMessage"]
    assert "mediaKey" not in media
    assert "url" not in media
    assert "jpegThumbnail" not in media
    assert media["caption"]  # the content itself is kept (sealed)

    apikeys = {s["apikey"] for s in samples.values() if s.get("apikey")}
    needles = {n for s in upserts for n in sensitive_values(s) if not n.isdigit()} - apikeys
    assert needles, "the scan must look for texts and names"
    dump, values = pg_dump(stack.dsn), redis_values(stack.redis.url)
    assert TEXT not in dump  # sanity: the scan reads what it should
    for apikey in apikeys:
        assert apikey not in dump, "the instance token is in the database"
        assert apikey not in values, "the instance token is in Redis"
    for needle in needles:
        assert needle not in dump, f"{needle!r} in clear in pg_dump"
        assert needle not in values, f"{needle!r} in clear in Redis"
    assert "v1.test1." in dump
    assert "v1.test1." in values


def test_key_rotation_round_trip(stack: Stack, template: dict[str, Any]) -> None:
    old = stack.env["MESSAGE_ENCRYPTION_KEYS"]
    new = new_key_setting("k2")
    stack.start_ingest()
    first = stack.start_worker()
    for i in range(5):
        assert stack.post(upsert(template, message_id=f"old-{i}", text=TEXT)).status_code == 202
    stack.wait_rows(5)
    # Rotate: the new key first, the old one still there to read old content.
    stack.stop_all()
    stack.env["MESSAGE_ENCRYPTION_KEYS"] = f"{new},{old}"
    stack.start_ingest()
    stack.start_worker(first.env["WORKER_CONSUMER_NAME"])
    for i in range(5):
        assert stack.post(upsert(template, message_id=f"new-{i}", text=TEXT)).status_code == 202
    rows = stack.wait_rows(10)
    assert all(r["text_body"] == TEXT for r in rows)  # both keys read
    sealed = {r["message_id"]: r["content_key_id"] for r in stack.rows(sealed=True)}
    assert {sealed[f"old-{i}"] for i in range(5)} == {"test1"}
    assert {sealed[f"new-{i}"] for i in range(5)} == {"k2"}
    summary = cli(stack, "reencrypt", "--batch", "3")
    assert (summary["rows"], summary["remaining"], summary["key_id"]) == (5, 0, "k2")
    assert cli(stack, "reencrypt")["rows"] == 0  # resumable, idempotent
    # The old key can go: everything opens with the new one alone.
    stack.stop_all()
    stack.env["MESSAGE_ENCRYPTION_KEYS"] = new
    only_new = Keyring.parse(new)
    assert all(open_row(only_new, r)["text_body"] == TEXT for r in stack.rows(sealed=True))
    stack.start_ingest()
    stack.start_worker()
    assert stack.post(upsert(template, message_id="after", text=TEXT)).status_code == 202
    stack.wait_rows(11)
    [(audit,)] = stack.sql("SELECT count(*) FROM healthcare.audit_log WHERE action = 'reencrypt'")
    assert audit == 2


def test_retention_purges_content_keeps_rows_and_trims_redis(
    stack: Stack, template: dict[str, Any]
) -> None:
    stack.start_ingest()
    stack.start_worker(
        MESSAGE_RETENTION="3s",
        DEAD_LETTER_RETENTION="3s",
        STREAM_RETENTION_SECONDS="2",
        WORKER_PURGE_INTERVAL="0.5",
    )
    for i in range(6):
        assert stack.post(upsert(template, message_id=f"r-{i}", text=TEXT)).status_code == 202
    stack.queue.xadd({"junk": "an unreadable entry, dead-lettered at once"})
    stack.wait_rows(6)
    wait_for(stack.queue.dead_letters, timeout=10, what="a dead letter")

    def purged() -> bool:
        return all(r["content_purged_at"] is not None for r in stack.rows(sealed=True))

    wait_for(purged, timeout=30, what="content of every message purged after 3 s")
    for row in stack.rows(sealed=True):
        assert row["text_body_enc"] is None
        assert row["raw_payload_enc"] is None
        assert row["text_body"] is None
        assert row["push_name"] is None
        assert row["message_id"].startswith("r-")  # the metadata stays
    wait_for(lambda: not stack.queue.dead_letters(), timeout=30, what="dead letters trimmed")
    wait_for(lambda: stack.queue.length() == 0, timeout=30, what="acknowledged entries trimmed")
    wait_for(
        lambda: (
            stack.cumulative(
                names.METRIC_PURGED, "worker", **{"whatsapp.retention.kind": "message_content"}
            )
            == 6
        ),
        timeout=15,
        what="6 purges counted",
    )
    assert stack.sql("SELECT count(*) FROM healthcare.audit_log WHERE action = 'purge'")[0][0] >= 1


@pytest.fixture
def evicting_redis() -> Iterator[RedisServer]:
    with running_redis("wabot-lru-") as server:
        client = redis.Redis(port=server.port)
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.close()
        yield server


@pytest.mark.parametrize("program", ["ingest", "worker"])
def test_an_evicting_redis_is_refused_at_start(
    stack: Stack, evicting_redis: RedisServer, program: str
) -> None:
    env = {
        **stack.env,
        "REDIS_URL": evicting_redis.url,
        "INGEST_PORT": "0",
        "WORKER_HEALTH_PORT": "0",
    }
    result = run_cli(program, env=env, timeout=30)
    assert result.returncode == 2
    assert "maxmemory-policy is 'allkeys-lru'" in result.stderr
    assert "noeviction" in result.stderr


def test_eviction_can_be_allowed_explicitly_and_health_says_so(
    stack: Stack, evicting_redis: RedisServer
) -> None:
    stack.use_redis(evicting_redis)
    worker = stack.start_worker(REDIS_ALLOW_EVICTION="true")
    assert any("queued messages can be evicted" in m for m in worker.log_lines())

    def policy() -> Any:
        _, body = health(worker)
        return body["checks"]["redis"].get("maxmemory_policy")

    assert wait_for(policy, timeout=10, what="the policy on /health") == "allkeys-lru"


def test_erase_removes_exactly_one_chat_everywhere(stack: Stack, template: dict[str, Any]) -> None:
    patient, other = "5511911110000@s.whatsapp.net", "5511922220000@s.whatsapp.net"
    stack.start_ingest()
    worker = stack.start_worker()
    for i in range(3):
        stack.post(upsert(template, message_id=f"p-{i}", remote_jid=patient, text=TEXT))
        stack.post(upsert(template, message_id=f"o-{i}", remote_jid=other, text=TEXT))
    stack.wait_rows(6)
    worker.terminate()
    # Some of the patient's messages are still queued, one is a dead letter.
    stack.post(upsert(template, message_id="p-queued", remote_jid=patient))
    stack.post(upsert(template, message_id="o-queued", remote_jid=other))
    dead_body = upsert(template, message_id="p-dead", remote_jid=patient, text=TEXT)
    _, fields = stream_entry(dead_body, stack.queue.partitions, stack.keyring)
    with stack.queue.client() as client:
        client.xadd(stack.queue.dead_stream, {**fields, names.FIELD_ERROR_TYPE: "X"})

    summary = cli(stack, "erase", "--chat", patient, WABOT_OPERATOR="dpo@clinic")
    assert summary["rows"] == 3
    assert summary["stream_entries"] >= 1  # p-queued (and acknowledged p-* not yet trimmed)
    assert summary["dead_letters"] == 1
    assert {r["message_id"] for r in stack.rows()} == {f"o-{i}" for i in range(3)}
    remaining = [f for _, f in stack.queue.entries()]
    assert all(f[names.FIELD_MESSAGE_ID].startswith("o-") for f in remaining), remaining
    assert stack.queue.dead_letters() == []
    [(operator, details)] = stack.sql(
        "SELECT operator, details FROM healthcare.audit_log WHERE action = 'erase'"
    )
    assert operator == "dpo@clinic"
    assert details["rows"] == 3
    assert patient not in json.dumps(details)
    assert "5511911110000" not in json.dumps(details)
    # The other chat's queued message is still processed.
    stack.start_worker()
    stack.wait_rows(4)


def test_one_clinics_secret_cannot_speak_for_another(
    stack: Stack, template: dict[str, Any]
) -> None:
    secret_a, secret_b = "a-" + secrets.token_hex(16), "b-" + secrets.token_hex(16)
    stack.start_ingest(
        WEBHOOK_INSTANCE_SECRETS=json.dumps(
            {"clinic-a": secret_a, "clinic-b": {"secret": secret_b}}
        )
    )
    stack.start_worker()
    as_b = upsert(template, message_id="spoof", instance="clinic-b")
    resp = stack.post(as_b, auth=False, headers={"x-webhook-secret": secret_a})
    assert (resp.status_code, resp.json()["error"]) == (403, "forbidden")
    # The global secret does not speak for a clinic with its own either.
    assert stack.post(as_b).status_code == 403
    own = stack.post(as_b, auth=False, headers={"x-webhook-secret": secret_b})
    assert own.status_code == 202
    # An instance without its own secret still works with the global one.
    assert stack.post(upsert(template, message_id="plain", instance="clinic-c")).status_code == 202
    rows = stack.wait_rows(2)
    assert sorted((r["instance_name"], r["message_id"]) for r in rows) == [
        ("clinic-b", "spoof"),
        ("clinic-c", "plain"),
    ]
    assert stack.queue.length() == 2  # the refused one never reached the stream


def test_replies_only_to_patients_of_active_instances(
    stack: Stack, template: dict[str, Any], evolution_stub: EvolutionStub
) -> None:
    stack.register_instance("clinic-sao-paulo")
    stack.register_instance("clinic-suspended")
    stack.sql(
        "UPDATE healthcare.whatsapp_instances SET status = 'suspended'"
        " WHERE instance_name = 'clinic-suspended'"
    )
    stack.start_ingest()
    stack.start_worker(
        REPLY_ENABLED="true",
        EVOLUTION_API_URL=evolution_stub.url,
        EVOLUTION_API_KEY="evolution-key-0123456789",
    )
    cases = {
        "to-group": ("clinic-sao-paulo", "120363041234567890@g.us"),
        "to-status": ("clinic-sao-paulo", "status@broadcast"),
        "to-newsletter": ("clinic-sao-paulo", "120363000000000000@newsletter"),
        "from-suspended": ("clinic-suspended", "5511933330000@s.whatsapp.net"),
        "to-patient": ("clinic-sao-paulo", "5511944440000@s.whatsapp.net"),
        "to-lid": ("clinic-sao-paulo", "123456789012345@lid"),
    }
    before = len(evolution_stub.requests)
    for message_id, (instance, jid) in cases.items():
        body = upsert(template, message_id=message_id, instance=instance, remote_jid=jid)
        assert stack.post(body).status_code == 202
    stack.wait_rows(len(cases))  # every one is stored
    wait_for(
        lambda: len(evolution_stub.requests) - before >= 2,
        timeout=15,
        what="the replies to the two patients",
    )
    numbers = sorted(r["json"]["number"] for r in evolution_stub.requests[before:])
    assert numbers == ["123456789012345@lid", "5511944440000"]
