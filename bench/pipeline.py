"""End-to-end benchmark: ingest throughput with telemetry on vs off, pipeline
throughput, and end-to-end latency at a fixed rate.

Run with ``make bench``. Everything runs on this machine against real
redis-server and PostgreSQL processes; the services export OTLP to an in-process
receiver. Variants are measured alternately in the same run (these machines are
noisy), and the result is printed as ratios and written to
``bench/results/pipeline-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from tests.support.load import percentile
from tests.support.otlp import OtlpSink
from tests.support.stack.net import wait_for
from tests.support.stack.paths import REPO, load_samples
from tests.support.stack.pipeline import Stack
from tests.support.stack.servers import (
    create_database,
    running_postgres,
    running_redis,
    temp_dir,
)
from tests.support.stack.services import Service

SECRET = "bench-" + secrets.token_hex(16)
WRK_SCRIPT = """
counter = 0
local template = [==[{template}]==]
request = function()
  counter = counter + 1
  local body = string.gsub(template, "__ID__", string.format("B%s%09d", "{prefix}", counter))
  return wrk.format("POST", "/webhooks/evolution",
    {{["Content-Type"] = "application/json", ["X-Webhook-Secret"] = "{secret}"}}, body)
end
"""
# The defaults, not the tests' shortened timings; quieter logs.
BENCH_SETTINGS = {"LOG_LEVEL": "WARNING"}


def start_ingest(stack: Stack, stream: str, **extra: str) -> tuple[Service, int]:
    svc = stack.start_ingest(STREAM_NAME=stream, **extra)
    assert stack.ingest_port is not None
    return svc, stack.ingest_port


def start_worker(stack: Stack, stream: str, **extra: str) -> Service:
    return stack.start_worker(
        f"bench-{uuid.uuid4().hex[:6]}",
        healthy=True,
        STREAM_NAME=stream,
        WORKER_BATCH_SIZE="64",
        **extra,
    )


def wrk(port: int, seconds: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def wrk_script(tmp: Path, sample: dict[str, Any]) -> Path:
    body = json.loads(json.dumps(sample))
    body["data"]["key"]["id"] = "__ID__"
    path = tmp / f"post-{uuid.uuid4().hex[:6]}.lua"
    path.write_text(
        WRK_SCRIPT.format(template=json.dumps(body), secret=SECRET, prefix=uuid.uuid4().hex[:8])
    )
    return path


def bench_ingest_overhead(
    stack: Stack, tmp: Path, sample: dict[str, Any], rounds: int, seconds: int
) -> dict[str, Any]:
    """Ingest alone (XADD, no worker): telemetry on (every request traced), on with
    10 % head sampling, and OTEL_SDK_DISABLED=true; measured in rotating order."""
    variants: dict[str, dict[str, str]] = {
        "telemetry_on": {},
        "sampled_10pct": {
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        },
        "sdk_disabled": {"OTEL_SDK_DISABLED": "true"},
    }
    results: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for r in range(rounds):
        names = list(variants)
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            stream = f"bench:{name}:{r}"
            svc, port = start_ingest(stack, stream, **variants[name])
            try:
                wrk(port, 2, 8, wrk_script(tmp, sample))  # warm-up
                results[name].append(wrk(port, seconds, 16, wrk_script(tmp, sample)))
            finally:
                svc.terminate()
            print(
                f"  ingest {name:13s} round {r + 1}: {results[name][-1]['rps']:8.0f} req/s "
                f"p99 {results[name][-1]['p99_ms']:.1f} ms"
            )
    median = {k: statistics.median(x["rps"] for x in v) for k, v in results.items()}
    off = median["sdk_disabled"]
    return {
        "rounds": results,
        "median_rps": median,
        "ratio_on_over_off": median["telemetry_on"] / off,
        "ratio_sampled_10pct_over_off": median["sampled_10pct"] / off,
    }


def count_rows(stack: Stack, stream: str) -> int:
    [(count,)] = stack.sql(
        "SELECT count(*) FROM healthcare.whatsapp_messages "
        "WHERE stream_id IS NOT NULL AND raw_payload->>'instance' = %s",
        (stream,),
    )
    return int(count)


def bench_pipeline_throughput(
    stack: Stack, tmp: Path, sample: dict[str, Any], seconds: int
) -> dict[str, Any]:
    """Messages/s from webhook to committed row: wrk at full speed, then wait for the worker."""
    stream = "bench:throughput"
    body = json.loads(json.dumps(sample))
    body["instance"] = stream
    ingest, port = start_ingest(stack, stream)
    worker = start_worker(stack, stream)
    try:
        started = time.monotonic()
        load = wrk(port, seconds, 16, wrk_script(tmp, body))
        sent = round(load["rps"] * seconds)
        accepted_in = time.monotonic() - started
        wait_for(
            lambda: count_rows(stack, stream) >= sent * 0.99,
            timeout=300,
            what="the worker to catch up",
            interval=0.25,
        )
        total = time.monotonic() - started
        rows = count_rows(stack, stream)
    finally:
        worker.terminate()
        ingest.terminate()
    return {
        "ingest_rps": load["rps"],
        "rows": rows,
        "seconds_to_accept": accepted_in,
        "seconds_to_commit_all": total,
        "end_to_end_msgs_per_s": rows / total,
    }


async def _fixed_rate(
    port: int, sample: dict[str, Any], rate: float, seconds: float, instance: str
) -> int:
    sent = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        start = time.monotonic()
        tasks = []
        while (elapsed := time.monotonic() - start) < seconds:
            body = json.loads(json.dumps(sample))
            body["instance"] = instance
            body["data"]["key"]["id"] = f"L{uuid.uuid4().hex}"
            tasks.append(
                asyncio.create_task(
                    client.post(
                        "/webhooks/evolution", json=body, headers={"x-webhook-secret": SECRET}
                    )
                )
            )
            sent += 1
            await asyncio.sleep(max(0.0, sent / rate - elapsed))  # pacing, not synchronisation
        responses = await asyncio.gather(*tasks)
    assert all(r.status_code == 202 for r in responses)
    return sent


def bench_latency(
    stack: Stack, sample: dict[str, Any], rate: float, seconds: float
) -> dict[str, Any]:
    """End-to-end latency (XADD accepted → row committed) at a fixed, sustainable rate."""
    stream = "bench:latency"
    ingest, port = start_ingest(stack, stream)
    worker = start_worker(stack, stream, WORKER_BLOCK_MS="1000")
    try:
        sent = asyncio.run(_fixed_rate(port, sample, rate, seconds, stream))
        wait_for(
            lambda: count_rows(stack, stream) >= sent, timeout=120, what="all rows", interval=0.25
        )
        lat = [
            float(ms)
            for (ms,) in stack.sql(
                "SELECT extract(epoch FROM processed_at - received_at) * 1000 "
                "FROM healthcare.whatsapp_messages WHERE raw_payload->>'instance' = %s",
                (stream,),
            )
        ]
    finally:
        worker.terminate()
        ingest.terminate()
    return {
        "rate_per_s": rate,
        "messages": sent,
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": max(lat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    sample = load_samples()["messages-upsert-text"]
    results: dict[str, Any] = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with (
        running_redis("wabot-bench-redis-") as redis,
        running_postgres("wabot-bench-pg-") as pg,
        temp_dir("wabot-bench-") as tmp,
    ):
        sink = OtlpSink().start()
        stack = Stack(
            tmp,
            redis,
            create_database(pg, migrated=True),
            sink,
            secret=SECRET,
            app_env="bench",
            settings=BENCH_SETTINGS,
        )
        try:
            print("ingest throughput, telemetry on vs OTEL_SDK_DISABLED=true (alternating):")
            results["ingest_overhead"] = bench_ingest_overhead(
                stack, tmp, sample, args.rounds, args.seconds
            )
            print("pipeline throughput (ingest -> worker -> PostgreSQL):")
            results["pipeline"] = bench_pipeline_throughput(stack, tmp, sample, args.seconds)
            print(f"  {results['pipeline']['end_to_end_msgs_per_s']:.0f} msgs/s end to end")
            print(f"end-to-end latency at {args.rate:.0f} msgs/s:")
            results["latency"] = bench_latency(stack, sample, args.rate, args.latency_seconds)
            print(
                "  p50 {p50_ms:.1f} ms  p99 {p99_ms:.1f} ms  max {max_ms:.1f} ms".format(
                    **results["latency"]
                )
            )
        finally:
            stack.stop_all()
            sink.stop()
    overhead = results["ingest_overhead"]
    print(
        "ratio: ingest throughput with telemetry / OTEL_SDK_DISABLED = "
        f"{overhead['ratio_on_over_off']:.2f} (all traced), "
        f"{overhead['ratio_sampled_10pct_over_off']:.2f} (10 % sampled)"
    )
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
