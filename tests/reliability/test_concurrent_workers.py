"""Three workers under load: every entry is processed by exactly one of them, once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.support.load import EvolutionLoad
from tests.support.oracle import Oracle
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack, wait_worker_up
from tests.support.stack.services import messages
from wabot_shared import names

NAMES = ("w-0", "w-1", "w-2")


def test_three_workers_never_process_one_entry_twice(
    stack: Stack, make_load: Callable[..., EvolutionLoad], oracle: Oracle
) -> None:
    stack.start_ingest()
    workers = [stack.start_worker(name, wait=False) for name in NAMES]
    for worker in workers:
        wait_worker_up(worker)
    load = make_load(rate=40, count=200).start()
    load.finish(timeout=30)
    tally = oracle.check(load)

    def outcome(name: str) -> float:
        return stack.cumulative(names.METRIC_OUTCOMES, "worker", **{names.ATTR_OUTCOME: name})

    wait_for(
        lambda: outcome("processed") == tally.rows,
        timeout=15,
        what=f"{tally.rows} processed outcomes counted",
    )
    # A duplicate needs a redelivery: none happened here (no crash, no reclaim),
    # except for webhooks Evolution itself re-sent.
    redeliveries = sum(len(messages(w, "reclaimed")) for w in workers)
    assert redeliveries == 0
    assert outcome("duplicate") <= load.retried()

    span_name = names.process_span_name(stack.stream)
    stream_ids = {row["stream_id"] for row in stack.rows()}

    def process_spans() -> list[dict[str, Any]]:
        with stack.sink.lock:
            return [
                s
                for s in stack.sink.spans
                if s["name"] == span_name and s["resource"].get("test.run.id") == stack.run_id
            ]

    wait_for(
        lambda: stream_ids <= {s["attributes"]["messaging.message.id"] for s in process_spans()},
        timeout=15,
        what="a process span for every stored entry",
    )
    spans = process_spans()
    # An entry id is unique within its partition only (one pipelined XADD to
    # several partitions gives them the same millisecond, and the same id).
    per_entry = Counter(
        (
            s["attributes"]["messaging.destination.partition.id"],
            s["attributes"]["messaging.message.id"],
        )
        for s in spans
    )
    twice = {entry: n for entry, n in per_entry.items() if n > 1}
    assert not twice, f"entries processed more than once: {twice}"
    per_worker = Counter(s["attributes"]["messaging.client.id"] for s in spans)
    assert set(per_worker) == set(NAMES), f"work was not shared: {dict(per_worker)}"
    print(f"\nprocess spans per worker: {dict(per_worker)}")
    assert all(w.alive() for w in workers)
