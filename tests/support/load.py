"""An Evolution-like sender for fault tests.

:class:`EvolutionLoad` sends unique ``messages.upsert`` webhooks at a steady
rate and retries them the way Evolution API does (refused connections,
timeouts and every status except 400/401/403/404/422), with a short, bounded
backoff; it records, per message id, whether the message ever got a 2xx.
Its pacing and retry backoff wait on events, never sleep to synchronise.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import httpx

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
    attempt_at: list[float] = field(default_factory=list)  # monotonic start of each attempt
    accepted_at: float | None = None  # monotonic time the 2xx arrived
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
        secret: str,
        rate: float = 30.0,
        count: int = 90,
        max_seconds: float | None = None,
        retry_window: float = 20.0,
        max_attempts: int = 80,
        backoff_initial: float = 0.05,
        backoff_max: float = 0.5,
        request_timeout: float = 3.0,
        concurrency: int = 8,
        chats: int = 40,
    ) -> None:
        self.url = url
        # Messages are spread over this many patients' chats, round robin: one
        # chat is one partition, handled by one worker at a time.
        self.chats = chats
        self.template = template
        self.secret = secret
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

    def chat_of(self, message_id: str) -> str:
        """The remoteJid of a message this load sends (by its sequence number)."""
        return f"55119{int(message_id.rsplit('-', 1)[1]) % self.chats:08d}@s.whatsapp.net"

    def body(self, message_id: str) -> dict[str, Any]:
        body = copy.deepcopy(self.template)
        body["data"]["key"]["id"] = message_id
        body["data"]["key"]["remoteJid"] = self.chat_of(message_id)
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
        headers = {"content-type": "application/json", "x-webhook-secret": self.secret}
        deadline = time.monotonic() + self.retry_window
        delay = self.backoff_initial
        while delivery.attempts < self.max_attempts:
            delivery.attempts += 1
            delivery.attempt_at.append(time.monotonic())
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
                delivery.accepted_at = time.monotonic()
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
