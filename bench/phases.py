"""The benchmark's phases, each measuring wabot and its peers side by side.

* ingest: wabot ingest (every request traced, metrics and logs exported to the
  collector) vs stock FastAPI + XADD without telemetry vs the same with the
  contrib OpenTelemetry instrumentation; wrk for a fixed time, rounds rotated.
* drain: wabot worker draining a preloaded backlog into PostgreSQL
  (per-message spans, content sealed) with the messages spread over many
  chats and all in one chat, vs Celery solo + OTel and arq draining the same
  number of no-op ``INCR`` tasks; rounds rotated.
* latency: webhook accepted -> row committed at fixed offered rates.
* memory: RSS of ingest and worker after N messages through both.

Every wabot process gets its own telemetry tag; what it should have exported
is checked against what arrived (:mod:`bench.telemetry`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from tests.support.load import percentile
from tests.support.stack.env import clean_env
from tests.support.stack.net import free_port
from tests.support.stack.paths import BIN, REPO, SAMPLES_DIR
from tests.support.stack.pipeline import Stack
from tests.support.stack.process import Process
from tests.support.stack.services import Service

from bench import sender, wrk
from bench.measure import (
    CpuWindow,
    Sampler,
    Snapshot,
    acknowledged,
    delete_stream,
    memory_kb,
    rotations,
    spread,
    stream_length,
)
from bench.peers.payloads import chat_jid
from bench.telemetry import TelemetryBackend, stdout_log_records

SAMPLE_NAME = "messages-upsert-text"
# A drain that made no progress for this long is reported incomplete (a stuck
# consumer), instead of waiting for the phase's time limit.
STALL_SECONDS = 60.0
INGEST_OURS = "wabot ingest"
INGEST_STOCK = "stock FastAPI + XADD, no telemetry"
INGEST_CONTRIB = "FastAPI + XADD, contrib OTel instrumentation"
DRAIN_MANY = "wabot worker, many chats"
DRAIN_ONE = "wabot worker, one chat"
DRAIN_CELERY = "Celery 5 solo + OTel (no-op exporter)"
DRAIN_ARQ = "arq, tuned"


@dataclass(frozen=True)
class Config:
    """How much of everything; ``FULL`` for ``make bench``, ``QUICK`` to iterate."""

    name: str
    ingest_rounds: int
    ingest_seconds: float
    warmup_seconds: float
    connections: int
    drain_rounds: int
    drain_messages: int
    chats: int
    rates: tuple[float, ...]
    latency_seconds: float
    memory_messages: int
    profile_seconds: float


FULL = Config("full", 5, 10, 2, 16, 3, 20_000, 1000, (200.0, 50.0), 30, 100_000, 15)
QUICK = Config("quick", 2, 4, 1, 16, 1, 3_000, 1000, (200.0, 50.0), 10, 10_000, 8)
# A check that everything runs (not a measurement): `make test`'s smoke test.
SMOKE = Config("smoke", 1, 1, 0.5, 8, 1, 200, 50, (50.0,), 2, 300, 2)


class Bench:
    """One run: the stack, the backend, the peers' commands, and the results."""

    def __init__(
        self,
        config: Config,
        stack: Stack,
        backend: TelemetryBackend,
        tmp: Path,
        arq_python: str | None,
    ) -> None:
        self.config = config
        self.stack = stack
        self.backend = backend
        self.tmp = tmp
        self.arq_python = arq_python
        self.redis = redis.Redis.from_url(stack.redis.url, decode_responses=True)
        self.raw_redis = redis.Redis.from_url(stack.redis.url)
        self.sample_path = SAMPLES_DIR / f"{SAMPLE_NAME}.json"
        self.sample: dict[str, Any] = json.loads(self.sample_path.read_text())
        self.snapshots: dict[str, tuple[Snapshot, int]] = {}
        self.run = uuid.uuid4().hex[:6]

    # -- helpers -----------------------------------------------------------------
    def tag(self, what: str) -> str:
        """A telemetry tag (deployment.environment.name) for one process."""
        return f"bench-{self.run}-{what}-{uuid.uuid4().hex[:6]}"

    def _ours_env(self, tag: str, stream: str) -> dict[str, str]:
        return {
            "STREAM_NAME": stream,
            "OTEL_RESOURCE_ATTRIBUTES": f"deployment.environment.name={tag}",
        }

    def start_ingest(self, tag: str, stream: str) -> Service:
        return self.stack.start_ingest(**self._ours_env(tag, stream))

    def start_worker(self, tag: str, stream: str, *, wait: bool) -> Service:
        return self.stack.start_worker(
            f"bench-{uuid.uuid4().hex[:6]}",
            wait=wait,
            healthy=wait,
            **self._ours_env(tag, stream),
        )

    def stop(self, svc: Process) -> None:
        svc.stop(timeout=30)

    def account_ingest(self, svc: Service, tag: str, accepted: int) -> dict[str, Any]:
        """One accepted webhook = one SERVER span and one PRODUCER span."""
        return self.backend.account(
            "ingest", tag, {"SERVER": accepted, "PRODUCER": accepted}, stdout_log_records(svc)
        ).as_dict()

    def account_worker(self, svc: Service, tag: str, processed: int) -> dict[str, Any]:
        """One processed message = one CONSUMER (``process``) span."""
        return self.backend.account(
            "worker", tag, {"CONSUMER": processed}, stdout_log_records(svc)
        ).as_dict()

    def rows(self, instance: str) -> int:
        [(n,)] = self.stack.sql(
            "SELECT count(*) FROM healthcare.whatsapp_messages WHERE instance_name = %s",
            (instance,),
        )
        return int(n)

    def preload_ours(self, stream: str, instance: str, count: int, chats: int) -> dict[str, Any]:
        """``count`` webhooks accepted by a real ingest (then stopped): the backlog."""
        tag = self.tag("preload")
        ingest = self.start_ingest(tag, stream)
        lua = wrk.script(
            self.tmp, self.sample, self.stack.secret, chats=chats, limit=count, instance=instance
        )
        try:
            load = wrk.run(
                ingest_port(self.stack),
                max(30.0, count / 100),
                self.config.connections,
                lua,
                until=lambda: stream_length(self.redis, stream) >= count,
            )
        finally:
            self.stop(ingest)
        accepted = stream_length(self.redis, stream)
        return {
            "accepted": accepted,
            "ingest_rps": accepted / max(load.seconds, 1e-9),
            "telemetry": self.account_ingest(ingest, tag, accepted),
        }

    # -- (a) ingest throughput ---------------------------------------------------------
    def ingest_round(self, variant: str, r: int) -> dict[str, Any]:
        cfg = self.config
        stream = f"bench-a:{self.run}:{r}:{len(variant)}"
        tag = self.tag("ingest")
        if variant == INGEST_OURS:
            proc: Process = self.start_ingest(tag, stream)
            port = ingest_port(self.stack)
        else:
            port = free_port()
            env = clean_env(
                REDIS_URL=self.stack.redis.url,
                WEBHOOK_SECRET=self.stack.secret,
                PEER_STREAM=stream,
            )
            args = ["--port", str(port)]
            if variant == INGEST_CONTRIB:
                args.append("--otel")
                env.update(
                    OTEL_EXPORTER_OTLP_ENDPOINT=self.backend.otlp_endpoint,
                    OTEL_SERVICE_NAME="peer-fastapi-otel",
                    OTEL_METRIC_EXPORT_INTERVAL=self.stack.env.get(
                        "OTEL_METRIC_EXPORT_INTERVAL", "60000"
                    ),
                    OTEL_RESOURCE_ATTRIBUTES=f"deployment.environment.name={tag}",
                )
            proc = Process(
                "peer-fastapi",
                [sys.executable, "-m", "bench.peers.fastapi_xadd", *args],
                env=env,
                log_path=self.tmp / f"peer-fastapi-{r}-{len(variant)}.log",
                ready=f"http://127.0.0.1:{port}/health",
            ).start()
        try:
            lua = wrk.script(self.tmp, self.sample, self.stack.secret, chats=cfg.chats)
            wrk.run(port, cfg.warmup_seconds, max(1, cfg.connections // 2), lua)
            cpu = CpuWindow(proc.pid)
            result = wrk.run(port, cfg.ingest_seconds, cfg.connections, lua)
            cpu.stop()
        finally:
            self.stop(proc)
        out: dict[str, Any] = {
            **result.as_dict(),
            "load_average": os.getloadavg()[0],
            "cpu_s": cpu.seconds,
            "cpu_utilisation": cpu.seconds / max(cpu.wall, 1e-9),
            "cpu_us_per_request": cpu.seconds * 1e6 / max(result.requests, 1),
        }
        if variant == INGEST_OURS:
            out["telemetry"] = self.account_ingest(proc, tag, stream_length(self.redis, stream))
        delete_stream(self.raw_redis, stream)
        self.raw_redis.delete(stream)
        return out

    def ingest_phase(self) -> dict[str, Any]:
        variants = [INGEST_OURS, INGEST_STOCK, INGEST_CONTRIB]
        rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r, order in enumerate(rotations(variants, self.config.ingest_rounds)):
            for variant in order:
                res = self.ingest_round(variant, r)
                rounds[variant].append(res)
                print(
                    f"  (a) round {r + 1} {variant:46s} {res['rps']:8.0f} req/s  "
                    f"p99 {res['p99_ms']:6.1f} ms  {res['cpu_us_per_request']:6.0f} us CPU/req"
                    + (f"  non-2xx {res['non_2xx']}" if res["non_2xx"] else ""),
                    flush=True,
                )
        rps = {v: spread([x["rps"] for x in rounds[v]]) for v in variants}
        cpu = {v: spread([x["cpu_us_per_request"] for x in rounds[v]]) for v in variants}
        paired = [
            a["rps"] / b["rps"]
            for a, b in zip(rounds[INGEST_OURS], rounds[INGEST_STOCK], strict=True)
            if b["rps"]
        ]
        return {
            "rounds": rounds,
            "rps": rps,
            "cpu_us_per_request": cpu,
            "ratio_ours_over_stock": rps[INGEST_OURS]["median"] / rps[INGEST_STOCK]["median"],
            "ratio_ours_over_stock_per_round": spread(paired),
            "ratio_contrib_over_stock": rps[INGEST_CONTRIB]["median"] / rps[INGEST_STOCK]["median"],
            # What the ratio would be with a core to each (CPU per request, inverted).
            "cpu_ratio_ours_over_stock": cpu[INGEST_STOCK]["median"] / cpu[INGEST_OURS]["median"],
        }

    # -- (b) worker drain ----------------------------------------------------------------
    def drain_ours(self, r: int, chats: int) -> dict[str, Any]:
        n = self.config.drain_messages
        label = "many" if chats > 1 else "one"
        stream = f"bench-b:{self.run}:{r}:{label}"
        instance = f"bench-b-{self.run}-{r}-{label}"
        self.stack.register_instance(instance)
        preload = self.preload_ours(stream, instance, n, chats)
        backlog = preload["accepted"]
        tag = self.tag("worker")
        worker = self.start_worker(tag, stream, wait=False)
        sampler = Sampler(
            lambda: acknowledged(self.redis, stream),
            backlog,
            timeout=600,
            pid=worker.pid,
            stall=STALL_SECONDS,
        ).start()
        try:
            sampler.wait()
        finally:
            self.stop(worker)
        rows = self.rows(instance)
        out = {
            **sampler.rate(),
            "load_average": os.getloadavg()[0],
            "messages": backlog,
            "rows": rows,
            "complete": sampler.reached and rows == backlog,
            "stalled": sampler.stalled,
            "preload_ingest_rps": preload["ingest_rps"],
            "telemetry": [preload["telemetry"], self.account_worker(worker, tag, rows)],
        }
        delete_stream(self.raw_redis, stream)
        return out

    def _peer_preloaded(self, kind: str, queue: str) -> int:
        """Preload the peer's queue once per run, then restore the same backlog."""
        n = self.config.drain_messages
        if kind not in self.snapshots:
            sample = str(self.sample_path)
            chats = str(self.config.chats)
            if kind == "celery":
                cmd = [
                    sys.executable,
                    "-m",
                    "bench.peers.celery_noop",
                    queue,
                    str(n),
                    chats,
                    sample,
                ]
                env = clean_env(PEER_REDIS_URL=self.stack.redis.url)
                patterns = [queue, "_kombu.binding.*"]
            else:
                assert self.arq_python is not None
                cmd = [self.arq_python, "-m", "bench.peers.arq_noop", "preload"]
                cmd += [self.stack.redis.url, queue, str(n), chats, sample]
                env = clean_env()
                patterns = ["arq:job:*", f"{queue}*"]
            done = subprocess.run(
                cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900, check=False
            )
            if done.returncode != 0:
                raise AssertionError(f"{kind} preload failed:\n{done.stdout}{done.stderr}")
            self.snapshots[kind] = (Snapshot.take(self.raw_redis, patterns), int(done.stdout))
        else:
            self.snapshots[kind][0].restore(self.raw_redis)
        return self.snapshots[kind][1]

    def drain_peer(self, kind: str, r: int) -> dict[str, Any]:
        queue = f"bench-{kind}-{self.run}"
        counter = f"bench-{kind}-{self.run}:done"
        backlog = self._peer_preloaded(kind, queue)
        self.redis.delete(counter)
        if kind == "celery":
            cmd = [str(BIN / "celery"), "-A", "bench.peers.celery_noop", "worker", "-P", "solo"]
            cmd += ["-Q", queue, "--without-mingle", "--without-gossip", "--loglevel", "WARNING"]
            env = clean_env(PEER_REDIS_URL=self.stack.redis.url, PEER_COUNTER=counter)
        else:
            assert self.arq_python is not None
            cmd = [self.arq_python, "-m", "bench.peers.arq_noop", "work"]
            cmd += [self.stack.redis.url, queue, counter]
            env = clean_env()
        proc = Process(
            f"peer-{kind}",
            cmd,
            env=env,
            log_path=self.tmp / f"peer-{kind}-{r}.log",
            stop_signal=signal.SIGTERM,
        ).start()
        sampler = Sampler(
            lambda: int(self.redis.get(counter) or 0),
            backlog,
            timeout=900,
            pid=proc.pid,
            stall=STALL_SECONDS,
        ).start()
        try:
            sampler.wait()
        finally:
            proc.stop(timeout=30)
        return {
            **sampler.rate(),
            "load_average": os.getloadavg()[0],
            "messages": backlog,
            "complete": sampler.reached,
            "stalled": sampler.stalled,
        }

    def drain_phase(self) -> dict[str, Any]:
        variants = [DRAIN_MANY, DRAIN_CELERY, DRAIN_ONE, DRAIN_ARQ]
        if self.arq_python is None:
            variants.remove(DRAIN_ARQ)
        rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r, order in enumerate(rotations(variants, self.config.drain_rounds)):
            for variant in order:
                if variant == DRAIN_MANY:
                    res = self.drain_ours(r, self.config.chats)
                elif variant == DRAIN_ONE:
                    res = self.drain_ours(r, 1)
                else:
                    res = self.drain_peer("celery" if variant == DRAIN_CELERY else "arq", r)
                rounds[variant].append(res)
                cpu = res.get("cpu_ms_per_item", float("nan"))
                print(
                    f"  (b) round {r + 1} {variant:40s} {res['per_s']:8.0f} msg/s  "
                    f"{cpu:6.2f} ms CPU/msg  {res['messages']} messages"
                    + ("" if res["complete"] else "  INCOMPLETE"),
                    flush=True,
                )
        rate = {v: spread([x["per_s"] for x in rounds[v]]) for v in variants}
        cpu = {
            v: spread([x.get("cpu_ms_per_item", float("nan")) for x in rounds[v]]) for v in variants
        }
        paired = [
            a["per_s"] / b["per_s"]
            for a, b in zip(rounds[DRAIN_MANY], rounds[DRAIN_CELERY], strict=True)
            if b["per_s"]
        ]
        out: dict[str, Any] = {
            "messages": self.config.drain_messages,
            "chats": self.config.chats,
            # Rounds that never drained everything (stalled or timed out): their
            # rate runs up to the last progress.
            "incomplete": {v: sum(not x["complete"] for x in rounds[v]) for v in variants},
            "rounds": rounds,
            "per_s": rate,
            "cpu_ms_per_message": cpu,
            "ratio_ours_over_celery": rate[DRAIN_MANY]["median"] / rate[DRAIN_CELERY]["median"],
            "ratio_ours_over_celery_per_round": spread(paired),
            "ratio_one_chat_over_many": rate[DRAIN_ONE]["median"] / rate[DRAIN_MANY]["median"],
            "cpu_ratio_ours_over_celery": cpu[DRAIN_CELERY]["median"] / cpu[DRAIN_MANY]["median"],
        }
        if DRAIN_ARQ in rate:
            out["ratio_ours_over_arq"] = rate[DRAIN_MANY]["median"] / rate[DRAIN_ARQ]["median"]
        return out

    # -- (c) latency ------------------------------------------------------------------------------
    def latency_at(self, rate: float) -> dict[str, Any]:
        label = f"{rate:g}"
        stream = f"bench-c:{self.run}:{label}"
        instance = f"bench-c-{self.run}-{label}"
        self.stack.register_instance(instance)
        itag, wtag = self.tag("ingest"), self.tag("worker")
        ingest = self.start_ingest(itag, stream)
        worker = self.start_worker(wtag, stream, wait=True)

        def offer(seconds: float, to: str) -> tuple[int, int]:
            port = ingest_port(self.stack)
            chats = self.config.chats
            return fixed_rate(port, self.sample, self.stack.secret, rate, seconds, to, chats)

        try:
            # Warm-up (not measured): until the worker has taken its partitions
            # and handled messages in every one of them.
            self.stack.register_instance(instance + "-warmup")
            _, warm = offer(max(1.0, self.config.warmup_seconds), instance + "-warmup")
            Sampler(lambda: acknowledged(self.redis, stream), warm, timeout=120).start().wait()
            sent_total, sent = offer(self.config.latency_seconds, instance)
            Sampler(
                lambda: acknowledged(self.redis, stream), warm + sent, timeout=120
            ).start().wait()
        finally:
            self.stop(ingest)
            self.stop(worker)
        lat = [
            float(ms)
            for (ms,) in self.stack.sql(
                "SELECT extract(epoch FROM processed_at - received_at) * 1000"
                " FROM healthcare.whatsapp_messages WHERE instance_name = %s",
                (instance,),
            )
        ]
        rows = len(lat)
        accepted = stream_length(self.redis, stream)
        delete_stream(self.raw_redis, stream)
        return {
            "rate_per_s": rate,
            "seconds": self.config.latency_seconds,
            "messages": sent,
            "not_accepted": sent_total - sent,
            "rows": rows,
            "p50_ms": percentile(lat, 50) if lat else float("nan"),
            "p90_ms": percentile(lat, 90) if lat else float("nan"),
            "p99_ms": percentile(lat, 99) if lat else float("nan"),
            "max_ms": max(lat) if lat else float("nan"),
            "telemetry": [
                self.account_ingest(ingest, itag, accepted),
                self.account_worker(worker, wtag, rows + self.rows(instance + "-warmup")),
            ],
        }

    def latency_phase(self) -> dict[str, Any]:
        out = {}
        for rate in self.config.rates:
            res = self.latency_at(rate)
            out[f"{rate:g}"] = res
            print(
                f"  (c) {rate:5.0f} msg/s offered: p50 {res['p50_ms']:.1f} ms  "
                f"p90 {res['p90_ms']:.1f} ms  p99 {res['p99_ms']:.1f} ms  "
                f"max {res['max_ms']:.1f} ms  ({res['rows']}/{res['messages']} rows)",
                flush=True,
            )
        return out

    # -- (d) memory after N messages ---------------------------------------------------------------
    def memory_phase(self) -> dict[str, Any]:
        n = self.config.memory_messages
        stream = f"bench-d:{self.run}"
        instance = f"bench-d-{self.run}"
        self.stack.register_instance(instance)
        itag, wtag = self.tag("ingest"), self.tag("worker")
        ingest = self.start_ingest(itag, stream)
        worker = self.start_worker(wtag, stream, wait=True)
        before = {"ingest": memory_kb(ingest.pid), "worker": memory_kb(worker.pid)}
        lua = wrk.script(
            self.tmp,
            self.sample,
            self.stack.secret,
            chats=self.config.chats,
            limit=n,
            instance=instance,
        )
        started = time.monotonic()
        try:
            load = wrk.run(
                ingest_port(self.stack),
                max(60.0, n / 50),
                self.config.connections,
                lua,
                until=lambda: stream_length(self.redis, stream) >= n,
            )
            accepted = stream_length(self.redis, stream)
            Sampler(lambda: acknowledged(self.redis, stream), accepted, timeout=900).start().wait()
            elapsed = time.monotonic() - started
            after = {"ingest": memory_kb(ingest.pid), "worker": memory_kb(worker.pid)}
        finally:
            self.stop(ingest)
            self.stop(worker)
        rows = self.rows(instance)
        delete_stream(self.raw_redis, stream)
        return {
            "messages": accepted,
            "rows": rows,
            "ingest_rps": accepted / max(load.seconds, 1e-9),
            "end_to_end_msgs_per_s": rows / elapsed,
            "rss_mb_before": {k: v["VmRSS"] / 1024 for k, v in before.items()},
            "rss_mb_after": {k: v["VmRSS"] / 1024 for k, v in after.items()},
            "peak_rss_mb": {k: v["VmHWM"] / 1024 for k, v in after.items()},
            "telemetry": [
                self.account_ingest(ingest, itag, accepted),
                self.account_worker(worker, wtag, rows),
            ],
        }


def ingest_port(stack: Stack) -> int:
    assert stack.ingest_port is not None
    return stack.ingest_port


def bodies(sample: dict[str, Any], instance: str, chats: int) -> Iterator[bytes]:
    """The sample as JSON bytes, with a fresh message id and one of ``chats`` chats."""
    body = json.loads(json.dumps(sample))
    body["instance"] = instance
    body["data"]["key"]["id"] = "__ID__"
    body["data"]["key"]["remoteJid"] = "__CHAT__"
    template = json.dumps(body).encode()
    run = uuid.uuid4().hex[:8].upper()
    for i in itertools.count():
        yield template.replace(b"__ID__", f"L{run}{i:09d}".encode()).replace(
            b"__CHAT__", chat_jid(i % chats).encode()
        )


def fixed_rate(
    port: int,
    sample: dict[str, Any],
    secret: str,
    rate: float,
    seconds: float,
    instance: str,
    chats: int,
) -> tuple[int, int]:
    """Open loop: one webhook every 1/``rate`` s for ``seconds``; (sent, accepted)."""
    headers = {"Content-Type": "application/json", "X-Webhook-Secret": secret}
    return asyncio.run(
        sender.open_loop(
            port, wrk.WEBHOOK_PATH, headers, bodies(sample, instance, chats), rate, seconds
        )
    )
