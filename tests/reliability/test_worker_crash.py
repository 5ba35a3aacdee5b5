"""kill -9 of a worker in the middle of handling loses nothing and stores nothing twice."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.load import EvolutionLoad
from tests.support.oracle import Oracle
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack
from tests.support.stack.queue import QueueView
from tests.support.stack.services import messages
from wabot_shared import names


def assert_rows_carry_their_trace(stack: Stack, load: EvolutionLoad) -> None:
    """A redelivered message is still stored in the trace its webhook started."""
    traces = {row["message_id"]: row["trace_id"] for row in stack.rows()}
    for d in load.snapshot():
        if d.accepted and d.attempts == 1:  # a re-sent webhook may have been queued twice
            assert traces[d.message_id] == d.trace_id, d.message_id


def test_worker_killed_after_read_its_entries_are_reclaimed_by_another_worker(
    stack: Stack, make_load: Callable[..., EvolutionLoad], oracle: Oracle, queue: QueueView
) -> None:
    stack.start_ingest()
    load = make_load(rate=30, count=120).start()
    # A backlog first, so worker A's first read takes a whole batch with it.
    wait_for(lambda: queue.length() >= 20, timeout=15, what="a backlog of 20 stream entries")
    worker_a = stack.start_worker(name="w-a", must_live=False, FAULT_INJECTION="crash_after_read")
    wait_for(
        lambda: not worker_a.alive(), timeout=20, what="worker A to SIGKILL itself after XREADGROUP"
    )
    assert worker_a.proc is not None
    assert worker_a.proc.returncode == -9
    orphaned = queue.pending_ids("w-a")
    assert orphaned, "worker A died holding no entries"

    # B never shares A's name; it takes A's partitions over once A's leases
    # expire, and claims everything still pending in them first.
    worker_b = stack.start_worker(name="w-b")
    wait_for(
        lambda: not queue.pending_ids("w-a"),
        timeout=20,
        what=f"worker B to claim the {len(orphaned)} entries worker A left pending",
    )
    load.finish(timeout=30)
    oracle.check(load)

    stored = {row["stream_id"] for row in stack.rows()}
    assert set(orphaned) <= stored, "an entry worker A held was never stored"
    claimed = sum(int(r.get("entries", 0)) for r in messages(worker_b, "claimed pending entries"))
    assert claimed >= len(orphaned), f"B logged {claimed} claimed, A held {len(orphaned)}"
    assert_rows_carry_their_trace(stack, load)


def test_worker_killed_between_commit_and_ack_redelivery_is_a_counted_duplicate(
    stack: Stack, make_load: Callable[..., EvolutionLoad], oracle: Oracle, queue: QueueView
) -> None:
    stack.start_ingest()
    load = make_load(rate=30, count=90).start()
    wait_for(lambda: queue.length() >= 5, timeout=15, what="a backlog of 5 stream entries")
    worker = stack.start_worker(name="w-crash", must_live=False, FAULT_INJECTION="crash_before_ack")
    wait_for(
        lambda: not worker.alive(), timeout=20, what="the worker to SIGKILL itself before XACK"
    )
    assert worker.proc is not None
    assert worker.proc.returncode == -9
    held = set(queue.pending_ids("w-crash"))
    committed = held & {row["stream_id"] for row in stack.rows()}
    assert committed, "the crash before XACK left no committed-but-pending entry"

    # The same container restarted: same consumer name, own pending entries first.
    stack.start_worker(name="w-crash")
    load.finish(timeout=30)
    oracle.check(load)

    def duplicates() -> float:
        return stack.cumulative(
            names.METRIC_OUTCOMES, "worker", **{names.ATTR_OUTCOME: "duplicate"}
        )

    wait_for(
        lambda: duplicates() >= len(committed),
        timeout=15,
        what=f"{len(committed)} duplicate outcome(s) counted",
    )
    # Only the redelivered entries (and, at most, webhooks Evolution re-sent) are duplicates.
    assert len(committed) <= duplicates() <= len(committed) + load.retried()
    assert_rows_carry_their_trace(stack, load)
