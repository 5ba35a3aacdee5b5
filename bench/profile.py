"""Where the time goes: py-spy profiles of ingest (under wrk, as in phase a)
and of the worker (draining a preloaded backlog, as in phase b).

    make bench-profile            # writes bench/results/profile-<time>/
    uv run --group bench python -m bench.pipeline --quick --only ingest --profile

py-spy samples the running process from outside (``py-spy record --pid``,
100 Hz, ``--gil``: only the thread holding the GIL, i.e. Python's CPU time;
``--threads``: per thread). The raw collapsed stacks (``*.txt``; open them in
speedscope or flamegraph.pl) and a summary (``*.md``: per thread, per area,
top functions by self and by inclusive time) are written for each service.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.stack.paths import BIN, REPO

from bench import wrk
from bench.measure import CpuWindow, Sampler, acknowledged, delete_stream
from bench.phases import Bench, ingest_port

RATE_HZ = 100
# Frames every sample of a thread goes through: left out of the inclusive tables.
GENERIC = re.compile(
    r"^(<module>|main|run|asyncio_run|Runner\.run|Server\.(run|serve)|BaseEventLoop\.\w+"
    r"|Thread\.\w+|Handle\._run|_run_once|Context\.run)$"
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")
# Which part of the stack a file belongs to (first match wins).
AREAS: tuple[tuple[str, str], ...] = (
    ("opentelemetry/exporter", "OTLP exporters (encoding, HTTP)"),
    ("opentelemetry/proto", "OTLP exporters (encoding, HTTP)"),
    ("google/protobuf", "OTLP exporters (encoding, HTTP)"),
    ("requests/", "OTLP exporters (encoding, HTTP)"),
    ("urllib3/", "OTLP exporters (encoding, HTTP)"),
    ("http/client", "OTLP exporters (encoding, HTTP)"),
    ("opentelemetry/sdk/trace", "OTel SDK: spans"),
    ("opentelemetry/sdk/metrics", "OTel SDK: metrics"),
    ("opentelemetry/sdk/_logs", "OTel SDK: logs"),
    ("opentelemetry/instrumentation/logging", "OTel SDK: logs"),
    ("opentelemetry/instrumentation", "OTel instrumentations"),
    ("opentelemetry/", "OTel API, context, propagation"),
    ("uvicorn/", "uvicorn, httptools"),
    ("httptools", "uvicorn, httptools"),
    ("starlette/", "FastAPI, Starlette"),
    ("fastapi/", "FastAPI, Starlette"),
    ("redis/", "redis-py"),
    ("psycopg_pool/", "psycopg"),
    ("psycopg/", "psycopg"),
    ("cryptography/", "cryptography (AES-GCM)"),
    ("pydantic", "pydantic"),
    ("wabot_shared/logs", "wabot logging"),
    ("wabot_shared/privacy", "wabot privacy scrubber"),
    ("wabot_", "wabot code"),
    ("logging/", "stdlib logging"),
    ("json/", "json"),
    ("asyncio/", "asyncio"),
    ("uvloop", "asyncio"),
    ("threading.py", "threads, queues"),
    ("queue.py", "threads, queues"),
)


@dataclass
class Sample:
    thread: str
    frames: list[tuple[str, str]]  # (function, file), root first
    count: int


def short(file: str) -> str:
    for marker in ("site-packages/", "/src/", "lib/python3."):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "lib/python3." and "/" in tail else tail
    return file.rsplit("/", 1)[-1]


def area(file: str) -> str:
    for needle, name in AREAS:
        if needle in file:
            return name
    return "other"


def parse(raw: Path) -> list[Sample]:
    """py-spy's raw output (``--threads --full-filenames``): one stack per line."""
    out = []
    for line in raw.read_text().splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        # "thread (1234): MainThread;func (file:line);..."
        head, *parts = body.split(";")
        thread = head.split(": ", 1)[1] if head.startswith("thread (") and ": " in head else head
        frames = []
        for part in parts:
            m = _FRAME.match(part)
            frames.append((m["func"], m["file"]) if m else (part, ""))
        out.append(Sample(thread, frames, int(count)))
    return out


def summarize(raw: Path, seconds: float, top: int = 25) -> dict[str, Any]:
    """Samples per thread and per area (by the leaf frame), and the top
    functions by self and inclusive samples, as % of all samples."""
    stacks = parse(raw)
    total = sum(s.count for s in stacks) or 1
    threads: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for s in stacks:
        threads[re.sub(r"[-_ ]?\d+$", "", s.thread)] += s.count
        if not s.frames:
            continue
        func, file = s.frames[-1]
        areas[area(file)] += s.count
        own[f"{func} ({short(file)})"] += s.count
        for fn, fl in {(fn, fl) for fn, fl in s.frames if not GENERIC.search(fn)}:
            name = f"{fn} ({short(fl)})"
            inclusive[name] += s.count
            if "wabot_" in fl:
                ours[name] += s.count

    def pct(c: Counter[str], n: int | None = None) -> list[tuple[str, float]]:
        return [(k, round(v * 100 / total, 1)) for k, v in c.most_common(n)]

    return {
        "samples": total,
        "seconds": round(seconds, 1),
        # Samples of the GIL holder at RATE_HZ: the share of one core running Python.
        "gil_busy": round(total / max(seconds * RATE_HZ, 1), 2),
        "threads": pct(threads),
        "areas": pct(areas),
        "self": pct(own, top),
        "inclusive": pct(inclusive, top),
        "inclusive_wabot": pct(ours, top),
    }


def markdown(title: str, summary: dict[str, Any], extra: str = "") -> str:
    lines = [
        f"## {title}",
        "",
        f"{summary['samples']:,} samples over {summary['seconds']} s; the GIL was held "
        f"{summary['gil_busy'] * 100:.0f} % of the time. {extra}",
        "",
    ]
    for key, heading in (
        ("threads", "thread"),
        ("areas", "area (leaf frame)"),
        ("self", "function, self"),
        ("inclusive", "function, inclusive (entry points left out)"),
        ("inclusive_wabot", "wabot function, inclusive"),
    ):
        lines += [f"| {heading} | % of samples |", "| --- | ---: |"]
        lines += [f"| `{name}` | {p} |" for name, p in summary[key]]
        lines.append("")
    return "\n".join(lines)


def record(pid: int, out: Path, seconds: float | None) -> subprocess.Popen[bytes]:
    """py-spy attached to ``pid`` (until ``seconds`` pass or it gets SIGINT)."""
    cmd = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", str(RATE_HZ)]
    cmd += ["--format", "raw", "--output", str(out), "--threads", "--gil"]
    cmd += ["--full-filenames", "--nonblocking"]
    if seconds is not None:
        cmd += ["--duration", str(max(1, round(seconds)))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)


def finish(spy: subprocess.Popen[bytes], *, interrupt: bool) -> None:
    if interrupt and spy.poll() is None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
        raise AssertionError("py-spy did not exit") from None
    if spy.returncode not in (0, -signal.SIGINT, 130):
        raise AssertionError(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')}")


def profile_phase(bench: Bench) -> dict[str, Any]:
    cfg = bench.config
    out_dir = REPO / "bench" / "results" / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"dir": str(out_dir)}
    sections = []

    # ingest under wrk, as in phase (a)
    stream = f"bench-p:{bench.run}:ingest"
    tag = bench.tag("profile-ingest")
    ingest = bench.start_ingest(tag, stream)
    lua = wrk.script(bench.tmp, bench.sample, bench.stack.secret, chats=cfg.chats)
    try:
        wrk.run(ingest_port(bench.stack), cfg.warmup_seconds, cfg.connections, lua)
        raw = out_dir / "ingest.txt"
        cpu = CpuWindow(ingest.pid)
        spy = record(ingest.pid, raw, cfg.profile_seconds)
        load = wrk.run(ingest_port(bench.stack), cfg.profile_seconds, cfg.connections, lua)
        finish(spy, interrupt=False)
        cpu.stop()
    finally:
        bench.stop(ingest)
    delete_stream(bench.raw_redis, stream)
    summary = summarize(raw, cpu.wall)
    extra = (
        f"ingest served {load.rps:,.0f} req/s under py-spy, "
        f"{cpu.seconds * 1e6 / max(load.requests, 1):,.0f} µs of CPU per request "
        f"({cpu.seconds / max(cpu.wall, 1e-9):.2f} cores)."
    )
    results["ingest"] = {**summary, "rps": load.rps, "cpu_s": cpu.seconds}
    sections.append(markdown("ingest (POST /webhooks/evolution under wrk)", summary, extra))

    # worker draining a preloaded backlog, as in phase (b)
    n = max(cfg.drain_messages, 5000)
    stream = f"bench-p:{bench.run}:worker"
    instance = f"bench-p-{bench.run}"
    bench.stack.register_instance(instance)
    backlog = bench.preload_ours(stream, instance, n, cfg.chats)["accepted"]
    tag = bench.tag("profile-worker")
    worker = bench.start_worker(tag, stream, wait=True)
    raw = out_dir / "worker.txt"
    try:
        cpu = CpuWindow(worker.pid)
        spy = record(worker.pid, raw, None)
        sampler = Sampler(lambda: acknowledged(bench.redis, stream), backlog, timeout=600)
        sampler.start().wait()
        finish(spy, interrupt=True)
        cpu.stop()
    finally:
        bench.stop(worker)
    delete_stream(bench.raw_redis, stream)
    rate = sampler.rate()
    summary = summarize(raw, cpu.wall)
    extra = (
        f"The worker drained {rate['per_s']:,.0f} msg/s under py-spy, "
        f"{cpu.seconds * 1000 / max(backlog, 1):.2f} ms of CPU per message "
        f"({cpu.seconds / max(cpu.wall, 1e-9):.2f} cores)."
    )
    results["worker"] = {**summary, "per_s": rate["per_s"], "cpu_s": cpu.seconds}
    sections.append(markdown(f"worker (draining {backlog:,} messages)", summary, extra))

    (out_dir / "summary.md").write_text("# py-spy profiles\n\n" + "\n".join(sections))
    print(f"  profiles in {out_dir}", flush=True)
    for svc in ("ingest", "worker"):
        print(f"  {svc}: top areas " + ", ".join(f"{k} {v}%" for k, v in results[svc]["areas"][:6]))
    return results
