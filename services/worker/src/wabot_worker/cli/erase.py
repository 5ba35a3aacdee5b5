"""``wabot erase``: every stored message of one chat, gone.

Order: rows, then stream entries and dead letters (found by opening their
payloads), then rows once more, so a message a worker stored while the stream
was being cleaned is removed too. Then the Redis append-only file is
rewritten, so the deleted entries do not linger in it.

What it cannot reach is listed in the README ("Data protection"): database
backups and WAL archives, Redis snapshots taken before, and telemetry stores,
which carry no message content in the first place.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from redis.exceptions import RedisError

from wabot_shared import audit, names
from wabot_shared.content import open_payload
from wabot_shared.crypto import DecryptError, Keyring
from wabot_shared.message import WebhookError, parse_webhook, read_message
from wabot_shared.queue import StreamQueue, connect
from wabot_worker.settings import WorkerSettings

log = logging.getLogger("wabot.cli")
_CHUNK = 1000


def _matches(
    fields: dict[str, str], keyring: Keyring | None, chat: str, instance: str | None
) -> bool:
    payload = fields.get(names.FIELD_PAYLOAD)
    if payload is None:
        return False
    try:
        message = read_message(parse_webhook(open_payload(keyring, payload).encode()))
    except (WebhookError, DecryptError):
        return False
    return message.remote_jid == chat and (instance is None or message.instance == instance)


async def _scan(
    queue: StreamQueue, key: str, keyring: Keyring | None, chat: str, instance: str | None
) -> list[str]:
    """Ids of ``key``'s entries that belong to the chat (bounded by the stream)."""
    return [
        entry_id
        async for entry_id, fields in queue.scan(key)
        if _matches(fields, keyring, chat, instance)
    ]


def _delete_rows(dsn: str, chat: str, instance: str | None) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT healthcare.erase_chat(%s, %s)", (chat, instance)).fetchone()
    return int(row[0]) if row else 0


async def erase(settings: WorkerSettings, chat: str, instance: str | None) -> dict[str, Any]:
    """Erase one chat; returns the counts (also written to the audit log)."""
    keyring = settings.keyring()
    dsn = settings.database_url.get_secret_value()
    rows = _delete_rows(dsn, chat, instance)
    client = connect(settings.redis_url.get_secret_value(), socket_connect_timeout=2.0)
    queue = StreamQueue(
        client, settings.stream_name, settings.consumer_group, settings.stream_partitions
    )
    partitions = [queue.partition_of(instance, chat)] if instance else list(range(queue.partitions))
    entries = dead = failures = 0
    aof = "not requested"
    try:
        for partition in partitions:
            key = queue.key(partition)
            ids = await _scan(queue, key, keyring, chat, instance)
            if ids:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.xack(key, settings.consumer_group, *ids)
                    pipe.xdel(key, *ids)
                    pipe.hdel(queue.failures_key(partition), *ids)
                    _, deleted, counters = await pipe.execute()
                entries += int(deleted)
                failures += int(counters)
        dead_ids = await _scan(queue, queue.dead_stream, keyring, chat, instance)
        if dead_ids:
            dead = int(await client.xdel(queue.dead_stream, *dead_ids))
        if entries or dead:
            try:
                await client.bgrewriteaof()
                aof = "rewrite requested"
            except RedisError as exc:  # managed Redis may refuse it
                aof = f"not available ({type(exc).__name__})"
    finally:
        await client.aclose()
    rows += _delete_rows(dsn, chat, instance)
    summary: dict[str, Any] = {
        "rows": rows,
        "stream_entries": entries,
        "dead_letters": dead,
        "failure_counters": failures,
        "instance_given": instance is not None,
        "redis_aof": aof,
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        audit.record(conn, "erase", audit.operator(), summary)
    log.info("chat erased", extra={"entries": entries + dead + rows})
    return summary
