"""Small measuring tools: a process's CPU time and memory, the machine, a
background sampler of a counter, the stream's figures, Redis snapshots, and
summaries of repeated rounds (median and spread)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from wabot_shared import names

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- one process ------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of ``pid``, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class CpuWindow:
    """CPU time a process spent between ``start()`` and ``stop()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.begin = cpu_seconds(pid)
        self.t0 = time.monotonic()
        self.seconds = 0.0
        self.wall = 0.0

    def stop(self) -> CpuWindow:
        self.seconds = cpu_seconds(self.pid) - self.begin
        self.wall = time.monotonic() - self.t0
        return self


# -- the machine --------------------------------------------------------------------
def _version(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def machine(extra_versions: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    out: dict[str, Any] = {
        "cpu_model": model[1].strip() if model else platform.processor(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(mem[1]) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }
    versions = {
        "redis": ["redis-server", "--version"],
        "wrk": ["wrk", "--version"],
        **(extra_versions or {}),
    }
    out["versions"] = {k: _version(v) for k, v in versions.items()}
    return out


# -- sampling a counter in the background ----------------------------------------------
class Sampler:
    """Samples ``read()`` every ``interval`` s in a thread until it reaches
    ``target`` (or ``timeout`` passes): the drain's progress over time."""

    def __init__(
        self,
        read: Callable[[], int],
        target: int,
        *,
        timeout: float,
        interval: float = 0.02,
        pid: int | None = None,
        stall: float | None = None,
    ) -> None:
        self.read = read
        # Give up when the value has not moved for ``stall`` s (a stuck consumer).
        self.stall = stall
        self.target = target
        self.timeout = timeout
        self.interval = interval
        # With ``pid``: that process's CPU time at each sample, too.
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.cpu: list[float] = []
        self.stalled = False
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        moved_at = time.monotonic()
        while not self._stop.is_set():
            try:
                value = self.read()
            except (OSError, redis.RedisError):
                value = self.samples[-1][1] if self.samples else 0
            now = time.monotonic()
            if self.samples and value != self.samples[-1][1]:
                moved_at = now
            self.samples.append((now, value))
            if self.pid is not None:
                try:
                    self.cpu.append(cpu_seconds(self.pid))
                except OSError:
                    self.cpu.append(self.cpu[-1] if self.cpu else 0.0)
            if value >= self.target or now >= deadline:
                break
            if self.stall is not None and now - moved_at >= self.stall:
                self.stalled = True
                break
            self._stop.wait(self.interval)  # sampling interval, not synchronisation
        self.done.set()

    def wait(self) -> Sampler:
        """Until the target is reached or the timeout passed (bounded)."""
        self.done.wait(self.timeout + 5)
        self._stop.set()
        self._thread.join(5)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def reached(self) -> bool:
        return bool(self.samples) and self.samples[-1][1] >= self.target

    def rate(self) -> dict[str, float]:
        """From the first sample showing progress to the first one showing the
        last value (the target, unless time ran out or progress stalled); with
        ``pid``, its CPU per item too."""
        moving = [i for i, (_, v) in enumerate(self.samples) if v > 0]
        if len(moving) < 2:
            return {"per_s": float("nan"), "seconds": float("nan"), "counted": 0}
        final = self.samples[moving[-1]][1]
        first = moving[0]
        last = next(i for i in moving if self.samples[i][1] == final)
        if last == first:
            return {"per_s": float("nan"), "seconds": float("nan"), "counted": 0}
        (t0, v0), (t1, v1) = self.samples[first], self.samples[last]
        seconds = max(t1 - t0, 1e-9)
        out = {"per_s": (v1 - v0) / seconds, "seconds": seconds, "counted": v1 - v0}
        if self.cpu and v1 > v0:
            out["cpu_ms_per_item"] = (self.cpu[last] - self.cpu[first]) * 1000 / (v1 - v0)
            out["cpu_utilisation"] = (self.cpu[last] - self.cpu[first]) / seconds
        return out


# -- Redis ---------------------------------------------------------------------------------
def partition_keys(stream: str, partitions: int = names.DEFAULT_PARTITIONS) -> list[str]:
    return [names.partition_stream(stream, p) for p in range(partitions)]


def stream_length(client: redis.Redis, stream: str) -> int:
    """Entries in every partition of ``stream``."""
    pipe = client.pipeline(transaction=False)
    for key in partition_keys(stream):
        pipe.xlen(key)
    return sum(int(n) for n in pipe.execute())


def acknowledged(client: redis.Redis, stream: str, group: str = names.DEFAULT_GROUP) -> int:
    """Entries of ``stream`` the group read and acknowledged (= committed: the
    worker acknowledges only after the commit)."""
    pipe = client.pipeline(transaction=False)
    keys = partition_keys(stream)
    for key in keys:
        pipe.xinfo_groups(key)
    total = 0
    for groups in pipe.execute(raise_on_error=False):
        if isinstance(groups, Exception):
            continue
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == group:
                total += int(g.get("entries-read") or 0) - int(g["pending"])
    return total


def delete_stream(client: redis.Redis, stream: str) -> None:
    keys = list(client.scan_iter(match=f"{stream}:*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


@dataclass
class Snapshot:
    """Keys DUMPed once and RESTOREd before each round (a preloaded queue
    without publishing it again)."""

    dumps: dict[bytes, bytes] = field(default_factory=dict)

    @classmethod
    def take(cls, client: redis.Redis, patterns: Iterable[str]) -> Snapshot:
        keys = sorted({k for p in patterns for k in client.scan_iter(match=p, count=1000)})
        snap = cls()
        for i in range(0, len(keys), 1000):
            pipe = client.pipeline(transaction=False)
            for key in keys[i : i + 1000]:
                pipe.dump(key)
            for key, value in zip(keys[i : i + 1000], pipe.execute(), strict=True):
                if value is not None:
                    snap.dumps[key] = value
        return snap

    def restore(self, client: redis.Redis) -> None:
        items = list(self.dumps.items())
        for i in range(0, len(items), 1000):
            pipe = client.pipeline(transaction=False)
            for key, value in items[i : i + 1000]:
                pipe.restore(key, 0, value, replace=True)
            pipe.execute()


# -- rounds -------------------------------------------------------------------------------------
def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the values themselves."""
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "values": list(values),
    }


def rotations(names_: Sequence[str], rounds: int) -> list[list[str]]:
    """The variants' order in each round: rotated, so none always goes first."""
    n = len(names_)
    return [[names_[(r + i) % n] for i in range(n)] for r in range(rounds)]


def commit_latency_ms(dsn: str, n: int = 50) -> dict[str, float]:
    """Median and p90 of a one-row INSERT + COMMIT (what a transaction waits for
    the WAL flush: the disk's fsync, unless synchronous_commit is off)."""
    import psycopg

    times = []
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (n int)")
        conn.commit()
        for i in range(n):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO bench_commit_probe VALUES (%s)", (i,))
            conn.commit()
            times.append((time.perf_counter() - t0) * 1000)
        conn.execute("DROP TABLE bench_commit_probe")
        conn.commit()
    times.sort()
    return {"median": statistics.median(times), "p90": times[int(len(times) * 0.9)]}
