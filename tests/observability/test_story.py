"""``wabot trace``: from any of a message's ids, its row, stream entry, replies,
trace timeline (from the real Jaeger) and log lines (from the real
VictoriaLogs), in one command; content only when asked, and then audited.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import psycopg

from tests.support.stack.backend import Jaeger, ObsStack, VictoriaLogs
from tests.support.stack.net import closed_port, wait_for
from tests.support.stack.services import run_cli

TEXT = "Olá, gostaria de marcar uma consulta para amanhã."


def trace_cli(
    stack: ObsStack, jaeger_url: str, logs_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **stack.env,
        "JAEGER_QUERY_URL": jaeger_url,
        "LOGS_QUERY_URL": logs_url,
        "OTEL_SDK_DISABLED": "true",
        "WABOT_OPERATOR": "dr-story",
    }
    return run_cli("wabot", "trace", *args, env=env, timeout=60)


def story_json(stack: ObsStack, jaeger: Jaeger, logs: VictoriaLogs, ident: str) -> dict[str, Any]:
    result = trace_cli(stack, jaeger.query_url, logs.url, ident, "--json")
    assert result.returncode == 0, result.stderr
    story = json.loads(result.stdout)
    assert isinstance(story, dict)
    return story


def wait_story_complete(
    stack: ObsStack, jaeger: Jaeger, logs: VictoriaLogs, ident: str
) -> dict[str, Any]:
    """The story once both services' spans and log lines have reached the backends."""
    wanted_logs = {("ingest", "webhook queued"), ("worker", "message processed")}

    def complete() -> dict[str, Any] | None:
        story = story_json(stack, jaeger, logs, ident)
        services = {s["service"] for s in story["timeline"]}
        lines = {(r.get("service.name"), r.get("_msg")) for r in story["logs"]}
        if {"ingest", "worker"} <= services and wanted_logs <= lines:
            return story
        return None

    story = wait_for(complete, timeout=45, what=f"spans and logs of both services for {ident}")
    assert story is not None
    return story


def test_trace_tells_a_message_story_from_each_of_its_ids(
    obs_stack: ObsStack,
    samples: dict[str, dict[str, Any]],
    jaeger: Jaeger,
    victorialogs: VictoriaLogs,
) -> None:
    obs_stack.start_ingest()
    obs_stack.start_worker()
    trace_id = obs_stack.post_message(samples["messages-upsert-text"], message_id="STORY0001")
    [row] = obs_stack.wait_rows(1)

    story = wait_story_complete(obs_stack, jaeger, victorialogs, "STORY0001")
    [shown] = story["rows"]
    assert (shown["id"], shown["message_id"], shown["trace_id"]) == (
        row["id"],
        "STORY0001",
        trace_id,
    )
    assert story["trace_id"] == trace_id
    assert story["unreachable"] == {}
    # Stored and acknowledged (kept in the stream until the next trim), never dead.
    assert story["redis"]["state"] in {"acknowledged", "absent"}, story["redis"]
    assert story["redis"]["pending"] is None
    assert story["redis"]["dead_letter"] is None

    # The timeline is a tree in time order: ingest's server span first (the
    # root), the worker's spans below the producer span it continued.
    timeline = story["timeline"]
    root = timeline[0]
    assert (root["service"], root["name"], root["depth"]) == (
        "ingest",
        "POST /webhooks/evolution",
        0,
    ), timeline
    assert [s for s in timeline if s["depth"] == 0] == [timeline[0]], timeline
    process = next(s for s in timeline if s["name"] == f"process {obs_stack.stream}")
    assert process["service"] == "worker", timeline
    assert process["depth"] == 2, timeline  # below ingest's send span
    assert all(s["duration_ms"] >= 0 and s["start_ms"] >= 0 for s in timeline)
    # Log lines are in time order and all of this trace.
    times = [r["_time"] for r in story["logs"]]
    assert times == sorted(times)
    assert {r["trace_id"] for r in story["logs"]} == {trace_id}

    # The same story from the trace id and from the stream entry id.
    for ident in (trace_id, row["stream_id"]):
        again = story_json(obs_stack, jaeger, victorialogs, ident)
        assert [r["id"] for r in again["rows"]] == [row["id"]], ident
        assert again["trace_id"] == trace_id
        assert {s["name"] for s in again["timeline"]} == {s["name"] for s in timeline}

    # What a terminal shows: the trace indented, the logs, no patient data.
    text = trace_cli(obs_stack, jaeger.query_url, victorialogs.url, "STORY0001")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert f"(trace {trace_id})" in out
    assert "ingest: POST /webhooks/evolution" in out
    assert f"    worker: process {obs_stack.stream}" in out  # indented below ingest
    assert "worker: message processed" in out
    for secret in (TEXT, "Maria Exemplo", "5511987650001"):
        assert secret not in out, secret
        assert secret not in json.dumps(story), secret


def test_show_content_opens_the_text_and_is_audited(
    obs_stack: ObsStack,
    samples: dict[str, dict[str, Any]],
    jaeger: Jaeger,
    victorialogs: VictoriaLogs,
) -> None:
    obs_stack.start_ingest()
    obs_stack.start_worker()
    obs_stack.post_message(samples["messages-upsert-text"], message_id="STORY0002")
    [row] = obs_stack.wait_rows(1)

    result = trace_cli(
        obs_stack, jaeger.query_url, victorialogs.url, "STORY0002", "--show-content", "--json"
    )
    assert result.returncode == 0, result.stderr
    [shown] = json.loads(result.stdout)["rows"]
    # Sealed in the database, opened with the content keys for the operator.
    [stored] = obs_stack.rows(sealed=True)
    assert stored["text_body"] is None
    assert stored["text_body_enc"] is not None
    assert shown["text_body"] == TEXT
    assert shown["push_name"] == "Maria Exemplo"
    assert shown["remote_jid"] == "5511987650001@s.whatsapp.net"

    with psycopg.connect(obs_stack.dsn) as conn:
        audits = conn.execute(
            "SELECT operator, details FROM healthcare.audit_log WHERE action = 'read_content'"
        ).fetchall()
    assert audits == [("dr-story", {"rows": [row["id"]], "by": "message_id"})], audits


def test_trace_without_jaeger_or_logs_still_shows_the_row(
    obs_stack: ObsStack, samples: dict[str, dict[str, Any]]
) -> None:
    obs_stack.start_ingest()
    obs_stack.start_worker()
    obs_stack.post_message(samples["messages-upsert-text"], message_id="STORY0003")
    [row] = obs_stack.wait_rows(1)
    closed = f"http://127.0.0.1:{closed_port()}"

    result = trace_cli(obs_stack, closed, closed, "STORY0003")
    assert result.returncode == 0, result.stderr
    assert f"id: {row['id']}" in result.stdout
    assert "(jaeger not reachable: ConnectError)" in result.stdout
    assert "(logs not reachable: ConnectError)" in result.stdout


def test_trace_finds_a_message_still_waiting_in_the_stream(
    obs_stack: ObsStack, samples: dict[str, dict[str, Any]], victorialogs: VictoriaLogs
) -> None:
    # No worker: accepted, queued, not stored. The story says where it waits.
    obs_stack.start_ingest()
    trace_id = obs_stack.post_message(samples["messages-upsert-text"], message_id="STORY0004")
    closed = f"http://127.0.0.1:{closed_port()}"

    result = trace_cli(obs_stack, closed, victorialogs.url, "STORY0004", "--json")
    assert result.returncode == 0, result.stderr
    story = json.loads(result.stdout)
    assert story["rows"] == []
    assert story["redis"]["in_stream"] is True
    assert story["redis"]["state"] == "waiting"
    assert story["redis"]["stream_id"]
    assert story["trace_id"] == trace_id  # from the entry's traceparent


def test_trace_of_an_unknown_id_exits_non_zero(
    obs_stack: ObsStack, jaeger: Jaeger, victorialogs: VictoriaLogs
) -> None:
    result = trace_cli(obs_stack, jaeger.query_url, victorialogs.url, "NO-SUCH-MESSAGE")
    assert result.returncode == 1, result.stdout
    assert "row: none stored (yet)" in result.stdout
