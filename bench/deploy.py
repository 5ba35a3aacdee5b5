"""Deploys under load, measured: ``make bench-deploy``.

    make bench-deploy                        # every scenario (a few minutes on 2 cores)
    uv run python -m bench.deploy --only fly --rounds 1
    uv run python -m bench.deploy --help

Everything runs natively on 127.0.0.1 against real processes: Redis (AOF),
PostgreSQL (durable: fsync and synchronous commit on), two ingest instances
behind HAProxy (routing on ``/ready``, standing in for Fly's proxy), two
workers, and an Evolution-like client (tests/support/load.py) that retries
what it is refused. The services run with their defaults and fly/'s drain
settings, exporting their telemetry over OTLP to an in-process receiver.

Scenarios (the models are tests/support/deploys.py, also run by
tests/deploy/test_rollouts.py):

* ``fly``: ``fly deploy`` of both apps as fly/ configures them: the expand
  migration, a rolling deploy of the workers, a blue-green deploy of ingest,
  the contract migration; ``--rounds`` times.
* ``rolling-ingest``: for comparison, ingest replaced one instance at a time
  by SIGTERM while the proxy still routes to it (what ``strategy = "rolling"``
  would do).
* ``canary``: a new ingest at 10 % by proxy weights, three times: one whose
  Redis refuses writes (503 on every webhook), one that never passes its check
  (Redis unreachable), and a healthy one, promoted by a blue-green.
* ``startup``: ingest and worker started with every dependency up, with Redis
  down, with PostgreSQL down, and against an unmigrated database; a start
  fails if the process exits, or (dependencies up) is not ready within 30 s.

Figures per deploy: client-visible non-2xx answers, the client's retries, the
longest gap between two acceptances, p50/p99 latency of the accepted
requests, and, from the end-state oracle, messages lost (accepted, no row)
and duplicated (more than one row). JSON goes to
``bench/results/deploy-<time>.json``; a summary is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    fly_deploy,
    fly_shutdown_env,
    fly_strategy,
    phase_figures,
    rolling_ingest,
    span,
    start_workers,
)
from tests.support.load import EvolutionLoad
from tests.support.oracle import Oracle, Tally
from tests.support.otlp import OtlpSink
from tests.support.stack.net import closed_port, free_port, http_get, wait_for
from tests.support.stack.paths import REPO, load_samples
from tests.support.stack.pipeline import Stack
from tests.support.stack.proxy import haproxy_binary
from tests.support.stack.servers import (
    PostgresServer,
    RedisServer,
    create_database,
    running_redis,
    temp_dir,
)
from tests.support.stack.services import Service

from bench.measure import machine

RESULTS = REPO / "bench" / "results"
SCENARIOS = ("fly", "rolling-ingest", "canary", "startup")
STARTUP_CONDITIONS = ("dependencies up", "Redis down", "PostgreSQL down", "not migrated")


@dataclass
class Infra:
    """What every scenario shares: the servers, the OTLP receiver, a directory."""

    redis: RedisServer
    pg: PostgresServer
    sink: OtlpSink
    tmp: Path
    rate: float
    template: dict[str, Any]


def new_stack(infra: Infra, name: str, *, migrated: bool = True) -> Stack:
    """ingest and worker settings as deployed (defaults, fly's drain), own
    stream and database."""
    slug = name.replace(" ", "-")
    return Stack(
        infra.tmp / slug,
        infra.redis,
        create_database(infra.pg, migrated=migrated),
        infra.sink,
        app_env="bench",
        settings={
            "LOG_LEVEL": "INFO",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_RESOURCE_ATTRIBUTES": f"bench.scenario={slug}",
        },
    )


@contextlib.contextmanager
def deployment(
    infra: Infra, name: str
) -> Iterator[tuple[Stack, IngestFleet, list[Service], EvolutionLoad]]:
    """Two ingest (the blues) behind HAProxy, two workers, and the load
    (started, warmed up); everything stopped afterwards."""
    stack = new_stack(infra, name)
    fleet: IngestFleet | None = None
    load: EvolutionLoad | None = None
    try:
        fleet = IngestFleet.behind(stack, stack.tmp / "proxy", fly_shutdown_env("ingest"))
        workers = start_workers(stack, ["w-1", "w-2"], **fly_shutdown_env("worker"))
        rate = infra.rate
        load = EvolutionLoad(
            fleet.proxy.url(),
            infra.template,
            secret=stack.secret,
            rate=rate,
            count=int(rate * 180),
            request_timeout=CLIENT_TIMEOUT,
        ).start()
        wait_for(lambda: load.accepted_count() >= rate, timeout=20, what="the load to warm up")
        yield stack, fleet, workers, load
    finally:
        if load is not None:
            load.abort()
        if fleet is not None:
            fleet.proxy.stop()
        stack.stop_all()


def settle(stack: Stack, load: EvolutionLoad, record: dict[str, Any]) -> Tally:
    """More acceptances after the last step, no new message, then the oracle
    (its verdict recorded rather than raised, so the figures are kept)."""
    target = load.accepted_count() + int(load.rate)
    wait_for(lambda: load.accepted_count() >= target, timeout=20, what="acceptances after it")
    load.stop_sending()
    load.finish(timeout=60)
    oracle = Oracle(stack, lambda k, v: record.setdefault("oracle_line", v))
    try:
        tally = oracle.check(load, timeout=60)
        record["oracle"] = "holds"
    except AssertionError as exc:
        record["oracle"] = f"FAILED: {exc}"
        tally = oracle.tally(load)
    record["lost"] = len(tally.missing)
    record["duplicates"] = len(tally.duplicated)
    record["accepted"] = tally.accepted
    record["never_accepted"] = sum(1 for d in load.snapshot() if not d.accepted)
    record["client_retries_total"] = load.retried()
    return tally


# --------------------------------------------------------------- scenarios ---
def scenario_fly(infra: Infra, round_: int) -> dict[str, Any]:
    record: dict[str, Any] = {"strategies": {a: fly_strategy(a) for a in ("worker", "ingest")}}
    with deployment(infra, f"fly-{round_}") as (stack, fleet, workers, load):
        deploy = fly_deploy(stack, fleet, workers, stack.tmp)
        settle(stack, load, record)
        record["phases"] = phase_figures(load, stack, [*deploy.phases, span(deploy.phases)])
        record["worker_exits"] = deploy.roll.exits
        ingest = deploy.ingest
        record["ingest_exits"] = ingest.blue_exits if isinstance(ingest, Cutover) else ingest.exits
        record["starts"] = fleet.starts + deploy.roll.starts
        record["failed_starts"] = len(fleet.failed_starts) + deploy.roll.failed_starts
    return record


def scenario_rolling_ingest(infra: Infra, round_: int) -> dict[str, Any]:
    record: dict[str, Any] = {"strategy": "rolling (comparison; fly/ingest.toml is bluegreen)"}
    with deployment(infra, f"rolling-ingest-{round_}") as (stack, fleet, _, load):
        phase = begin("rolling deploy of ingest")
        roll = rolling_ingest(fleet, phase)
        phase.end()
        settle(stack, load, record)
        record["phases"] = phase_figures(load, stack, [phase])
        record["ingest_exits"] = roll.exits
    return record


def scenario_canary(infra: Infra, round_: int) -> dict[str, Any]:
    record: dict[str, Any] = {"policy": CanaryPolicy()}
    verdicts: dict[str, Any] = {}
    phases = []
    with (
        deployment(infra, f"canary-{round_}") as (stack, fleet, _, load),
        RefusingRedis(infra.tmp / f"refusing-redis-{round_}") as refusing,
    ):
        for name, url, ready in (
            ("answers 503", refusing.url, True),
            ("never ready", f"redis://127.0.0.1:{closed_port()}/0", False),
        ):
            phase = begin(f"canary that {name}")
            verdict, _, _ = canary(fleet, phase, CanaryPolicy(), ready=ready, REDIS_URL=url)
            phases.append(phase.end())
            verdicts[name] = verdict
        phase = begin("healthy canary, then blue-green")
        verdict, promoted, slot = canary(fleet, phase, CanaryPolicy())
        verdicts["healthy"] = verdict
        if promoted is not None:
            record["cutover"] = blue_green(fleet, phase, started={slot: promoted})
        phases.append(phase.end())
        settle(stack, load, record)
        record["verdicts"] = verdicts
        record["phases"] = phase_figures(load, stack, phases)
    return record


def scenario_startup(infra: Infra, round_: int) -> dict[str, Any]:
    """Each service once per condition, all of a condition's starts at once."""
    starts: list[dict[str, Any]] = []
    for condition in STARTUP_CONDITIONS:
        stack = new_stack(
            infra, f"startup-{round_}-{condition}", migrated=condition != "not migrated"
        )
        env: dict[str, str] = {}
        if condition == "Redis down":
            env["REDIS_URL"] = f"redis://127.0.0.1:{closed_port()}/0"
        if condition == "PostgreSQL down":
            env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{closed_port()}/wabot"
        try:
            spawned = time.monotonic()
            ingest = stack.spawn_ingest(ready=False, **env)
            worker = stack.start_worker("w-start", wait=False, **env)
            for svc, url in (
                (ingest, f"http://127.0.0.1:{ingest.env['INGEST_PORT']}/ready"),
                (worker, worker.health_url),
            ):
                starts.append(judge_start(svc, url, condition, spawned))
        finally:
            stack.stop_all()
    failed = [s for s in starts if not s["ok"]]
    return {"starts": starts, "count": len(starts), "failed": len(failed)}


def judge_start(svc: Service, url: str, condition: str, spawned: float) -> dict[str, Any]:
    """Up = answers its health URL (any status) three times and is still
    running; with every dependency up, it must also answer 200."""
    answers: list[tuple[float, int]] = []

    def answered() -> bool:
        if not svc.alive():
            return True
        with contextlib.suppress(OSError):
            answers.append((time.monotonic() - spawned, http_get(url, timeout=5)[0]))
        want_200 = condition == "dependencies up"
        return len(answers) >= 3 and (not want_200 or answers[-1][1] == 200)

    result: dict[str, Any] = {"service": svc.name, "condition": condition}
    try:
        wait_for(answered, timeout=45, what=f"{svc.name} ({condition}) to answer", interval=0.2)
        result["ok"] = svc.alive()
    except AssertionError:
        result["ok"] = False
    result["alive"] = svc.alive()
    result["exit_code"] = svc.returncode
    result["last_status"] = answers[-1][1] if answers else None
    result["seconds_to_first_answer"] = round(answers[0][0], 2) if answers else None
    if svc.alive():
        svc.send_signal(signal.SIGTERM)
        result["stop_exit_code"] = svc.wait(30)
    else:
        result["log_tail"] = svc.log_tail(10)
    return result


RUNNERS: dict[str, Callable[[Infra, int], dict[str, Any]]] = {
    "fly": scenario_fly,
    "rolling-ingest": scenario_rolling_ingest,
    "canary": scenario_canary,
    "startup": scenario_startup,
}


# ---------------------------------------------------------------- summary ---
def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (README, "Expected improvements, measured")."""
    out: dict[str, Any] = {}
    deploys = [
        (name, r)
        for name in ("fly", "rolling-ingest", "canary")
        for r in results.get(name, [])
        if "phases" in r
    ]
    if deploys:
        out["messages_accepted_during_deploys"] = sum(r["accepted"] for _, r in deploys)
        out["messages_lost"] = sum(r["lost"] for _, r in deploys)
        out["duplicates"] = sum(r["duplicates"] for _, r in deploys)
        out["never_accepted"] = sum(r["never_accepted"] for _, r in deploys)
    for name, label in (("fly", "bluegreen deploy of ingest"), ("fly", "whole deploy")):
        rounds = [r["phases"][label]["client"] for r in results.get(name, []) if "phases" in r]
        if rounds:
            out[f"{name}: {label}"] = {
                "rounds": len(rounds),
                "non_2xx": [c["non_2xx"] for c in rounds],
                "retries": [c["retries"] for c in rounds],
                "longest_gap_ms": [round(c["longest_gap_s"] * 1000) for c in rounds],
                "p99_latency_ms": [c["p99_latency_ms"] for c in rounds],
            }
    rolls = [
        r["phases"]["rolling deploy of the workers"]["processing"]
        for r in results.get("fly", [])
        if "phases" in r
    ]
    if rolls:
        out["fly: rolling deploy of the workers (processing)"] = {
            "longest_commit_gap_s": [p["longest_commit_gap_s"] for p in rolls],
            "max_delay_s": [p["max_delay_s"] for p in rolls],
        }
    rolling = [
        r["phases"]["rolling deploy of ingest"]["client"]
        for r in results.get("rolling-ingest", [])
        if "phases" in r
    ]
    if rolling:
        out["rolling-ingest (comparison)"] = {
            "non_2xx": [c["non_2xx"] for c in rolling],
            "by_outcome": [c["non_2xx_by_outcome"] for c in rolling],
            "longest_gap_ms": [round(c["longest_gap_s"] * 1000) for c in rolling],
        }
    canaries = [r for r in results.get("canary", []) if "verdicts" in r]
    if canaries:
        out["canary"] = [
            {k: (v["promoted"], v["reason"]) for k, v in r["verdicts"].items()} for r in canaries
        ]
    startup = results.get("startup", [])
    if startup:
        count = sum(r["count"] for r in startup)
        failed = sum(r["failed"] for r in startup)
        deploy_starts = sum(r.get("starts", 0) for r in results.get("fly", []))
        deploy_failed = sum(r.get("failed_starts", 0) for r in results.get("fly", []))
        out["startup"] = {
            "failed": failed + deploy_failed,
            "starts": count + deploy_starts,
            "rate": (failed + deploy_failed) / (count + deploy_starts),
        }
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"some of {SCENARIOS}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the fly scenario")
    parser.add_argument(
        "--startup-rounds", type=int, default=3, help="rounds of the startup scenario"
    )
    parser.add_argument("--rate", type=float, default=40.0, help="webhooks per second")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    wanted = [s for s in args.only.split(",") if s]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {SCENARIOS}")
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine({"haproxy": [haproxy_binary(), "-v"]}),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rate": args.rate,
        "scenarios": wanted,
    }
    template = load_samples()["messages-upsert-text"]
    with (
        running_redis("wabot-bench-deploy-redis-") as redis_server,
        temp_dir("wabot-bench-deploy-") as tmp,
        temp_dir("wabot-bench-deploy-pg-") as pg_dir,
        OtlpSink() as sink,
    ):
        pg = PostgresServer(free_port(), pg_dir, durable=True)
        pg.init().start()
        infra = Infra(redis_server, pg, sink, tmp, args.rate, template)
        try:
            for name in wanted:
                rounds = {"fly": args.rounds, "startup": args.startup_rounds}.get(name, 1)
                for round_ in range(rounds):
                    print(f"deploy bench: {name} {round_ + 1}/{rounds}", flush=True)
                    try:
                        result = RUNNERS[name](infra, round_)
                    except Exception:
                        result = {"error": traceback.format_exc()}
                        print(result["error"], flush=True)
                    results.setdefault(name, []).append(as_json(result))
        finally:
            pg.stop()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["summary"] = summary(results)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"deploy-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results["summary"], indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
