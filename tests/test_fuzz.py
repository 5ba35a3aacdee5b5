"""Property-based fuzzing of the webhook endpoint against the live ingest and worker.

Whatever arrives, ingest answers with one of its documented statuses (never a
5xx or an unhandled exception), and every message it accepts ends as a row.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import WEBHOOK_SECRET, Stack

DOCUMENTED = {202, 400, 401, 413, 415, 422}

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(max_size=30)  # includes NUL, surrogates are excluded by hypothesis' text()
keys = st.fixed_dictionaries(
    {
        "remoteJid": st.one_of(texts, json_values),
        "fromMe": st.one_of(st.booleans(), json_values),
        "id": st.one_of(texts.filter(bool), json_values),
    },
    optional={"participant": texts, "remoteJidAlt": texts},
)
upserts = st.fixed_dictionaries(
    {
        "event": st.sampled_from(
            ["messages.upsert", "MESSAGES_UPSERT", "messages.update", "connection.update"]
        )
        | texts,
        "instance": st.one_of(texts, json_values),
        "data": st.one_of(
            st.fixed_dictionaries(
                {"key": keys},
                optional={
                    "message": json_values,
                    "messageType": st.one_of(texts, json_values),
                    "messageTimestamp": json_values,
                    "pushName": json_values,
                },
            ),
            json_values,
        ),
    },
    optional={"date_time": texts, "sender": texts, "apikey": texts},
)
# Well-formed messages whose content is fuzzed: these must be accepted and stored.
valid_upserts = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["messages.upsert", "MESSAGES_UPSERT"]),
        "instance": st.text(min_size=1, max_size=20),
        "data": st.fixed_dictionaries(
            {
                "key": st.fixed_dictionaries(
                    {
                        "remoteJid": st.text(min_size=1, max_size=30),
                        "fromMe": st.booleans(),
                        "id": st.text(min_size=1, max_size=24),
                    },
                    optional={"participant": json_values},
                ),
                "message": st.one_of(
                    st.fixed_dictionaries({"conversation": st.text(max_size=200)}),
                    json_values,
                ),
            },
            optional={
                "messageType": json_values,
                "messageTimestamp": json_values,
                "pushName": json_values,
                "contextInfo": json_values,
            },
        ),
    },
    optional={"date_time": json_values, "extra": json_values},
)
bodies = st.one_of(
    valid_upserts.map(lambda b: json.dumps(b).encode()),
    valid_upserts.map(lambda b: json.dumps(b).encode()),
    upserts.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=200),
)
header_sets = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(
            [
                "application/json",
                "text/plain",
                "application/xml",
                "application/json; charset=utf-8",
                "",
            ]
        ),
        "traceparent": st.one_of(
            st.text(max_size=60), st.just("00-" + "a" * 32 + "-" + "b" * 16 + "-01")
        ),
        "tracestate": st.text(alphabet="abc=,-_ 0123", max_size=40),
        "baggage": st.text(alphabet="abc=,;%20 k1", max_size=40),
        "authorization": st.sampled_from(["Bearer x.y.z", "Bearer", "Basic abc", ""]),
    },
)


def test_fuzzed_webhooks_get_documented_answers_and_accepted_ones_become_rows(
    stack: Stack,
) -> None:
    stack.start_ingest()
    stack.start_worker(MAX_DELIVERIES="2")
    accepted: set[str] = set()
    client = httpx.Client(base_url=stack.url(""), timeout=10)

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        body=bodies,
        headers=header_sets,
        authed=st.booleans(),
        path_suffix=st.sampled_from(["", "/messages-upsert", "/connection-update", "/x"]),
    )
    def check(body: bytes, headers: dict[str, str], authed: bool, path_suffix: str) -> None:
        # Only values a real HTTP client can send (h11 refuses the rest client-side).
        hdrs = {
            k: v for k, v in headers.items() if v.isascii() and v.isprintable() and v == v.strip()
        }
        if authed:
            hdrs["x-webhook-secret"] = WEBHOOK_SECRET
        resp = client.post("/webhooks/evolution" + path_suffix, content=body, headers=hdrs)
        assert resp.status_code in DOCUMENTED, (resp.status_code, resp.text, body[:200])
        payload: dict[str, Any] = resp.json()
        if resp.status_code == 202 and payload["status"] == "queued":
            assert authed
            accepted.add(payload["stream_id"])
        elif resp.status_code != 202:
            assert payload["error"]

    try:
        check()
    finally:
        client.close()
    assert accepted, "the fuzzer never produced an acceptable message"

    # Every accepted entry is processed: a row (or, for a payload the database
    # cannot hold, a visible dead letter) and nothing left pending.
    wait_for(
        lambda: stack.queue.unacknowledged() == 0,
        timeout=60,
        what="all fuzzed entries processed",
    )
    dead = stack.queue.dead_letters()
    stored = {row["stream_id"] for row in stack.rows()}
    assert not dead, [d[1].get("error_type") for d in dead]
    # Duplicated message ids collapse to one row, so compare through the stream ids
    # whose message identity was stored at least once.
    assert len(stored) <= len(accepted)
    assert stored, "no accepted message became a row"
    logs = "\n".join(stack.all_logs())
    assert "Traceback" not in logs
    assert '"level": "ERROR"' not in logs
