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
import psycopg
from tests.conftest import load_samples
from tests.support.otlp import OtlpSink
from tests.support.procs import (
    REPO,
    PostgresServer,
    RedisServer,
    Service,
    free_port,
    http_get,
    run_migrate_cmd,
    temp_dir,
    wait_for,
)

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


class Env:
    """Redis, PostgreSQL and an OTLP receiver for the whole run."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tmp.chmod(0o755)  # PostgreSQL runs as its own user below it
        self.redis = RedisServer(port=free_port(), dir=tmp)
        self.pg = PostgresServer(port=free_port(), dir=tmp / "pg")
        (tmp / "pg").mkdir()
        self.sink = OtlpSink()

    def start(self) -> None:
        self.redis.start()
        self.pg.init()
        self.pg.start()
        self.sink.start()
        with psycopg.connect(self.pg.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        result = run_migrate_cmd(self.pg.dsn("bench"))
        assert result.returncode == 0, result.stderr

    def stop(self) -> None:
        self.sink.stop()
        self.pg.stop()
        self.redis.stop()

    def env(self, stream: str, **extra: str) -> dict[str, str]:
        return {
            "APP_ENV": "bench",
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": self.pg.dsn("bench"),
            "WEBHOOK_SECRET": SECRET,
            "STREAM_NAME": stream,
            "LOG_LEVEL": "WARNING",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.sink.endpoint,
            **extra,
        }


def start_ingest(env: Env, stream: str, tmp: Path, **extra: str) -> tuple[Service, int]:
    port = free_port()
    svc = Service(
        "ingest",
        {**env.env(stream, **extra), "INGEST_HOST": "127.0.0.1", "INGEST_PORT": str(port)},
        tmp / f"ingest-{uuid.uuid4().hex[:6]}.log",
    )
    svc.start()
    wait_for(
        lambda: http_get(f"http://127.0.0.1:{port}/ready")[0] == 200,
        timeout=30,
        what="ingest ready",
    )
    return svc, port


def start_worker(env: Env, stream: str, tmp: Path, **extra: str) -> Service:
    port = free_port()
    svc = Service(
        "worker",
        {
            **env.env(stream, **extra),
            "WORKER_HEALTH_HOST": "127.0.0.1",
            "WORKER_HEALTH_PORT": str(port),
            "WORKER_BATCH_SIZE": "64",
            "WORKER_CONSUMER_NAME": f"bench-{uuid.uuid4().hex[:6]}",
        },
        tmp / f"worker-{uuid.uuid4().hex[:6]}.log",
    )
    svc.start()
    wait_for(
        lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200,
        timeout=30,
        what="worker healthy",
    )
    return svc


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
    env: Env, tmp: Path, sample: dict[str, Any], rounds: int, seconds: int
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
            svc, port = start_ingest(env, stream, tmp, **variants[name])
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


def count_rows(env: Env, stream: str) -> int:
    with psycopg.connect(env.pg.dsn("bench")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM healthcare.whatsapp_messages "
            "WHERE stream_id IS NOT NULL AND raw_payload->>'instance' = %s",
            (stream,),
        ).fetchone()
    return int(row[0]) if row else 0


def bench_pipeline_throughput(
    env: Env, tmp: Path, sample: dict[str, Any], seconds: int
) -> dict[str, Any]:
    """Messages/s from webhook to committed row: wrk at full speed, then wait for the worker."""
    stream = "bench:throughput"
    body = json.loads(json.dumps(sample))
    body["instance"] = stream
    ingest, port = start_ingest(env, stream, tmp)
    worker = start_worker(env, stream, tmp)
    try:
        started = time.monotonic()
        load = wrk(port, seconds, 16, wrk_script(tmp, body))
        sent = round(load["rps"] * seconds)
        accepted_in = time.monotonic() - started
        wait_for(
            lambda: count_rows(env, stream) >= sent * 0.99,
            timeout=300,
            what="the worker to catch up",
            interval=0.25,
        )
        total = time.monotonic() - started
        rows = count_rows(env, stream)
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
    env: Env, tmp: Path, sample: dict[str, Any], rate: float, seconds: float
) -> dict[str, Any]:
    """End-to-end latency (XADD accepted → row committed) at a fixed, sustainable rate."""
    stream = "bench:latency"
    ingest, port = start_ingest(env, stream, tmp)
    worker = start_worker(env, stream, tmp, WORKER_BLOCK_MS="1000")
    try:
        sent = asyncio.run(_fixed_rate(port, sample, rate, seconds, stream))
        wait_for(
            lambda: count_rows(env, stream) >= sent, timeout=120, what="all rows", interval=0.25
        )
        with psycopg.connect(env.pg.dsn("bench")) as conn:
            lat = [
                float(r[0])
                for r in conn.execute(
                    "SELECT extract(epoch FROM processed_at - received_at) * 1000 "
                    "FROM healthcare.whatsapp_messages WHERE raw_payload->>'instance' = %s",
                    (stream,),
                ).fetchall()
            ]
    finally:
        worker.terminate()
        ingest.terminate()
    lat.sort()

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))]

    return {
        "rate_per_s": rate,
        "messages": sent,
        "p50_ms": q(0.50),
        "p90_ms": q(0.90),
        "p99_ms": q(0.99),
        "max_ms": lat[-1],
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
    with temp_dir("wabot-bench-") as tmp:
        env = Env(tmp)
        env.start()
        try:
            print("ingest throughput, telemetry on vs OTEL_SDK_DISABLED=true (alternating):")
            results["ingest_overhead"] = bench_ingest_overhead(
                env, tmp, sample, args.rounds, args.seconds
            )
            print("pipeline throughput (ingest -> worker -> PostgreSQL):")
            results["pipeline"] = bench_pipeline_throughput(env, tmp, sample, args.seconds)
            print(f"  {results['pipeline']['end_to_end_msgs_per_s']:.0f} msgs/s end to end")
            print(f"end-to-end latency at {args.rate:.0f} msgs/s:")
            results["latency"] = bench_latency(env, tmp, sample, args.rate, args.latency_seconds)
            print(
                "  p50 {p50_ms:.1f} ms  p99 {p99_ms:.1f} ms  max {max_ms:.1f} ms".format(
                    **results["latency"]
                )
            )
        finally:
            env.stop()
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
