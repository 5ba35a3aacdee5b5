"""SIGTERM under load: a bounded, clean drain that loses nothing."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.support.load import EvolutionLoad
from tests.support.oracle import Oracle
from tests.support.stack.net import free_port, http_get, wait_for
from tests.support.stack.pipeline import Stack
from tests.support.stack.services import Service, messages, stop_timed

BUDGET_S = 5.0  # SHUTDOWN_TIMEOUT of the services under test


def assert_drain_logged(worker: Service) -> None:
    """The worker's log tells the drain's progress, with counts."""
    records = worker.json_logs()
    order = [r.get("message") for r in records]
    for step in ("draining", "drained", "shutdown complete"):
        assert step in order, f"no {step!r} log line: {order[-8:]}"
    assert order.index("draining") < order.index("drained") < order.index("shutdown complete")
    draining = records[order.index("draining")]
    drained = records[order.index("drained")]
    complete = records[order.index("shutdown complete")]
    assert isinstance(draining["in_flight"], int)
    assert draining["signal"] == "SIGTERM"
    assert isinstance(drained["in_flight"], int)
    assert 0 <= drained["drain_s"] <= BUDGET_S
    assert 0 <= complete["shutdown_s"] <= BUDGET_S


def test_worker_sigterm_under_load_five_times_in_a_row(
    stack: Stack, make_load: Callable[..., EvolutionLoad], oracle: Oracle
) -> None:
    stack.start_ingest()
    load = make_load(rate=30, count=900).start()  # until stop_sending()
    exits: list[tuple[int, float]] = []
    for round_ in range(5):
        worker = stack.start_worker(name="w-restarted", SHUTDOWN_TIMEOUT=str(BUDGET_S))
        stored = len(stack.rows())
        wait_for(
            lambda stored=stored: len(stack.rows()) > stored,
            timeout=15,
            what=f"worker (round {round_ + 1}) to store messages under load",
        )
        code, took = stop_timed(worker, BUDGET_S)
        exits.append((code, took))
        assert code == 0, f"round {round_ + 1}: exit code {code}"
        assert took <= BUDGET_S, f"round {round_ + 1}: took {took:.2f}s > {BUDGET_S}s"
        assert_drain_logged(worker)
    print(f"\nworker exits (code, seconds): {[(c, round(t, 2)) for c, t in exits]}")
    print(f"rounds done after {time.monotonic() - load.started:.1f}s of load: {load.summary()}")

    load.stop_sending()
    stack.start_worker(name="w-restarted")
    load.finish(timeout=40)
    oracle.check(load)


def test_ingest_sigterm_under_load_while_evolution_retries(
    stack: Stack, make_load: Callable[..., EvolutionLoad], oracle: Oracle
) -> None:
    port = free_port()
    env = {"SHUTDOWN_TIMEOUT": str(BUDGET_S), "SHUTDOWN_DRAIN_DELAY": "1"}
    old = stack.start_ingest(port, **env)
    stack.start_worker()
    load = make_load(rate=30, count=180).start()
    wait_for(lambda: load.accepted_count() >= 30, timeout=15, what="30 webhooks accepted")

    assert old.proc is not None
    signalled = time.monotonic()
    old.proc.send_signal(signal.SIGTERM)
    # Right after the signal, /ready says "do not route here" while the process drains.
    wait_for(
        lambda: http_get(stack.url("/ready"), timeout=1)[0] == 503,
        timeout=BUDGET_S,
        what="/ready to answer 503 during the drain",
    )
    code = old.proc.wait(timeout=BUDGET_S + 10)  # no second signal: that would force the exit
    took = time.monotonic() - signalled
    assert code == 0, f"ingest exit code {code}"
    assert took <= BUDGET_S, f"ingest took {took:.2f}s to exit (budget {BUDGET_S}s)"
    assert messages(old, "draining"), "ingest did not log its drain"

    stack.start_ingest(port, **env)  # the same port: Evolution's URL does not change
    load.finish(timeout=40)
    outcomes = load.outcomes()
    refused = sum(n for o, n in outcomes.items() if not o.isdigit())
    assert outcomes["503"] + refused > 0, f"the load never saw the restart: {load.summary()}"
    print(f"\nload: {load.summary()}")
    oracle.check(load)
