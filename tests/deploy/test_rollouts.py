"""Deploys proven: two ingest instances behind HAProxy (standing in for Fly's
proxy, routing on ingest's ``/ready``), an Evolution-like client retrying what
it is refused, and the strategies fly/ uses, against real processes:

* migrations first, expand then contract, under load;
* a rolling deploy of the workers (fly/worker.toml);
* a blue-green deploy of ingest (fly/ingest.toml): no client-visible error;
* a 10 % canary by proxy weights, promoted while its error rate stays under
  the threshold and rolled back automatically otherwise (a new version that
  answers 503 to every webhook; one that never passes its check).

Each ends with the oracle: every accepted message is exactly one row, nothing
pending, no dead letters. The figures are printed and recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploys import (
    CLIENT_TIMEOUT,
    CanaryPolicy,
    Cutover,
    IngestFleet,
    RefusingRedis,
    as_json,
    begin,
    blue_green,
    canary,
    client_figures,
    fly_deploy,
    fly_shutdown_env,
    fly_strategy,
    phase_figures,
    span,
    start_workers,
)
from tests.support.load import EvolutionLoad
from tests.support.oracle import Oracle
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack
from tests.support.stack.services import Service

RATE = 40  # webhooks per second, over 40 chats
POLICY = CanaryPolicy(check_timeout=5.0)


@pytest.fixture
def template(samples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return samples["messages-upsert-text"]


@pytest.fixture
def fleet(stack: Stack, tmp_path: Path) -> Iterator[IngestFleet]:
    """Two ingest instances (the blues) behind HAProxy, with fly's drain settings."""
    fleet = IngestFleet.behind(stack, tmp_path / "proxy", fly_shutdown_env("ingest"))
    try:
        yield fleet
    finally:
        fleet.proxy.stop()


@pytest.fixture
def workers(stack: Stack) -> list[Service]:
    """Two workers, for the rolling deploy."""
    return start_workers(stack, ["w-1", "w-2"], **fly_shutdown_env("worker"))


@pytest.fixture
def worker(stack: Stack) -> Service:
    """One worker: the canary deploys only ingest (the machine has 2 cores)."""
    (one,) = start_workers(stack, ["w-1"], **fly_shutdown_env("worker"))
    return one


@pytest.fixture
def load(fleet: IngestFleet, stack: Stack, template: dict[str, Any]) -> Iterator[EvolutionLoad]:
    """Evolution through the proxy, until ``stop_sending()`` (at most two minutes)."""
    load = EvolutionLoad(
        fleet.proxy.url(),
        template,
        secret=stack.secret,
        rate=RATE,
        count=RATE * 120,
        request_timeout=CLIENT_TIMEOUT,
    )
    try:
        yield load
    finally:
        load.abort()


def warm_up(load: EvolutionLoad) -> None:
    load.start()
    wait_for(lambda: load.accepted_count() >= RATE, timeout=15, what=f"{RATE} webhooks accepted")


def settle(load: EvolutionLoad, more: int = RATE // 2) -> None:
    """Some more acceptances after the last step, then no new message."""
    target = load.accepted_count() + more
    wait_for(lambda: load.accepted_count() >= target, timeout=15, what="acceptances after it")
    load.stop_sending()
    load.finish(timeout=30)


def report(record: Callable[[str, object], None], name: str, value: Any) -> None:
    text = json.dumps(as_json(value), sort_keys=True)
    record(name, text)
    print(f"\n{name}: {text}")


def assert_every_message_delivered(load: EvolutionLoad) -> None:
    """Each message the client sent ended accepted: none given up or refused for good."""
    lost = [d for d in load.snapshot() if not d.accepted]
    assert not lost, f"{len(lost)} message(s) never accepted, e.g. {lost[:3]}; {load.summary()}"


def test_migrations_then_rolling_workers_then_blue_green_ingest(
    stack: Stack,
    fleet: IngestFleet,
    workers: list[Service],
    load: EvolutionLoad,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """``fly deploy`` of both apps under load, each with its fly/ strategy."""
    assert fly_strategy("ingest") == "bluegreen", "fly/ingest.toml: this test expects bluegreen"
    warm_up(load)
    deploy = fly_deploy(stack, fleet, workers, tmp_path)
    settle(load)
    tally = Oracle(stack, record_property).check(load)
    whole = span(deploy.phases)
    figures = phase_figures(load, stack, [*deploy.phases, whole])
    report(record_property, "deploy_figures", figures)
    cutover = deploy.ingest
    assert isinstance(cutover, Cutover)
    bg = figures["bluegreen deploy of ingest"]["client"]
    everything = figures[whole.name]["client"]

    assert cutover.promoted, cutover.reason
    assert [code for code, _ in cutover.blue_exits] == [0, 0], cutover.blue_exits
    assert fleet.proxy.serving() == cutover.green == ["green-1", "green-2"]
    assert all(fleet.proxy.stat(s).responses["2xx"] > 0 for s in cutover.green), (
        "the greens never served"
    )
    assert [code for code, _ in deploy.roll.exits] == [0, 0], deploy.roll.exits
    assert all(w.alive() for w in deploy.roll.workers)
    applied = {r[0] for r in stack.sql("SELECT filename FROM public.schema_migrations")}
    assert {"990_deploy_expand.sql", "991_deploy_contract.sql"} <= applied
    # The acceptance criterion: nothing lost, nothing twice, no client-visible error.
    assert not tally.missing
    assert not tally.duplicated
    assert bg.non_2xx == 0, f"client-visible errors during blue-green: {bg.line()}"
    assert bg.retries == 0, bg.line()
    assert everything.non_2xx == 0, f"client-visible errors during the deploy: {everything.line()}"
    assert_every_message_delivered(load)
    # No outage: acceptances never stop for longer than CPU contention on a
    # shared 2-core machine explains (a rolling deploy of ingest stays under it
    # too: what tells them apart is the client-visible 503s).
    assert bg.longest_gap_s < 3.0, bg.line()


def test_canary_rolled_back_when_broken_and_promoted_when_healthy(
    stack: Stack,
    fleet: IngestFleet,
    worker: Service,
    load: EvolutionLoad,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """Two new versions in a row under one load: a broken one, which passes its
    check but answers 503 to every webhook (its Redis refuses writes), then a
    healthy one, promoted by a blue-green of the rest. (A version that never
    passes its check is rolled back the same way: ``make bench-deploy``.)"""
    phases = []
    verdicts = {}
    with RefusingRedis(tmp_path / "bad-redis") as refusing:
        warm_up(load)
        phase = begin("canary that answers 503")
        verdict, survivor, _ = canary(fleet, phase, POLICY, REDIS_URL=refusing.url)
        phases.append(phase.end())
        verdicts["broken"] = verdict
        assert not verdict.promoted, f"promoted: {verdict}"
        assert survivor is None
        assert fleet.proxy.serving() == ["blue-1", "blue-2"], "not rolled back"
    phase = begin("healthy canary, then blue-green")
    verdict, promoted, slot = canary(fleet, phase, POLICY)
    verdicts["healthy"] = verdict
    assert verdict.promoted, verdict.reason
    assert promoted is not None
    cutover = blue_green(fleet, phase, started={slot: promoted})
    phases.append(phase.end())
    settle(load)
    tally = Oracle(stack, record_property).check(load)
    clients = {p.name: client_figures(load, p.started, p.ended) for p in phases}
    report(
        record_property,
        "canary_figures",
        {
            "verdicts": verdicts,
            "phases": {p.name: {"client": clients[p.name], "events": p.events} for p in phases},
        },
    )

    answers_503, healthy = verdicts["broken"], verdicts["healthy"]
    client_503 = clients[phases[0].name]
    assert "error rate" in answers_503.reason, answers_503.reason
    assert answers_503.requests >= POLICY.min_sample
    assert answers_503.errors == answers_503.requests, "the broken version answered a 2xx"
    assert answers_503.exit_code == 0
    # Its 503s reached the client, which retried each of them onto a blue.
    assert client_503.non_2xx_by_outcome.get("503", 0) >= 1, client_503.line()
    assert healthy.errors == 0
    assert healthy.requests >= POLICY.min_requests
    assert healthy.observed_share is not None
    assert 0.03 <= healthy.observed_share <= 0.25, healthy
    assert cutover.promoted, cutover.reason
    assert slot in cutover.green
    assert fleet.proxy.serving() == cutover.green
    assert [code for code, _ in cutover.blue_exits] == [0, 0]
    promotion = clients[phases[1].name]
    assert promotion.non_2xx == 0, promotion.line()
    # Nothing lost: every message accepted in the end, exactly one row each.
    assert not tally.missing
    assert not tally.duplicated
    assert_every_message_delivered(load)
