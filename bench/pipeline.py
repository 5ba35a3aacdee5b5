"""The benchmark of issue 11: wabot against its peers, in one run.

    make bench            # full run (about 20 minutes on 2 cores)
    make bench-quick      # a short run, a few minutes, to iterate on performance
    make bench-profile    # py-spy profiles of ingest and worker under load
    uv run --group bench python -m bench.pipeline --help

Everything runs on this machine against real processes on 127.0.0.1: Redis,
PostgreSQL (durable: fsync and synchronous commit on, as in production), the
OpenTelemetry Collector with the committed config exporting to Jaeger and
VictoriaLogs, ingest and worker with their defaults, and the peers of
:mod:`bench.peers`. Variants alternate round by round; medians and ranges are
reported, with the ratios measured in the same run (absolute figures mean
little across machines). The result goes to ``bench/results/bench-<time>.json``
with a Markdown table beside it (``.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

from tests.support.stack.net import free_port
from tests.support.stack.paths import REPO, otelcol_binary, pg_tool
from tests.support.stack.pipeline import Stack
from tests.support.stack.servers import (
    PostgresServer,
    create_database,
    running_redis,
    temp_dir,
)

from bench import phases
from bench.measure import commit_latency_ms, machine
from bench.report import markdown, print_report
from bench.telemetry import TelemetryBackend

# The services run with their defaults, but for these: INFO logs (one record
# per message, exported), and metrics exported every 5 s instead of 60 s so
# that every measured round includes metric exports.
SERVICE_SETTINGS = {"LOG_LEVEL": "INFO", "OTEL_METRIC_EXPORT_INTERVAL": "5000"}
PHASES = ("ingest", "drain", "latency", "memory")
ALL_PHASES = (*PHASES, "profile")
RESULTS = REPO / "bench" / "results"


def code_version() -> dict[str, Any]:
    """The commit measured, and whether services/, shared/ or migrations/ had
    uncommitted changes (then the figures are of the working tree)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "services", "shared", "migrations")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": bool(changed)}


def default_arq_python() -> str | None:
    cache = Path(os.environ.get("WABOT_CACHE_DIR", Path.home() / ".cache" / "wabot"))
    python = cache / "bench" / "arq-venv" / "bin" / "python"
    return str(python) if python.exists() else None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run (bench-quick)")
    parser.add_argument("--smoke", action="store_true", help="tiny run: checks it works only")
    parser.add_argument(
        "--only", default=",".join(PHASES), help=f"comma-separated phases of {ALL_PHASES}"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profiles too (the phase 'profile')"
    )
    parser.add_argument("--rounds", type=int, help="rounds of the ingest and drain phases")
    parser.add_argument("--seconds", type=float, help="seconds of each ingest round")
    parser.add_argument("--drain-messages", type=int, help="backlog of each drain round")
    parser.add_argument("--memory-messages", type=int, help="messages before RSS is read")
    parser.add_argument("--latency-seconds", type=float, help="seconds at each offered rate")
    parser.add_argument(
        "--no-durable-pg", action="store_true", help="PostgreSQL with fsync off (as the tests)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    return parser.parse_args()


def config_from(args: argparse.Namespace) -> phases.Config:
    cfg = phases.SMOKE if args.smoke else phases.QUICK if args.quick else phases.FULL
    changes: dict[str, Any] = {}
    if args.rounds:
        changes.update(ingest_rounds=args.rounds, drain_rounds=args.rounds)
    if args.seconds:
        changes["ingest_seconds"] = args.seconds
    if args.drain_messages:
        changes["drain_messages"] = args.drain_messages
    if args.memory_messages:
        changes["memory_messages"] = args.memory_messages
    if args.latency_seconds:
        changes["latency_seconds"] = args.latency_seconds
    return dataclasses.replace(cfg, **changes) if changes else cfg


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: run scripts/bench-bootstrap.sh (make bench does)")
    cfg = config_from(args)
    wanted = [p for p in args.only.split(",") if p]
    if args.profile and "profile" not in wanted:
        wanted.append("profile")
    unknown = set(wanted) - set(ALL_PHASES)
    if unknown:
        raise SystemExit(f"unknown phases {sorted(unknown)}; known: {ALL_PHASES}")
    arq_python = default_arq_python()
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(
            {
                "postgres": [pg_tool("postgres"), "--version"],
                "otelcol": [otelcol_binary(), "--version"],
            }
        ),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": code_version(),
        "config": dataclasses.asdict(cfg),
        "phases": wanted,
        "postgres_durable": not args.no_durable_pg,
    }
    if arq_python is None:
        print("arq's environment is missing (scripts/bench-bootstrap.sh builds it): arq skipped")
    print(f"benchmark ({cfg.name}): phases {', '.join(wanted)}", flush=True)
    with (
        running_redis("wabot-bench-redis-") as redis_server,
        temp_dir("wabot-bench-") as tmp,
        temp_dir("wabot-bench-pg-") as pg_dir,
    ):
        pg = PostgresServer(free_port(), pg_dir, durable=not args.no_durable_pg)
        pg.init().start()
        backend = TelemetryBackend(tmp / "obs")
        try:
            with backend.running():
                stack = Stack(
                    tmp,
                    redis_server,
                    create_database(pg, migrated=True),
                    None,
                    secret="bench-" + secrets.token_hex(16),
                    app_env="bench",
                    settings=SERVICE_SETTINGS,
                    otlp_endpoint=backend.otlp_endpoint,
                )
                results["machine"]["postgres_commit_ms"] = commit_latency_ms(stack.dsn)
                bench = phases.Bench(cfg, stack, backend, tmp, arq_python)
                try:
                    run_phases(bench, wanted, results)
                finally:
                    stack.stop_all()
                    results["telemetry"] = backend.summary()
        finally:
            pg.stop()
    results["seconds"] = time.monotonic() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out / f"bench-{stamp}-{cfg.name}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(results))
    print_report(results)
    print(f"\nwrote {out} and {out.with_suffix('.md').name}")


def run_phases(bench: phases.Bench, wanted: list[str], results: dict[str, Any]) -> None:
    from bench.profile import profile_phase

    steps = {
        "ingest": ("(a) ingest throughput, rounds rotated", bench.ingest_phase),
        "drain": ("(b) worker drain vs Celery and arq, rounds rotated", bench.drain_phase),
        "latency": ("(c) end-to-end latency at fixed offered rates", bench.latency_phase),
        "memory": ("(d) RSS after N messages through ingest and worker", bench.memory_phase),
        "profile": ("profiles of ingest and worker (py-spy)", lambda: profile_phase(bench)),
    }
    for name in wanted:
        title, step = steps[name]
        print(title, flush=True)
        try:
            results[name] = step()
        except Exception:  # one broken phase must not lose the others' figures
            results.setdefault("errors", {})[name] = traceback.format_exc()
            print(f"  {name} failed:\n{traceback.format_exc()}", flush=True)


if __name__ == "__main__":
    main()
