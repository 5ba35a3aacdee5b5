"""Property-based fuzzing of the whole pipeline, against the live ingest and worker.

Envelopes are generated from the message model (``wabot_shared.message``) and
then mutated: identity lengths at and over every limit, odd numbers (written
as raw JSON: 1e400, 40-digit integers, -0, NaN), unicode of every kind (NUL,
lone surrogates, emoji, right-to-left marks), missing and extra fields, and
every spelling of ``fromMe`` and the timestamp. Whatever arrives, ingest
answers one of its documented statuses, and every 2xx becomes exactly one row:
nothing stays pending and nothing is dead-lettered.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import WEBHOOK_SECRET, Stack
from wabot_shared import message as model

DOCUMENTED = {202, 400, 401, 413, 415, 422}
EXAMPLES = 500

# Raw JSON number literals (valid JSON unless noted) put where a value goes.
ODD_NUMBERS = ["1e400", "-1e400", "1e-400", "-0", "9" * 40, "1.7976931348623157e308", "NaN"]
_counter = itertools.count()

unicode_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])
    | st.sampled_from(["\x00", "\u200f", "\U0001f600", "\ufeff", "ç", "\u202e"]),
    max_size=40,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    unicode_text,
    st.sampled_from([f"@@{n}@@" for n in ODD_NUMBERS]),
    st.just("@@surrogate@@"),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(unicode_text, children, max_size=3)
    ),
    max_leaves=8,
)


def sized(limit: int) -> st.SearchStrategy[int]:
    """A length near a limit: well under, at, just over, far over (mostly valid,
    so that most examples reach the database)."""
    valid = [1, 5, 20, 24, 32, limit - 1, limit, limit]
    return st.sampled_from([*valid, *valid, limit + 1, limit * 4])


@st.composite
def envelopes(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A raw body and whether its identity is within the model's limits."""
    # The chat is unique per example, so every accepted message is a row of its own.
    unique = str(next(_counter))

    def identity(limit: int) -> tuple[str, bool]:
        length = draw(sized(limit))
        filler = draw(unicode_text.filter(lambda t: "\x00" not in t)) or "x"
        text = (filler * (length // len(filler) + 1))[:length]
        return text, length <= limit and bool(text.strip())

    message_id, ok_id = identity(model.MAX_MESSAGE_ID)
    suffix = "@s.whatsapp.net"
    jid_len = max(draw(sized(model.MAX_JID)), len(unique) + 3 + len(suffix))
    remote_jid = ("55" + unique + "0" * jid_len)[: jid_len - len(suffix)] + suffix
    ok_jid = len(remote_jid) <= model.MAX_JID
    instance = draw(st.sampled_from(["clinic", "clínica-são-paulo", "c" * model.MAX_INSTANCE]))
    from_me = draw(
        st.sampled_from([True, False, True, False, "true", "false", "FALSE", 1, None, "maybe"])
    )
    ok_from_me = isinstance(from_me, bool) or (
        isinstance(from_me, str) and from_me.lower() in ("true", "false")
    )
    key: dict[str, Any] = {"remoteJid": remote_jid, "fromMe": from_me, "id": message_id}
    if from_me is None:
        del key["fromMe"]
    data: dict[str, Any] = {
        "key": key,
        "pushName": draw(st.one_of(unicode_text, values, st.text(min_size=300, max_size=400))),
        "message": draw(st.one_of(st.fixed_dictionaries({"conversation": unicode_text}), values)),
        "messageType": draw(st.one_of(st.just("conversation"), values)),
        "messageTimestamp": draw(
            st.one_of(
                st.integers(min_value=-(2**40), max_value=2**45),
                st.text(alphabet="0123456789.e-", max_size=14),
                st.fixed_dictionaries(
                    {"low": st.integers(-(2**31), 2**32 - 1) | values},
                    optional={
                        "high": st.integers(-(2**31), 2**32 - 1) | values,
                        "unsigned": values,
                    },
                ),
                values,
            )
        ),
        "contextInfo": draw(values),
    }
    for name in draw(
        st.lists(
            st.sampled_from(
                ["pushName", "message", "messageType", "messageTimestamp", "contextInfo"]
            ),
            max_size=3,
        )
    ):
        data.pop(name, None)
    body: dict[str, Any] = {
        "event": draw(st.sampled_from(["messages.upsert", "MESSAGES_UPSERT", "messages-upsert"])),
        "instance": instance,
        "data": data,
        "date_time": "2026-11-28T09:15:02.118Z",
        **draw(
            st.dictionaries(st.sampled_from(["extra", "sender", "x-unknown"]), values, max_size=2)
        ),
    }
    raw = json.dumps(body, ensure_ascii=draw(st.booleans()))
    for literal in ODD_NUMBERS:
        raw = raw.replace(f'"@@{literal}@@"', literal)
    raw = raw.replace('"@@surrogate@@"', '"\\ud83d"')
    return raw.encode("utf-8", "surrogatepass"), ok_id and ok_jid and ok_from_me


def test_every_accepted_fuzzed_webhook_becomes_exactly_one_row(stack: Stack) -> None:
    stack.start_ingest()
    stack.start_worker(MAX_DELIVERIES="2")
    accepted: set[str] = set()
    statuses: dict[int, int] = {}
    client = httpx.Client(base_url=stack.url(""), timeout=10)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=envelopes())
    def check(case: tuple[bytes, bool]) -> None:
        raw, valid_identity = case
        resp = client.post(
            "/webhooks/evolution",
            content=raw,
            headers={"content-type": "application/json", "x-webhook-secret": WEBHOOK_SECRET},
        )
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        assert resp.status_code in DOCUMENTED, (resp.status_code, resp.text, raw[:300])
        payload: dict[str, Any] = resp.json()
        if resp.status_code == 202:
            assert payload["status"] == "queued", payload
            accepted.add(payload["stream_id"])
        elif resp.status_code == 422:
            assert not valid_identity, (payload, raw[:300])
        else:
            assert resp.status_code == 400, payload
            assert b"NaN" in raw, (payload, raw[:300])

    try:
        check()
    finally:
        client.close()
    assert sum(statuses.values()) >= EXAMPLES
    assert len(accepted) > EXAMPLES // 4, statuses  # most examples are stored
    assert statuses.get(422), statuses  # and the limits were exercised

    wait_for(
        lambda: stack.queue.unacknowledged() == 0,
        timeout=120,
        what="all fuzzed entries processed",
    )
    assert stack.queue.dead_letters() == []
    rows = stack.rows()
    assert sorted(r["stream_id"] for r in rows) == sorted(accepted)  # exactly one row each
    logs = "\n".join(stack.all_logs())
    assert "Traceback" not in logs
    assert '"level":"ERROR"' not in logs
