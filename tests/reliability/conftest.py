"""Shared helpers of the fault-injection acceptance tests.

* :class:`EvolutionLoad` sends unique ``messages.upsert`` webhooks at a steady
  rate and retries them the way Evolution API does (refused connections,
  timeouts and every status except 400/401/403/404/422), with a short, bounded
  backoff; it records, per message id, whether the message ever got a 2xx.
* :class:`Oracle` checks the end state every fault test must reach: every
  accepted message is exactly one row, nothing is pending, and dead letters
  exist only for poison.
* ``own_redis`` / ``own_postgres`` are function-scoped servers that a test may
  stop and restart; the session-wide servers are never stopped.

Nothing here sleeps to synchronise: waits poll an observable condition with a
deadline (``wait_for``); the load's pacing and retry backoff wait on events.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from tests.conftest import WEBHOOK_SECRET, Stack, create_db
from tests.support.procs import (
    BIN,
    REPO,
    PostgresServer,
    RedisServer,
    Service,
    free_port,
    http_get,
    run_migrate_cmd,
    running_postgres,
    running_redis,
    wait_for,
)

GROUP = "workers"
# Evolution never retries these; everything else (and transport errors) it does.
NEVER_RETRIED = frozenset({400, 401, 403, 404, 422})


# --- the Evolution-like load ---------------------------------------------------
@dataclass
class Delivery:
    """What happened to one message the load sent."""

    message_id: str
    attempts: int = 0
    outcomes: list[str] = field(default_factory=list)  # "202", "503", "ConnectError", ...
    accepted: bool = False
    rejected: bool = False  # a status Evolution never retries
    gave_up: bool = False  # retry budget exhausted
    latency_s: float | None = None  # of the accepted attempt
    stream_id: str | None = None
    trace_id: str | None = None


class EvolutionLoad:
    """Sends ``count`` unique messages at ``rate``/s from a small thread pool.

    Bounded in count (``count``), in time (no new message after ``max_seconds``)
    and per message (``max_attempts`` within ``retry_window`` seconds). The
    backoff is Evolution's exponential one, scaled from seconds to tens of ms.
    """

    def __init__(
        self,
        url: str,
        template: dict[str, Any],
        *,
        rate: float = 30.0,
        count: int = 90,
        max_seconds: float | None = None,
        retry_window: float = 20.0,
        max_attempts: int = 80,
        backoff_initial: float = 0.05,
        backoff_max: float = 0.5,
        request_timeout: float = 3.0,
        concurrency: int = 8,
    ) -> None:
        self.url = url
        self.template = template
        self.rate = rate
        self.count = count
        self.max_seconds = max_seconds if max_seconds is not None else count / rate + 5.0
        self.retry_window = retry_window
        self.max_attempts = max_attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.request_timeout = request_timeout
        self.prefix = "REL" + uuid.uuid4().hex[:10].upper() + "-"
        self.deliveries: dict[str, Delivery] = {}
        self.outcome_counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._abort = threading.Event()
        self._no_more = threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="evolution")
        self._futures: list[Future[None]] = []
        self._scheduler = threading.Thread(target=self._schedule, name="evolution-sched")
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self.started = 0.0

    # -- running ---------------------------------------------------------
    def start(self) -> EvolutionLoad:
        self.started = time.monotonic()
        self._scheduler.start()
        return self

    def body(self, message_id: str) -> dict[str, Any]:
        body = copy.deepcopy(self.template)
        body["data"]["key"]["id"] = message_id
        return body

    def _schedule(self) -> None:
        for i in range(self.count):
            due = self.started + i / self.rate
            if self._no_more.wait(max(0.0, due - time.monotonic())):
                return  # pacing wait, interrupted by stop_sending() or abort()
            if time.monotonic() - self.started > self.max_seconds:
                return
            delivery = Delivery(f"{self.prefix}{i:05d}")
            with self.lock:
                self.deliveries[delivery.message_id] = delivery
                self._futures.append(self._pool.submit(self._deliver, delivery))

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(timeout=self.request_timeout)
            self._local.client = client
            with self.lock:
                self._clients.append(client)
        return client

    def _deliver(self, delivery: Delivery) -> None:
        content = json.dumps(self.body(delivery.message_id)).encode()
        headers = {"content-type": "application/json", "x-webhook-secret": WEBHOOK_SECRET}
        deadline = time.monotonic() + self.retry_window
        delay = self.backoff_initial
        while delivery.attempts < self.max_attempts:
            delivery.attempts += 1
            started = time.perf_counter()
            status: int | None = None
            try:
                resp = self._client().post(self.url, content=content, headers=headers)
                status = resp.status_code
                outcome = str(status)
            except httpx.TransportError as exc:  # refused, reset, timed out
                outcome = type(exc).__name__
            elapsed = time.perf_counter() - started
            with self.lock:
                delivery.outcomes.append(outcome)
                self.outcome_counts[outcome] += 1
            if status is not None and 200 <= status < 300:
                answer = resp.json()
                delivery.accepted = True
                delivery.latency_s = elapsed
                delivery.stream_id = answer.get("stream_id")
                delivery.trace_id = answer.get("trace_id")
                return
            if status in NEVER_RETRIED:
                delivery.rejected = True
                return
            if time.monotonic() + delay > deadline:
                break
            if self._abort.wait(delay):  # backoff, interrupted by abort()
                break
            delay = min(delay * 2, self.backoff_max)
        delivery.gave_up = True

    def finish(self, timeout: float) -> EvolutionLoad:
        """Wait until every message was scheduled and has a final outcome."""
        deadline = time.monotonic() + timeout
        self._scheduler.join(timeout)
        assert not self._scheduler.is_alive(), f"load still scheduling after {timeout}s"
        with self.lock:
            futures = list(self._futures)
        _, not_done = wait_futures(futures, timeout=max(0.0, deadline - time.monotonic()))
        assert not not_done, (
            f"{len(not_done)} message(s) still being delivered after {timeout}s: {self.summary()}"
        )
        for future in futures:
            future.result()  # re-raise a bug in the load itself
        return self

    def stop_sending(self) -> None:
        """Send no new message; the ones already sent keep being retried."""
        self._no_more.set()

    def abort(self) -> None:
        """Stop sending and retrying; used at teardown."""
        self._no_more.set()
        self._abort.set()
        self._scheduler.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            clients = list(self._clients)
        for client in clients:
            client.close()

    # -- what happened ---------------------------------------------------
    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries.values())

    @property
    def sent_ids(self) -> set[str]:
        return {d.message_id for d in self.snapshot() if d.attempts}

    @property
    def accepted_ids(self) -> set[str]:
        return {d.message_id for d in self.snapshot() if d.accepted}

    def accepted_count(self) -> int:
        return sum(1 for d in self.snapshot() if d.accepted)

    def outcomes(self) -> Counter[str]:
        with self.lock:
            return Counter(self.outcome_counts)

    def retried(self) -> int:
        """Attempts that were not the last one of their message."""
        return sum(max(0, d.attempts - 1) for d in self.snapshot())

    def latencies(self, skip_first: int = 0) -> list[float]:
        """Latencies of the accepted attempts, in sending order, after a warm-up."""
        ordered = sorted(self.snapshot(), key=lambda d: d.message_id)[skip_first:]
        return [d.latency_s for d in ordered if d.latency_s is not None]

    def summary(self) -> str:
        ds = self.snapshot()
        return (
            f"scheduled={len(ds)} accepted={sum(d.accepted for d in ds)} "
            f"rejected={sum(d.rejected for d in ds)} gave_up={sum(d.gave_up for d in ds)} "
            f"retries={self.retried()} outcomes={dict(self.outcomes())}"
        )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    assert values, "no values"
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# --- the queue, seen from outside ---------------------------------------------
class QueueView:
    """Synchronous looks at the test's stream (a new connection per call, so
    it works across restarts of the Redis server)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    @contextlib.contextmanager
    def client(self) -> Iterator[redis.Redis]:
        client = redis.Redis.from_url(
            self.stack.redis.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
        )
        try:
            yield client
        finally:
            client.close()

    @property
    def dead_stream(self) -> str:
        return self.stack.stream + ":dead"

    def group(self) -> dict[str, Any]:
        """XINFO GROUPS of our group: pending, lag, entries-read, ..."""
        with self.client() as c:
            try:
                groups = c.xinfo_groups(self.stack.stream)
            except redis.ResponseError:
                return {"pending": 0, "lag": 0, "entries-read": 0}  # no stream yet
        for g in groups:
            if g["name"] == GROUP:
                return dict(g)
        return {"pending": 0, "lag": 0, "entries-read": 0}

    def pending(self) -> int:
        return int(self.group()["pending"])

    def acked(self) -> int:
        """Entries delivered to the group and acknowledged (no trimming in tests)."""
        g = self.group()
        return int(g.get("entries-read") or 0) - int(g["pending"])

    def pending_ids(self, consumer: str | None = None) -> list[str]:
        with self.client() as c:
            kwargs: dict[str, Any] = {"consumername": consumer} if consumer else {}
            rows = c.xpending_range(self.stack.stream, GROUP, "-", "+", 100_000, **kwargs)
        return [str(r["message_id"]) for r in rows]

    def length(self) -> int:
        with self.client() as c:
            return int(c.xlen(self.stack.stream))

    def entry(self, entry_id: str, stream: str | None = None) -> dict[str, str]:
        with self.client() as c:
            found = c.xrange(stream or self.stack.stream, entry_id, entry_id)
        assert found, f"entry {entry_id} not found"
        return {str(k): str(v) for k, v in (found[0][1] or {}).items()}

    def dead_letters(self) -> list[tuple[str, dict[str, str]]]:
        with self.client() as c:
            items = c.xrange(self.dead_stream) or []
        return [(str(i), {str(k): str(v) for k, v in (f or {}).items()}) for i, f in items]

    def xadd(self, fields: dict[str, str]) -> str:
        with self.client() as c:
            return str(c.xadd(self.stack.stream, fields))


# --- the oracle ----------------------------------------------------------------
@dataclass
class Tally:
    """The figures every fault test records."""

    sent: int
    accepted: int
    rows: int
    distinct_rows: int
    pending: int
    lag: int
    dead_letters: int
    missing: list[str]  # accepted, but no row
    duplicated: list[str]  # more than one row for one message id
    unknown: list[str]  # a row for a message id nobody sent

    def line(self) -> str:
        return (
            f"sent={self.sent} accepted={self.accepted} rows={self.rows} "
            f"distinct_rows={self.distinct_rows} pending={self.pending} lag={self.lag} "
            f"dead_letters={self.dead_letters} missing={len(self.missing)} "
            f"duplicated={len(self.duplicated)} unknown={len(self.unknown)}"
        )


class Oracle:
    """Every accepted message is exactly one row, nothing is pending at the end,
    dead letters only for poison."""

    def __init__(self, stack: Stack, record: Callable[[str, object], None]) -> None:
        self.stack = stack
        self.queue = QueueView(stack)
        self.record = record

    def row_counts(self) -> Counter[str]:
        with psycopg.connect(self.stack.dsn, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT message_id, count(*) FROM healthcare.whatsapp_messages GROUP BY message_id"
            ).fetchall()
        return Counter({str(m): int(n) for m, n in rows})

    def tally(
        self, *loads: EvolutionLoad, extra_sent: set[str] | frozenset[str] = frozenset()
    ) -> Tally:
        sent: set[str] = set(extra_sent)
        accepted: set[str] = set()
        for load in loads:
            sent |= load.sent_ids
            accepted |= load.accepted_ids
        counts = self.row_counts()
        group = self.queue.group()
        return Tally(
            sent=len(sent),
            accepted=len(accepted),
            rows=sum(counts.values()),
            distinct_rows=len(counts),
            pending=int(group["pending"]),
            lag=int(group.get("lag") or 0),
            dead_letters=len(self.queue.dead_letters()),
            missing=sorted(accepted - set(counts)),
            duplicated=sorted(m for m, n in counts.items() if n > 1),
            unknown=sorted(set(counts) - sent),
        )

    def check(
        self,
        *loads: EvolutionLoad,
        poison: set[str] | frozenset[str] = frozenset(),
        extra_sent: set[str] | frozenset[str] = frozenset(),
        timeout: float = 30.0,
    ) -> Tally:
        """Wait for the pipeline to settle, then assert the oracle.

        ``poison``: the ``message_id`` fields of the entries that must be (and
        are the only ones) dead-lettered; ``extra_sent``: message ids sent
        outside the loads (probes), which may or may not have a row.
        """
        last: list[Tally] = []

        def settled() -> bool:
            t = self.tally(*loads, extra_sent=extra_sent)
            last[:] = [t]
            return not t.missing and t.pending == 0 and t.lag == 0 and t.dead_letters >= len(poison)

        try:
            wait_for(settled, timeout=timeout, what="every accepted message stored, none pending")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last: {last[0].line() if last else '?'}") from None
        t = self.tally(*loads, extra_sent=extra_sent)
        self.record("oracle", t.line())
        print(f"\nORACLE {self.stack.stream}: {t.line()}")
        assert t.accepted > 0, f"the load got nothing accepted: {t.line()}"
        assert not t.missing, f"accepted but never stored: {t.missing[:5]} ({t.line()})"
        assert not t.duplicated, f"stored more than once: {t.duplicated[:5]} ({t.line()})"
        assert t.rows == t.distinct_rows
        assert not t.unknown, f"rows nobody sent: {t.unknown[:5]}"
        assert t.pending == 0, t.line()
        assert t.lag == 0, t.line()
        dead_ids = [f.get("message_id", "") for _, f in self.queue.dead_letters()]
        assert sorted(dead_ids) == sorted(poison), f"dead letters {dead_ids}, poison {poison}"
        return t


# --- processes ---------------------------------------------------------------
def start_ingest(stack: Stack, port: int | None = None, **env: str) -> Service:
    """``stack.start_ingest`` on a chosen port (a restart reuses it)."""
    return stack.start_ingest(port, **env)


def start_worker(
    stack: Stack, name: str | None = None, *, wait: bool = True, **env: str
) -> Service:
    """``stack.start_worker`` that also returns if the worker dies during start-up
    (a fault-injected worker may kill itself before /health answers)."""
    return stack.start_worker(name, wait=wait, must_live=False, **env)


def health(svc: Service) -> tuple[int, dict[str, Any]]:
    """The worker's /health status and body."""
    status, body = http_get(svc.health_url, timeout=5)
    return status, json.loads(body or b"{}")


def health_port(svc: Service) -> int:
    return int(svc.env["WORKER_HEALTH_PORT"])


def worker_check(svc: Service) -> int:
    """Exit code of ``worker --check`` run against ``svc``'s health port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["WORKER_HEALTH_PORT"] = str(health_port(svc))
    result = subprocess.run(
        [str(BIN / "worker"), "--check"],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode


def run_worker_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``worker <args>`` (e.g. ``redrive``) with the stack's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(stack.env)
    env["OTEL_SDK_DISABLED"] = "true"
    return subprocess.run(
        [str(BIN / "worker"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stop_timed(svc: Service, timeout: float) -> tuple[int, float]:
    """SIGTERM ``svc``; returns its exit code and how long it took to exit."""
    return stop_all_timed([svc], timeout)[0]


def stop_all_timed(services: list[Service], timeout: float) -> list[tuple[int, float]]:
    """SIGTERM all of ``services`` at once; each one's exit code and time to exit."""
    started = time.monotonic()
    for svc in services:
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGTERM)
    exited: dict[int, float] = {}

    def all_exited() -> bool:
        for i, svc in enumerate(services):
            if i not in exited and svc.proc is not None and svc.proc.poll() is not None:
                exited[i] = time.monotonic() - started
        return len(exited) == len(services)

    try:
        wait_for(all_exited, timeout=timeout + 10, what="SIGTERMed services to exit", interval=0.02)
    finally:
        for svc in services:
            svc.kill()  # only the ones still running (then the wait above failed)
    return [(int(svc.proc.returncode), exited[i]) for i, svc in enumerate(services) if svc.proc]


def rss_kb(svc: Service) -> int:
    """Resident set size of ``svc`` from /proc/<pid>/status."""
    assert svc.proc is not None
    for line in Path(f"/proc/{svc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("VmRSS not found")


def messages(svc: Service, text: str) -> list[dict[str, Any]]:
    """``svc``'s JSON log records whose message contains ``text``."""
    return [r for r in svc.json_logs() if text in str(r.get("message", ""))]


def cumulative(stack: Stack, name: str, service: str, **attrs: Any) -> float:
    """Sum over processes and matching series of each series' latest value
    (counters are cumulative per process; a process is its service.instance.id)."""
    series: dict[tuple[Any, frozenset[tuple[str, Any]]], float] = {}
    for p in stack.metric_points(name, service):
        if all(p["attributes"].get(k) == v for k, v in attrs.items()):
            key = (p["resource"].get("service.instance.id"), frozenset(p["attributes"].items()))
            series[key] = p["value"]
    return sum(series.values())


class BlackHole:
    """A TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BlackHole:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():  # ends when the fixture stops it
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)  # never read, never answered

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.held:
            conn.close()
        self.sock.close()


def closed_port() -> int:
    """A port nothing listens on (connections are refused)."""
    return free_port()


# --- fixtures -------------------------------------------------------------------
@pytest.fixture
def template(samples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return samples["messages-upsert-text"]


@pytest.fixture
def make_load(stack: Stack, template: dict[str, Any]) -> Iterator[Callable[..., EvolutionLoad]]:
    """``make_load(rate=..., count=...)``: an unstarted load aimed at the stack's ingest."""
    loads: list[EvolutionLoad] = []

    def make(**kwargs: Any) -> EvolutionLoad:
        load = EvolutionLoad(stack.url("/webhooks/evolution"), template, **kwargs)
        loads.append(load)
        return load

    try:
        yield make
    finally:
        for load in loads:
            load.abort()


@pytest.fixture
def oracle(stack: Stack, record_property: Callable[[str, object], None]) -> Oracle:
    return Oracle(stack, record_property)


@pytest.fixture
def queue(stack: Stack) -> QueueView:
    return QueueView(stack)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server (AOF on) only this test uses; it may stop and restart it."""
    with running_redis("wabot-rel-redis-") as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster only this test uses; it may stop and restart it."""
    with running_postgres("wabot-rel-pg-") as server:
        yield server


def create_database(server: PostgresServer, *, migrated: bool) -> str:
    """A new database on ``server`` (migrated with the real ``migrate``); its DSN."""
    dsn = server.dsn(create_db(server, None))
    if migrated:
        result = run_migrate_cmd(dsn)
        assert result.returncode == 0, result.stderr + result.stdout
    return dsn


def use_redis(stack: Stack, server: RedisServer) -> None:
    """Point the stack (services started from now on, and helpers) at ``server``."""
    stack.redis = server
    stack.env["REDIS_URL"] = server.url


def use_database(stack: Stack, dsn: str) -> None:
    """Point the stack (services started from now on, and helpers) at ``dsn``."""
    stack.dsn = dsn
    stack.env["DATABASE_URL"] = dsn
