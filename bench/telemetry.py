"""The real observability backend of a benchmark run, and what arrived in it.

The services export OTLP to the harness' collector (committed config), which
sends spans to Jaeger and log records to VictoriaLogs. Every service process
the benchmark accounts for gets its own ``deployment.environment.name`` (a
*tag*), so what arrived from that one process can be counted:

* spans: the collector's span_metrics connector (``traces_span_metrics_calls_total``
  on its Prometheus exporter), by service and span kind: every span that went
  through the receiver and the processors, whatever happens downstream;
* log records: VictoriaLogs, ``count()`` of the tag's records: every record that
  went all the way through.

What each process *should* have sent comes from outside its telemetry: the
stream (one accepted webhook = one entry), the rows, and its stdout (each log
line is written to stdout and to OTLP by the same logging call). The
collector's own counters (receiver accepted/refused, exporter sent/failed)
are reported for the whole run.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.stack.backend import Collector, Jaeger, VictoriaLogs
from tests.support.stack.configs import Timings
from tests.support.stack.net import http_text
from tests.support.stack.process import Process

# Only what makes the counting quick and complete; the batch timeout, queue
# sizes and memory limits stay as committed.
BENCH_TIMINGS = Timings(
    collector_env={
        "OTELCOL_SPANMETRICS_FLUSH_INTERVAL": "1s",
        # Series of a process that stopped early in the run must still be there
        # at its accounting (the committed 5m would drop them).
        "OTELCOL_PROMETHEUS_METRIC_EXPIRATION": "3h",
        "OTELCOL_DEBUG_VERBOSITY": "basic",
    }
)
SPAN_KINDS = ("SERVER", "PRODUCER", "CONSUMER", "CLIENT", "INTERNAL")

_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of a text exposition (exemplars ignored)."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = {
            k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m[2] or "")
        }
        try:
            yield m[1], labels, float(m[3])
        except ValueError:
            continue


@dataclass
class Accounted:
    """One service process's telemetry: what it should have sent, what arrived."""

    service: str
    tag: str
    expected_spans: dict[str, int]
    expected_logs: int
    received_spans: dict[str, int] = field(default_factory=dict)
    received_logs: int = 0
    seconds_to_arrive: float = 0.0
    missing_logs: dict[str, int] = field(default_factory=dict)

    @property
    def lost_spans(self) -> int:
        return sum(
            max(0, n - self.received_spans.get(kind, 0)) for kind, n in self.expected_spans.items()
        )

    @property
    def lost_logs(self) -> int:
        return max(0, self.expected_logs - self.received_logs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "tag": self.tag,
            "expected_spans": self.expected_spans,
            "received_spans": self.received_spans,
            "lost_spans": self.lost_spans,
            "expected_logs": self.expected_logs,
            "received_logs": self.received_logs,
            "lost_logs": self.lost_logs,
            "missing_logs": self.missing_logs,
            "seconds_to_arrive": round(self.seconds_to_arrive, 1),
        }


def stdout_log_records(proc: Process) -> Counter[str]:
    """Log records a service wrote to stdout (JSON lines), by message, less the
    SDK's own (kept out of OTLP on purpose)."""
    return Counter(
        str(record.get("message", ""))
        for record in proc.json_logs()
        if not str(record.get("logger", "")).startswith("opentelemetry")
    )


class TelemetryBackend:
    """Jaeger, VictoriaLogs and the collector, started under ``root``."""

    def __init__(self, root: Path) -> None:
        self.jaeger = Jaeger(root)
        self.victorialogs = VictoriaLogs(root)
        self.collector = Collector(root, self.jaeger, self.victorialogs, timings=BENCH_TIMINGS)
        self.accounted: list[Accounted] = []

    @contextmanager
    def running(self) -> Iterator[TelemetryBackend]:
        started: list[Process] = []
        try:
            for proc in (self.jaeger.process, self.victorialogs.process, self.collector.process):
                proc.start()
                started.append(proc)
            yield self
        finally:
            for proc in reversed(started):
                proc.stop()

    @property
    def otlp_endpoint(self) -> str:
        return self.collector.http_endpoint

    # -- what arrived ----------------------------------------------------------
    def span_counts(self, tag: str) -> dict[str, dict[str, int]]:
        """{service: {kind: spans}} the collector passed on for ``tag``."""
        text = http_text(f"http://{self.collector.exporter_target}/metrics")
        out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for name, labels, value in parse_prometheus(text):
            if name != "traces_span_metrics_calls_total":
                continue
            if labels.get("deployment_environment_name") != tag:
                continue
            kind = labels.get("span_kind", "").removeprefix("SPAN_KIND_")
            out[labels.get("service_name", "?")][kind] += int(value)
        return {svc: dict(kinds) for svc, kinds in out.items()}

    def log_count(self, tag: str) -> int:
        """Log records VictoriaLogs holds for ``tag``."""
        query = f'_stream:{{deployment.environment.name="{tag}"}} | stats count() as n'
        body = urllib.parse.urlencode({"query": query}).encode()
        text = http_text(f"{self.victorialogs.url}/select/logsql/query", body)
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return int(rows[0]["n"]) if rows else 0

    def collector_counters(self) -> dict[str, float]:
        """The collector's receiver and exporter counters, summed per name and
        component (e.g. ``otelcol_exporter_sent_spans{otlp_grpc/jaeger}``)."""
        out: dict[str, float] = defaultdict(float)
        for name, labels, value in parse_prometheus(self.collector.self_metrics()):
            if not name.startswith(
                ("otelcol_receiver_", "otelcol_exporter_", "otelcol_processor_")
            ):
                continue
            base = name.removesuffix("_total")
            if not base.endswith(("spans", "log_records", "metric_points")):
                continue
            component = labels.get("receiver") or labels.get("exporter") or labels.get("processor")
            out[f"{base}{{{component}}}"] += value
        return dict(sorted(out.items()))

    def account(
        self,
        service: str,
        tag: str,
        expected_spans: Mapping[str, int],
        expected_logs: Counter[str],
        *,
        timeout: float = 60.0,
        settle: float = 8.0,
    ) -> Accounted:
        """Wait until what arrived for ``tag`` matches what was expected (spans
        by kind, log records as written to stdout), or has not changed for
        ``settle`` seconds (bounded by ``timeout``), and record it; log records
        missing are named by their message."""
        acc = Accounted(service, tag, dict(expected_spans), sum(expected_logs.values()))
        started = time.monotonic()
        last: tuple[Any, ...] | None = None
        last_change = started

        def complete() -> bool:
            return acc.lost_spans == 0 and acc.lost_logs == 0

        while True:
            try:
                acc.received_spans = self.span_counts(tag).get(service, {})
                acc.received_logs = self.log_count(tag)
            except OSError:
                pass
            now = time.monotonic()
            state = (tuple(sorted(acc.received_spans.items())), acc.received_logs)
            if state != last:
                last, last_change = state, now
            if complete() or now - last_change >= settle or now - started >= timeout:
                break
            time.sleep(0.5)  # polling interval, not synchronisation
        acc.seconds_to_arrive = time.monotonic() - started
        if acc.lost_logs:
            with suppress(OSError, ValueError, KeyError):
                arrived = self.log_messages(tag)
                acc.missing_logs = dict((expected_logs - arrived).most_common(10))
        self.accounted.append(acc)
        return acc

    def log_messages(self, tag: str) -> Counter[str]:
        """VictoriaLogs' records of ``tag``, counted by message."""
        query = f'_stream:{{deployment.environment.name="{tag}"}} | stats by (_msg) count() as n'
        body = urllib.parse.urlencode({"query": query}).encode()
        text = http_text(f"{self.victorialogs.url}/select/logsql/query", body)
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return Counter({str(r["_msg"]): int(r["n"]) for r in rows})

    def summary(self) -> dict[str, Any]:
        expected_spans = sum(sum(a.expected_spans.values()) for a in self.accounted)
        lost_spans = sum(a.lost_spans for a in self.accounted)
        expected_logs = sum(a.expected_logs for a in self.accounted)
        lost_logs = sum(a.lost_logs for a in self.accounted)
        received_all = sum(sum(a.received_spans.values()) for a in self.accounted)
        counters: dict[str, float] = {}
        with suppress(OSError):
            counters = self.collector_counters()
        return {
            "processes": [a.as_dict() for a in self.accounted],
            "expected_spans": expected_spans,
            "received_expected_kinds": expected_spans - lost_spans,
            "received_spans_all_kinds": received_all,
            "lost_spans": lost_spans,
            "expected_logs": expected_logs,
            "received_logs": expected_logs - lost_logs,
            "lost_logs": lost_logs,
            "collector": counters,
        }


def poll_until(
    sample: Callable[[], int], target: int, *, timeout: float, interval: float = 0.02
) -> list[tuple[float, int]]:
    """Samples (monotonic time, value) of ``sample()`` every ``interval`` until it
    reaches ``target`` or ``timeout`` passes."""
    out: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = sample()
        except OSError:
            value = out[-1][1] if out else 0
        now = time.monotonic()
        out.append((now, value))
        if value >= target or now >= deadline:
            return out
        time.sleep(interval)  # sampling interval, not synchronisation
