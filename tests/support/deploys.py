"""Deploys of real ingest and worker processes, modelled on what ``fly/`` uses.

* **Blue-green** (``fly/ingest.toml``: ``strategy = "bluegreen"``): a green
  instance is booted next to each blue one; only once every green passes the
  proxy's ``/ready`` check does traffic move to them, all at once; then the
  blues are drained (no new requests) and stopped with SIGTERM. A green that
  never passes its check is stopped and the blues keep serving.
* **Rolling** (``fly/worker.toml``): one worker at a time is stopped (SIGTERM:
  it drains and releases its partitions, which the others take over) and
  started again as the new version under the same consumer name (on Fly the
  machine id, which an update keeps), and must be healthy before the next one.
* **Canary**: one new ingest gets ``percent`` of the traffic by proxy weights
  and is promoted (a blue-green of the rest) only while its error rate stays
  under a threshold over a minimum of requests; otherwise it is rolled back
  (drained and stopped) automatically. Fly's proxy has no weights, so this
  gate runs where a proxy like HAProxy fronts ingest; Fly's own ``canary``
  strategy checks health only.
* **Migrations** first, expand/contract (README, "Schema changes during
  deploys"): the expand step (additive, which the running version ignores)
  before any new code, the contract step only once no old version runs.

Figures come from the Evolution-like load (tests/support/load.py) over each
phase's time window, and from the rows' ``processed_at``.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
import socket
import time
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support.load import EvolutionLoad, percentile
from tests.support.stack.env import clean_env
from tests.support.stack.net import free_port, wait_for
from tests.support.stack.paths import MIGRATIONS, REPO, redis_binary
from tests.support.stack.pipeline import Stack
from tests.support.stack.process import Process
from tests.support.stack.proxy import HealthCheck, Proxy, Slot
from tests.support.stack.services import Service, run_migrate, stop_all_timed, stop_timed

FLY_DIR = REPO / "fly"
BLUE_SLOTS = ("blue-1", "blue-2")
GREEN_SLOTS = ("green-1", "green-2")
FULL_WEIGHT = 100
# How long a new instance may take to be ready. Deploys boot instances while
# the old ones serve the load: on a shared 2-core machine an import-heavy
# Python boot has taken over 30 s (the harness' default) there.
BOOT_TIMEOUT = 60.0
# The load's request timeout during deploys: a request held longer than the
# load's default 3 s by a CPU-starved machine (new instances booting beside the
# load on 2 shared cores) is latency, reported as such, not a routing error.
CLIENT_TIMEOUT = 10.0


# --------------------------------------------------------------- fly/ model ---
def fly_config(app: str) -> dict[str, Any]:
    """fly/<app>.toml, parsed."""
    return tomllib.loads((FLY_DIR / f"{app}.toml").read_text())


def fly_strategy(app: str) -> str:
    """The deploy strategy of fly/<app>.toml (Fly's default is ``rolling``)."""
    return str(fly_config(app).get("deploy", {}).get("strategy", "rolling"))


def fly_shutdown_env(app: str) -> dict[str, str]:
    """The drain settings fly/<app>.toml gives the service (what a deploy waits on)."""
    env = fly_config(app).get("env", {})
    keys = ("SHUTDOWN_TIMEOUT", "SHUTDOWN_DRAIN_DELAY")
    return {k: str(env[k]) for k in keys if k in env}


def fly_ready_check() -> HealthCheck:
    """Ingest's routing check in fly/ingest.toml, as the proxy runs it: the same
    path and timeout, every 250 ms instead of every ``interval`` (10 s on Fly)
    so a deploy takes seconds, not minutes."""
    (check,) = fly_config("ingest")["http_service"]["checks"]
    timeout = str(check["timeout"])
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", timeout)
    assert match, f"fly/ingest.toml: check timeout {timeout!r}"
    scale = 1 if match[2] == "ms" else 1000
    return HealthCheck(path=str(check["path"]), timeout_ms=int(float(match[1]) * scale))


# ------------------------------------------------------------- the timeline ---
@dataclass
class Phase:
    """One deploy step, on the load's clock (monotonic) and the wall clock."""

    name: str
    started: float
    started_wall: float
    ended: float = 0.0
    ended_wall: float = 0.0
    events: list[tuple[float, str]] = field(default_factory=list)

    def event(self, what: str) -> None:
        self.events.append((round(time.monotonic() - self.started, 3), what))

    def end(self) -> Phase:
        self.ended, self.ended_wall = time.monotonic(), time.time()
        return self

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def begin(name: str) -> Phase:
    return Phase(name, time.monotonic(), time.time())


# ------------------------------------------------------------ ingest fleet ---
class IngestFleet:
    """The ingest instances behind the proxy, by slot; ``live`` are the slots of
    the version in service. Every instance gets ``env`` (fly's drain settings)."""

    def __init__(self, stack: Stack, proxy: Proxy, env: Mapping[str, str]) -> None:
        self.stack = stack
        self.proxy = proxy
        self.env = dict(env)
        self.by_slot: dict[str, Service] = {}
        self.live: list[str] = []
        self.starts = 0
        self.failed_starts: list[str] = []

    @classmethod
    def behind(
        cls, stack: Stack, tmp: Path, env: Mapping[str, str], slots: Sequence[str] = BLUE_SLOTS
    ) -> IngestFleet:
        """The proxy with every slot, ingest running in ``slots`` (the blues),
        UP and serving at full weight. The caller stops ``fleet.proxy``."""
        instances = [stack.spawn_ingest(**env) for _ in slots]
        for instance in instances:
            instance.wait_ready(BOOT_TIMEOUT)
        proxy = Proxy(
            tmp,
            [
                *(
                    Slot(s, int(i.env["INGEST_PORT"]))
                    for s, i in zip(slots, instances, strict=True)
                ),
                *(Slot(s) for s in (*BLUE_SLOTS, *GREEN_SLOTS) if s not in slots),
            ],
            check=fly_ready_check(),
        ).start()
        fleet = cls(stack, proxy, env)
        fleet.by_slot = dict(zip(slots, instances, strict=True))
        fleet.live = list(slots)
        for slot in slots:
            proxy.wait_up(slot, timeout=10)
        return fleet

    def idle_slots(self) -> list[str]:
        return [s for s in (*BLUE_SLOTS, *GREEN_SLOTS) if s not in self.live]

    def start(self, slots: Sequence[str], *, ready: bool = True, **env: str) -> list[Service]:
        """New instances in ``slots``, booted together: each started, pointed at,
        health-checked by the proxy, at weight 0. ``ready=False`` for ones that
        may never be ready (they only have to answer /ready at all)."""
        spawned = [self.stack.spawn_ingest(ready=ready, **{**self.env, **env}) for _ in slots]
        self.starts += len(spawned)
        for slot, svc in zip(slots, spawned, strict=True):
            try:
                svc.wait_ready(BOOT_TIMEOUT)
            except AssertionError:
                self.failed_starts.append(slot)
                raise
            self.by_slot[slot] = svc
            self.proxy.point(slot, int(svc.env["INGEST_PORT"]))
        return spawned

    def retire(self, slots: Iterable[str], budget: float) -> list[tuple[int, float]]:
        """Drain ``slots`` in the proxy (no new requests), wait for their requests
        in flight, take them out, then SIGTERM their instances together; each
        one's exit code and seconds to exit."""
        slots = list(slots)
        for slot in slots:
            self.proxy.set_weight(slot, 0)
        for slot in slots:
            self.proxy.wait_idle(slot, timeout=budget)
            self.proxy.park(slot)
        services = [self.by_slot.pop(s) for s in slots]
        return stop_all_timed(services, budget)


def canary_weight(live_weights: Sequence[int], percent: float) -> int:
    """The weight that gives one more server ``percent`` of the requests."""
    total = sum(live_weights)
    return max(1, round(total * percent / (100 - percent)))


# --------------------------------------------------------------- blue-green ---
@dataclass
class Cutover:
    """What a blue-green deploy did."""

    promoted: bool
    reason: str
    blue: list[str]
    green: list[str]
    blue_exits: list[tuple[int, float]] = field(default_factory=list)


def blue_green(
    fleet: IngestFleet,
    phase: Phase,
    *,
    check_timeout: float = 15,
    started: Mapping[str, Service] | None = None,
    **env: str,
) -> Cutover:
    """Fly's ``bluegreen``: a green per blue (``started`` ones are reused, e.g. a
    promoted canary), all passing their check before any traffic moves; then
    traffic to the greens at once, and the blues drained and stopped."""
    blue = list(fleet.live)
    budget = float(fleet.env.get("SHUTDOWN_TIMEOUT", "20")) + 5
    greens = dict(started or {})
    boot = [s for s in fleet.idle_slots() if s not in greens][: len(blue) - len(greens)]
    greens |= dict(zip(boot, fleet.start(boot, **env), strict=True))
    phase.event(f"greens {boot} started")
    try:
        for slot in greens:
            fleet.proxy.wait_up(slot, timeout=check_timeout)
    except AssertionError as exc:
        phase.event(f"green failed its health check: {exc}")
        fleet.retire(greens, budget)
        return Cutover(False, "a green instance never passed its health check", blue, [])
    green = sorted(greens)
    phase.event(f"greens {green} UP")
    for slot in green:
        fleet.proxy.set_weight(slot, FULL_WEIGHT)
    for slot in blue:
        fleet.proxy.set_weight(slot, 0)
    fleet.live = green
    phase.event("traffic moved to the greens")
    exits = fleet.retire(blue, budget)
    phase.event(f"blues {blue} stopped: {exits}")
    return Cutover(True, "greens healthy", blue, green, exits)


# ------------------------------------------------------------------- canary ---
@dataclass(frozen=True)
class CanaryPolicy:
    """10 % of the requests to the canary; promoted once it has answered
    ``min_requests`` over at least ``min_seconds`` with an error rate below
    ``max_error_rate``; rolled back as soon as the rate reaches it over at least
    ``min_sample`` requests, when its check fails, or when it is not UP within
    ``check_timeout``. Errors: 5xx answers, requests without an answer, and 4xx
    answers beyond the old version's 4xx rate over the same time (a canary
    answering 401 to everyone must not pass, and Evolution never retries a 401;
    a sender's own bad requests are refused by both versions alike)."""

    percent: float = 10.0
    max_error_rate: float = 0.02
    min_requests: int = 20
    min_sample: int = 5
    min_seconds: float = 2.0
    check_timeout: float = 10.0
    observe_timeout: float = 30.0


@dataclass
class CanaryVerdict:
    promoted: bool
    reason: str
    weight: int
    share: float  # of the requests while it took traffic
    requests: int
    errors: int
    observed_s: float
    exit_code: int | None = None
    # The canary's part of the requests the proxy routed while it took traffic.
    observed_share: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def canary(
    fleet: IngestFleet,
    phase: Phase,
    policy: CanaryPolicy,
    *,
    ready: bool = True,
    **env: str,
) -> tuple[CanaryVerdict, Service | None, str]:
    """Start the new version in an idle slot, give it ``policy.percent`` of the
    traffic, and judge it. Rolled back: it is drained, taken out and stopped.
    Promoted: it keeps its share (the caller finishes with :func:`blue_green`).
    Returns the verdict, the canary (None once stopped) and its slot."""
    proxy = fleet.proxy
    slot = fleet.idle_slots()[0]
    (svc,) = fleet.start([slot], ready=ready, **env)
    phase.event(f"canary started in {slot}")
    before = proxy.stat(slot)
    live_weight = sum(proxy.stat(s).weight for s in fleet.live)
    weight = canary_weight([proxy.stat(s).weight for s in fleet.live], policy.percent)
    verdict = CanaryVerdict(
        False, "", weight, weight / (weight + live_weight), requests=0, errors=0, observed_s=0.0
    )
    budget = float(fleet.env.get("SHUTDOWN_TIMEOUT", "20")) + 5

    def rollback(reason: str) -> tuple[CanaryVerdict, None, str]:
        verdict.reason = reason
        phase.event(f"rollback: {reason}")
        ((verdict.exit_code, _),) = fleet.retire([slot], budget)
        phase.event(f"canary stopped (exit {verdict.exit_code})")
        return verdict, None, slot

    try:
        proxy.wait_up(slot, timeout=policy.check_timeout)
    except AssertionError:
        return rollback(f"never passed its health check within {policy.check_timeout:.0f}s")
    live_before = [proxy.stat(s) for s in fleet.live]
    proxy.set_weight(slot, weight)
    opened = time.monotonic()
    phase.event(f"canary at weight {weight} ({policy.percent:.0f}%)")

    def judged() -> str | None:
        now = proxy.stat(slot)
        live_now = [proxy.stat(s) for s in fleet.live]
        live = sum(s.requests for s in live_now) - sum(s.requests for s in live_before)
        live_4xx = sum(s.responses["4xx"] for s in live_now) - sum(
            s.responses["4xx"] for s in live_before
        )
        verdict.requests = requests = now.requests - before.requests
        canary_4xx = now.responses["4xx"] - before.responses["4xx"]
        expected_4xx = live_4xx / live * requests if live else 0.0
        excess_4xx = max(0, canary_4xx - math.ceil(expected_4xx))
        verdict.errors = errors = now.errors - before.errors + excess_4xx
        verdict.observed_s = time.monotonic() - opened
        verdict.observed_share = requests / (requests + live) if requests + live else None
        if not now.up:
            return "failed its health check under traffic"
        if requests >= policy.min_sample and errors / requests >= policy.max_error_rate:
            return (
                f"error rate {errors}/{requests} = {errors / requests:.0%}"
                f" >= {policy.max_error_rate:.0%}"
            )
        if requests >= policy.min_requests and verdict.observed_s >= policy.min_seconds:
            return "promote"
        return None

    decision: str | None
    try:
        decision = wait_for(
            judged,
            timeout=policy.observe_timeout,
            what=f"the canary to answer {policy.min_requests} requests",
            interval=0.05,
        )
    except AssertionError:
        decision = f"fewer than {policy.min_requests} requests in {policy.observe_timeout:.0f}s"
    if decision != "promote":
        return rollback(decision or "no decision")
    verdict.promoted = True
    verdict.reason = (
        f"error rate {verdict.errors}/{verdict.requests} < {policy.max_error_rate:.0%}"
        f" over {verdict.observed_s:.1f}s"
    )
    phase.event(f"canary promoted: {verdict.reason}")
    return verdict, svc, slot


class RefusingRedis:
    """A redis-server that answers PING but refuses every write (it demands a
    replica it does not have): an ingest pointed at it passes ``/ready`` but
    answers 503 to every webhook."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = Process(
            "refusing-redis",
            [
                redis_binary(),
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(tmp)),
                *("--save", "", "--appendonly", "no", "--protected-mode", "no"),
                *("--min-replicas-to-write", "1"),
            ],
            env=clean_env(),
            log_path=tmp / "refusing-redis.log",
            ready=self.pings,
            ready_timeout=20,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pings(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")

    def __enter__(self) -> RefusingRedis:
        self.process.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.stop()


# ------------------------------------------------------------------ rolling ---
@dataclass
class Roll:
    """What a rolling deploy of the workers did."""

    replaced: list[str]
    exits: list[tuple[int, float]]
    workers: list[Service]
    starts: int
    failed_starts: int


def start_workers(stack: Stack, names: Sequence[str], **env: str) -> list[Service]:
    """Workers ``names``, booted together, each healthy (/health 200) within
    :data:`BOOT_TIMEOUT`; one that is not is killed and the call fails."""
    workers = [stack.start_worker(name, wait=False, **env) for name in names]
    for worker in workers:
        worker.ready = worker.health_url
        worker.wait_ready(BOOT_TIMEOUT)
    return workers


def rolling_workers(
    stack: Stack, workers: Sequence[Service], phase: Phase, *, budget: float, **env: str
) -> Roll:
    """Fly's ``rolling`` for the workers: one at a time, SIGTERM (drain, release
    the partitions), then the new version under the same consumer name, healthy
    before the next."""
    new: list[Service] = []
    exits: list[tuple[int, float]] = []
    failed = 0
    for old in workers:
        name = old.env["WORKER_CONSUMER_NAME"]
        code, took = stop_timed(old, budget)
        exits.append((code, took))
        phase.event(f"worker {name} stopped (exit {code} in {took:.2f}s)")
        try:
            new += start_workers(stack, [name], **env)
        except AssertionError:
            failed += 1
            raise
        phase.event(f"worker {name} replaced, healthy")
    return Roll([w.env["WORKER_CONSUMER_NAME"] for w in workers], exits, new, len(new), failed)


def rolling_ingest(fleet: IngestFleet, phase: Phase, **env: str) -> Roll:
    """Fly's ``rolling`` applied to ingest, for comparison: each instance gets
    SIGTERM while the proxy still routes to it (until its check fails), and its
    replacement takes the same slot once it passes the check."""
    budget = float(fleet.env.get("SHUTDOWN_TIMEOUT", "20")) + 5
    exits: list[tuple[int, float]] = []
    new: list[Service] = []
    for slot in list(fleet.live):
        code, took = stop_timed(fleet.by_slot.pop(slot), budget)
        exits.append((code, took))
        phase.event(f"{slot} stopped while routed (exit {code} in {took:.2f}s)")
        (svc,) = fleet.start([slot], **env)
        fleet.proxy.wait_up(slot, timeout=15)
        fleet.proxy.set_weight(slot, FULL_WEIGHT)
        new.append(svc)
        phase.event(f"{slot} replaced, UP")
    return Roll(list(fleet.live), exits, new, len(new), 0)


# --------------------------------------------------------------- migrations ---
# A rehearsal of both steps on the live table; the running code ignores both.
EXPAND_SQL = """
-- expand: additive only, what the running version does not know about.
ALTER TABLE healthcare.whatsapp_messages ADD COLUMN deploy_rehearsal text;
CREATE TABLE healthcare.deploy_rehearsal (id bigserial PRIMARY KEY, note text);
"""
CONTRACT_SQL = """
-- contract: only once no running version uses what goes.
ALTER TABLE healthcare.whatsapp_messages DROP COLUMN deploy_rehearsal;
DROP TABLE healthcare.deploy_rehearsal;
"""


def migrations_with(directory: Path, extra: Mapping[str, str]) -> Path:
    """``directory``: the repository's migrations plus ``extra`` (file name -> SQL)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in sorted(MIGRATIONS.glob("*.sql")):
        shutil.copyfile(path, directory / path.name)
    for name, sql in extra.items():
        (directory / name).write_text(sql)
    return directory


def migrate_step(stack: Stack, directory: Path, phase: Phase) -> float:
    """``migrate`` with ``directory`` against the stack's database (what the
    worker's release_command runs); its duration. Fails the caller if it fails."""
    started = time.monotonic()
    result = run_migrate(stack.dsn, MIGRATIONS_DIR=str(directory))
    took = time.monotonic() - started
    assert result.returncode == 0, f"migrate failed:\n{result.stderr}{result.stdout}"
    phase.event(f"migrate ({directory.name}) took {took:.2f}s")
    return took


# --------------------------------------------------------- fly deploy, whole ---
@dataclass
class FlyDeploy:
    """What :func:`fly_deploy` did: its phases in order, and each step's result."""

    strategies: dict[str, str]
    phases: list[Phase]
    roll: Roll
    ingest: Cutover | Roll


def fly_deploy(
    stack: Stack, fleet: IngestFleet, workers: Sequence[Service], tmp: Path
) -> FlyDeploy:
    """``fly deploy`` of both apps in fly/README.md's order, with each app's
    strategy from its config: the worker app (its release_command runs the
    expand migration before any new code, then its strategy), then ingest (its
    strategy); the contract migration once no old version runs."""
    strategies = {app: fly_strategy(app) for app in ("worker", "ingest")}
    assert strategies["worker"] == "rolling", f"no model of {strategies['worker']} for the worker"
    expand = migrations_with(tmp / "expand", {"990_deploy_expand.sql": EXPAND_SQL})
    contract = migrations_with(
        tmp / "contract",
        {"990_deploy_expand.sql": EXPAND_SQL, "991_deploy_contract.sql": CONTRACT_SQL},
    )
    worker_budget = float(fly_shutdown_env("worker").get("SHUTDOWN_TIMEOUT", "20")) + 5
    phases = []

    migration = begin("expand migration")
    migrate_step(stack, expand, migration)
    phases.append(migration.end())

    phase = begin("rolling deploy of the workers")
    roll = rolling_workers(stack, workers, phase, budget=worker_budget)
    phases.append(phase.end())

    ingest: Cutover | Roll
    phase = begin(f"{strategies['ingest']} deploy of ingest")
    if strategies["ingest"] == "bluegreen":
        ingest = blue_green(fleet, phase)
    elif strategies["ingest"] == "rolling":
        ingest = rolling_ingest(fleet, phase)
    else:
        raise AssertionError(f"no model of fly/ingest.toml's strategy {strategies['ingest']!r}")
    phases.append(phase.end())

    migration = begin("contract migration")
    migrate_step(stack, contract, migration)
    phases.append(migration.end())
    return FlyDeploy(strategies, phases, roll, ingest)


# ------------------------------------------------------------------ figures ---
@dataclass
class Figures:
    """What the client (Evolution) saw during one window."""

    seconds: float
    attempts: int
    accepted: int
    non_2xx: int  # answers other than 2xx, and requests with no answer at all
    non_2xx_by_outcome: dict[str, int]
    retries: int  # attempts that were a retry of an earlier one
    longest_gap_s: float  # between two acceptances (or the window's edges)
    p50_latency_ms: float | None  # of the accepted requests
    p99_latency_ms: float | None
    p99_delivery_ms: float | None  # first attempt to acceptance, retries included

    def line(self) -> str:
        return (
            f"{self.seconds:.1f}s attempts={self.attempts} accepted={self.accepted} "
            f"non_2xx={self.non_2xx} {self.non_2xx_by_outcome} retries={self.retries} "
            f"longest_gap={self.longest_gap_s * 1000:.0f}ms p99={self.p99_latency_ms}ms "
            f"p99_delivery={self.p99_delivery_ms}ms"
        )


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def client_figures(load: EvolutionLoad, start: float, end: float) -> Figures:
    """The load's attempts that started within [start, end] (monotonic)."""
    outcomes: Counter[str] = Counter()
    attempts = retries = 0
    accepted_at: list[float] = []
    latencies: list[float] = []
    deliveries: list[float] = []
    for d in load.snapshot():
        for i, (at, outcome) in enumerate(zip(d.attempt_at, d.outcomes, strict=False)):
            if not start <= at <= end:
                continue
            attempts += 1
            retries += i > 0
            if not (outcome.isdigit() and 200 <= int(outcome) < 300):
                outcomes[outcome] += 1
        if d.accepted_at is not None and start <= d.accepted_at <= end:
            accepted_at.append(d.accepted_at)
            if d.latency_s is not None:
                latencies.append(d.latency_s)
            deliveries.append(d.accepted_at - d.attempt_at[0])
    edges = sorted([start, *accepted_at, end])
    gap = max(b - a for a, b in itertools.pairwise(edges))
    return Figures(
        seconds=round(end - start, 3),
        attempts=attempts,
        accepted=len(accepted_at),
        non_2xx=sum(outcomes.values()),
        non_2xx_by_outcome=dict(outcomes),
        retries=retries,
        longest_gap_s=round(gap, 4),
        p50_latency_ms=_ms(percentile(latencies, 50)) if latencies else None,
        p99_latency_ms=_ms(percentile(latencies, 99)) if latencies else None,
        p99_delivery_ms=_ms(percentile(deliveries, 99)) if deliveries else None,
    )


@dataclass
class Processing:
    """What the worker side did during one window: rows committed in it."""

    rows: int
    longest_commit_gap_s: float | None  # between two row commits
    max_delay_s: float | None  # accepted (XADD) -> committed, worst row

    def line(self) -> str:
        return (
            f"rows={self.rows} longest_commit_gap={self.longest_commit_gap_s}s "
            f"max_delay={self.max_delay_s}s"
        )


def processing_figures(stack: Stack, start_wall: float, end_wall: float) -> Processing:
    """Rows whose ``processed_at`` falls within [start_wall, end_wall] (unix time)."""
    rows = stack.sql(
        "SELECT extract(epoch FROM processed_at)::float8, "
        "extract(epoch FROM processed_at - received_at)::float8 "
        "FROM healthcare.whatsapp_messages "
        "WHERE processed_at BETWEEN to_timestamp(%s) AND to_timestamp(%s) ORDER BY processed_at",
        (start_wall, end_wall),
    )
    commits = [float(r[0]) for r in rows]
    edges = [start_wall, *commits, end_wall]
    return Processing(
        rows=len(rows),
        longest_commit_gap_s=round(max(b - a for a, b in itertools.pairwise(edges)), 3),
        max_delay_s=round(max(float(r[1]) for r in rows), 3) if rows else None,
    )


def phase_figures(
    load: EvolutionLoad, stack: Stack, phases: Iterable[Phase]
) -> dict[str, dict[str, Any]]:
    """Each phase's client and processing figures, and its events, by name."""
    return {
        p.name: {
            "client": client_figures(load, p.started, p.ended),
            "processing": processing_figures(stack, p.started_wall, p.ended_wall),
            "events": p.events,
        }
        for p in phases
    }


def span(phases: Sequence[Phase], name: str = "whole deploy") -> Phase:
    """One phase covering ``phases``, first start to last end."""
    whole = Phase(name, phases[0].started, phases[0].started_wall)
    whole.ended, whole.ended_wall = phases[-1].ended, phases[-1].ended_wall
    return whole


def as_json(value: Any) -> Any:
    """Dataclasses (and lists/dicts of them) as plain JSON values."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: as_json(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
