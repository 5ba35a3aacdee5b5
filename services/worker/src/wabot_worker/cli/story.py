"""``wabot trace <trace_id | message_id | stream_id>``: one message's whole story.

From any of its ids, in one command: its row (the chat, the text and the name
only with ``--show-content``, opened with the content keys and audited), its
stream entry (queued, pending on which consumer, how often it failed), its dead
letter, its replies in the outbox (sent, delivered, read), its trace as an
indented timeline with durations (from Jaeger's API) and its log lines (from
VictoriaLogs). It works against the native stack and against production
endpoints (``JAEGER_QUERY_URL``, ``LOGS_QUERY_URL``).
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import httpx
import orjson
import psycopg
from psycopg.rows import dict_row

from wabot_shared import audit, names
from wabot_shared.content import open_row
from wabot_shared.crypto import Keyring
from wabot_shared.queue import StreamQueue, connect, parse_id
from wabot_worker.settings import WorkerSettings
from wabot_worker.writes import reply_aad

TRACE_ID = re.compile(r"[0-9a-f]{32}")
STREAM_ID = re.compile(r"[0-9]{10,15}-[0-9]+")
_ROW = "SELECT * FROM healthcare.whatsapp_messages WHERE {} ORDER BY id LIMIT 20"
_REPLIES = """
SELECT id, seq, status, attempts, last_error, evolution_message_id, created_at, sent_at,
       delivered_at, read_at, text_body, text_enc, instance_name, remote_jid, inbound_message_id
  FROM healthcare.whatsapp_outbox
 WHERE instance_name = %s AND inbound_message_id = %s ORDER BY seq
"""
_SHOWN = (
    "id",
    "instance_name",
    "from_me",
    "message_id",
    "message_type",
    "resolution",
    "organization_id",
    "trace_id",
    "stream_id",
    "received_at",
    "processed_at",
    "parse_issues",
    "status",
    "deleted_at",
    "content_purged_at",
    "content_key_id",
)


def _kind(ident: str) -> str:
    if TRACE_ID.fullmatch(ident):
        return "trace_id"
    if STREAM_ID.fullmatch(ident):
        return "stream_id"
    return "message_id"


def _rows(settings: WorkerSettings, ident: str, show_content: bool) -> list[dict[str, Any]]:
    where = f"{_kind(ident)} = %s"
    with psycopg.connect(settings.database_url.get_secret_value(), row_factory=dict_row) as conn:
        rows = conn.execute(_ROW.format(where), (ident,)).fetchall()
        for row in rows:
            row["replies"] = conn.execute(
                _REPLIES, (row["instance_name"], row["message_id"])
            ).fetchall()
        if show_content and rows:
            # Opening a patient's message is accountable, like erasing it.
            audit.record(
                conn,
                "read_content",
                audit.operator(),
                {"rows": [r["id"] for r in rows], "by": _kind(ident)},
            )
    keyring = settings.keyring()
    out = []
    for row in rows:
        shown: dict[str, Any] = {k: row.get(k) for k in _SHOWN}
        replies = []
        for reply in row["replies"]:
            item = {
                k: reply[k]
                for k in (
                    "seq",
                    "status",
                    "attempts",
                    "last_error",
                    "evolution_message_id",
                    "created_at",
                    "sent_at",
                    "delivered_at",
                    "read_at",
                )
            }
            if show_content:
                item["text"] = _reply_text(keyring, reply)
            replies.append(item)
        shown["replies"] = replies
        if show_content:
            opened = open_row(keyring, row)
            shown["remote_jid"] = row["remote_jid"]
            shown.update({k: opened.get(k) for k in ("text_body", "push_name", "raw_payload")})
        out.append(shown)
    return out


def _reply_text(keyring: Keyring | None, reply: dict[str, Any]) -> str | None:
    if reply["text_enc"] is None:
        return str(reply["text_body"]) if reply["text_body"] is not None else None
    if keyring is None:
        return None
    aad = reply_aad(
        reply["instance_name"], reply["remote_jid"], reply["inbound_message_id"], reply["seq"]
    )
    return keyring.open(reply["text_enc"], aad).decode()


async def _stream_state(
    settings: WorkerSettings, stream_id: str | None, message_id: str | None
) -> dict[str, Any]:
    """Where the entry is in Redis: queued, pending (whose, how often), dead."""
    client = connect(settings.redis_url.get_secret_value(), socket_connect_timeout=2.0)
    queue = StreamQueue(
        client, settings.stream_name, settings.consumer_group, settings.stream_partitions
    )
    state: dict[str, Any] = {
        # waiting (not yet delivered), pending (delivered, unacknowledged),
        # acknowledged (kept until the next trim), absent (trimmed or never).
        "state": "absent",
        "in_stream": False,
        "pending": None,
        "failures": 0,
        "dead_letter": None,
    }
    try:
        if stream_id is None and message_id:
            # Not stored yet (worker down, or failing): look for it among the
            # entries still in the stream, which hold only the unacknowledged.
            for partition in range(queue.partitions):
                async for entry_id, fields in queue.scan(queue.key(partition)):
                    if fields.get(names.FIELD_MESSAGE_ID) == message_id:
                        stream_id = entry_id
                        state["trace_context"] = fields.get("traceparent")
                        break
                if stream_id:
                    break
        if stream_id:
            state["stream_id"] = stream_id
            for partition in range(queue.partitions):
                key = queue.key(partition)
                if not await client.xrange(key, stream_id, stream_id):
                    continue
                state["in_stream"] = True
                state["partition"] = partition
                rows = await client.xpending_range(
                    key, settings.consumer_group, stream_id, stream_id, 1
                )
                if rows:
                    state["state"] = "pending"
                    state["pending"] = {
                        "consumer": str(rows[0]["consumer"]),
                        "deliveries": int(rows[0]["times_delivered"]),
                        "idle_ms": int(rows[0]["time_since_delivered"]),
                    }
                else:
                    groups = await client.xinfo_groups(key)
                    last = next(
                        (
                            str(g.get("last-delivered-id") or "0-0")
                            for g in groups
                            if g.get("name") == settings.consumer_group
                        ),
                        "0-0",
                    )
                    delivered = parse_id(stream_id) <= parse_id(last)
                    state["state"] = "acknowledged" if delivered else "waiting"
                failures = await client.hget(queue.failures_key(partition), stream_id)
                state["failures"] = int(failures or 0)
                break
        async for dead_id, fields in queue.scan(queue.dead_stream):
            if (stream_id and fields.get(names.FIELD_ORIGINAL_ID) == stream_id) or (
                message_id and fields.get(names.FIELD_MESSAGE_ID) == message_id
            ):
                state["dead_letter"] = {
                    "id": dead_id,
                    "error_type": fields.get(names.FIELD_ERROR_TYPE),
                    "deliveries": fields.get(names.FIELD_DELIVERIES),
                    "dead_lettered_at": fields.get(names.FIELD_DEAD_AT),
                }
                state.setdefault("trace_context", fields.get("traceparent"))
    finally:
        await client.aclose()
    return state


def _timeline(jaeger_url: str, trace_id: str) -> list[dict[str, Any]]:
    """The trace's spans as (depth, service, name, start offset, duration)."""
    resp = httpx.get(f"{jaeger_url.rstrip('/')}/api/traces/{trace_id}", timeout=5)
    if resp.status_code == 404:
        return []
    resp.raise_for_status()
    data = resp.json().get("data") or []
    if not data:
        return []
    trace = data[0]
    processes = {k: v.get("serviceName") for k, v in trace.get("processes", {}).items()}
    spans = trace.get("spans", [])
    by_id = {s["spanID"]: s for s in spans}
    parent: dict[str, str | None] = {}
    for span in spans:
        # Jaeger's v1 model keeps one reference per span pair: a consumer's
        # parent that it also links to (its producer) comes as FOLLOWS_FROM.
        refs = [r for r in span.get("references", []) if r.get("spanID") in by_id]
        refs.sort(key=lambda r: r.get("refType") != "CHILD_OF")
        parent[span["spanID"]] = refs[0]["spanID"] if refs else None

    def depth(span_id: str) -> int:
        d, seen = 0, set()
        while parent.get(span_id) and span_id not in seen:
            seen.add(span_id)
            span_id = parent[span_id]  # type: ignore[assignment]
            d += 1
        return d

    origin = min((s["startTime"] for s in spans), default=0)
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in sorted(spans, key=lambda s: s["startTime"]):
        children.setdefault(parent[span["spanID"]], []).append(span)
    ordered: list[dict[str, Any]] = []

    def walk(node: str | None) -> None:
        for span in children.get(node, []):
            ordered.append(
                {
                    "depth": depth(span["spanID"]),
                    "service": processes.get(span.get("processID"), "?"),
                    "name": span["operationName"],
                    "start_ms": (span["startTime"] - origin) / 1000,
                    "duration_ms": span["duration"] / 1000,
                    "error": any(
                        t.get("key") == "error" and t.get("value") for t in span.get("tags", [])
                    ),
                }
            )
            walk(span["spanID"])

    walk(None)
    return ordered


def _logs(logs_url: str, trace_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(
        f"{logs_url.rstrip('/')}/select/logsql/query",
        params={"query": f"trace_id:{trace_id}", "limit": "1000"},
        timeout=5,
    )
    resp.raise_for_status()
    lines = [orjson.loads(line) for line in resp.text.splitlines() if line.strip()]
    return sorted(lines, key=lambda r: str(r.get("_time", "")))


async def story(
    settings: WorkerSettings, ident: str, *, show_content: bool, jaeger_url: str, logs_url: str
) -> dict[str, Any]:
    """Everything known about one message, found by any of its ids."""
    started = time.perf_counter()
    rows = _rows(settings, ident, show_content)
    row = rows[0] if rows else None
    trace_id = ident if TRACE_ID.fullmatch(ident) else (row or {}).get("trace_id")
    stream_id = (row or {}).get("stream_id") or (ident if STREAM_ID.fullmatch(ident) else None)
    message_id = (row or {}).get("message_id") or (
        ident if not (TRACE_ID.fullmatch(ident) or STREAM_ID.fullmatch(ident)) else None
    )
    out: dict[str, Any] = {"id": ident, "rows": rows}
    out["redis"] = await _stream_state(settings, stream_id, message_id)
    if trace_id is None and out["redis"].get("trace_context"):
        trace_id = str(out["redis"]["trace_context"]).split("-")[1]
    out["trace_id"] = trace_id
    errors: dict[str, str] = {}
    out["timeline"] = []
    out["logs"] = []
    if trace_id:
        try:
            out["timeline"] = _timeline(jaeger_url, trace_id)
        except (httpx.HTTPError, ValueError) as exc:
            errors["jaeger"] = type(exc).__name__
        try:
            out["logs"] = _logs(logs_url, trace_id)
        except (httpx.HTTPError, ValueError) as exc:
            errors["logs"] = type(exc).__name__
    out["unreachable"] = errors
    out["found"] = bool(
        rows or out["timeline"] or out["redis"]["in_stream"] or out["redis"]["dead_letter"]
    )
    out["took_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    return str(value)


def render(result: dict[str, Any]) -> str:
    """The story as text for a terminal."""
    lines = [f"message {result['id']}  (trace {result.get('trace_id') or '-'})"]
    if not result["rows"]:
        lines.append("  row: none stored (yet)")
    for row in result["rows"]:
        lines.append("  row:")
        for key, value in row.items():
            if key != "replies" and value not in (None, [], ""):
                lines.append(f"    {key}: {_fmt(value)}")
        for reply in row["replies"]:
            error = f" ({reply['last_error']})" if reply.get("last_error") else ""
            lines.append(
                f"    reply {reply['seq']}: {reply['status']}, {reply['attempts']} attempt(s),"
                f" sent {_fmt(reply['sent_at'])}, delivered {_fmt(reply['delivered_at'])},"
                f" read {_fmt(reply['read_at'])}{error}"
            )
    redis = result["redis"]
    where = {
        "waiting": "in the stream, waiting for a worker",
        "pending": "in the stream, delivered and not yet acknowledged",
        "acknowledged": "in the stream, acknowledged (until the next trim)",
        "absent": "not in the stream (trimmed or never queued)",
    }[redis["state"]]
    lines.append(f"  redis: {where}")
    if redis.get("pending"):
        p = redis["pending"]
        lines.append(
            f"    pending on {p['consumer']}: {p['deliveries']} deliveries, idle {p['idle_ms']} ms"
        )
    if redis.get("failures"):
        lines.append(f"    failures counted: {redis['failures']}")
    if redis.get("dead_letter"):
        d = redis["dead_letter"]
        lines.append(
            f"    DEAD LETTER {d['id']}: {d['error_type']} after {d['deliveries']} deliveries"
        )
    if result["timeline"]:
        lines.append("  trace:")
        for span in result["timeline"]:
            mark = " !" if span["error"] else ""
            lines.append(
                f"    {'  ' * span['depth']}{span['service']}: {span['name']}"
                f"  +{span['start_ms']:.1f} ms  {span['duration_ms']:.2f} ms{mark}"
            )
    if result["logs"]:
        lines.append("  logs:")
        for record in result["logs"]:
            lines.append(
                f"    {record.get('_time', '')} {record.get('severity', record.get('level', ''))}"
                f" {record.get('service.name', '')}: {record.get('_msg', '')}"
            )
    for where, error in result["unreachable"].items():
        lines.append(f"  ({where} not reachable: {error})")
    lines.append(f"  ({result['took_ms']} ms)")
    return "\n".join(lines)
