"""The native observability backend the acceptance tests run against.

Real binaries, started from the committed configs: the OpenTelemetry Collector
(otelcol-wabot, otel-collector/config.yaml), Jaeger v2 (jaeger/config.yaml),
Prometheus and Alertmanager (test copies of prometheus/*.yml whose only
differences from the committed files are addresses and shortened timings; the
tests verify that), plus a small HTTP server standing in for the Alertmanager
webhook receiver. Everything binds 127.0.0.1 on free ports and keeps its data
in temporary directories. Waiting is always polling with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.httpstub import StubServer
from tests.support.procs import free_port, http_get, wait_for

REPO = Path(__file__).resolve().parents[2]
COLLECTOR_DIR = REPO / "otel-collector"
JAEGER_CONFIG = REPO / "jaeger" / "config.yaml"
PROM_DIR = REPO / "prometheus"
GRAFANA_DIR = REPO / "grafana"
CACHE_BIN = Path(os.environ.get("WABOT_CACHE_DIR", Path.home() / ".cache" / "wabot")) / "bin"
BUILD_HINT = (
    "run scripts/build-otel-tools.sh (builds otelcol-wabot and jaeger into ~/.cache/wabot/bin)"
)
APT_HINT = (
    "install it with `apt-get install -y prometheus prometheus-alertmanager` "
    "(see scripts/build-otel-tools.sh)"
)

# Test timings. Production values are minutes; the tests shorten only these
# knobs (never an expression, matcher or threshold) so a failure -> alert ->
# notification round trip takes seconds.
# Exemplars: the Python SDK attaches an exemplar to the one export after the
# measurement only, and the collector's exporter shows each export until the
# next one, so Prometheus must scrape at least once per export interval
# (services under test export every 1s: OBS_METRIC_EXPORT_INTERVAL_MS).
SCRAPE_INTERVAL = "500ms"
EVALUATION_INTERVAL = "1s"
OBS_METRIC_EXPORT_INTERVAL_MS = 1000
RULE_FOR = "1s"  # every alert rule's `for:`
AM_GROUP_WAIT = "1s"
AM_GROUP_INTERVAL = "1s"
# A stopped worker's series leave the collector's exporter this long after its
# last export, so WorkerDown's `absent(...)` branch can become true quickly.
METRIC_EXPIRATION = "3s"
# Where the committed Alertmanager config sends notifications (a placeholder).
AM_WEBHOOK_PLACEHOLDER = "http://alert-webhook:9095/alerts"


# --------------------------------------------------------------- binaries ---
def find_binary(
    names: str | tuple[str, ...], hint: str, env_var: str | None = None, cached: str | None = None
) -> str:
    """Path of a tool: $env_var, then PATH, then ~/.cache/wabot/bin. Fails if missing."""
    candidates = (names,) if isinstance(names, str) else names
    if env_var and os.environ.get(env_var):
        path = Path(os.environ[env_var])
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"${env_var}={path} is not an executable file; {hint}")
        return str(path)
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    candidate = CACHE_BIN / (cached or candidates[0])
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    pytest.fail(f"`{'` / `'.join(candidates)}` not found on PATH nor as {candidate}; {hint}")


def otelcol_binary() -> str:
    """The collector built from the *current* manifest (name keyed by its hash)."""
    manifest = COLLECTOR_DIR / "manifest.yaml"
    version = yaml.safe_load(manifest.read_text())["dist"]["version"]
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:10]
    if os.environ.get("OTELCOL_BIN"):
        return find_binary("otelcol-wabot", BUILD_HINT, env_var="OTELCOL_BIN")
    path = CACHE_BIN / f"otelcol-wabot-{version}-{digest}"
    if not (path.is_file() and os.access(path, os.X_OK)):
        others = sorted(p.name for p in CACHE_BIN.glob("otelcol-wabot-*"))
        stale = f" (found only {others}: built from another manifest)" if others else ""
        pytest.fail(f"{path} is missing{stale}; {BUILD_HINT}")
    return str(path)


def jaeger_binary() -> str:
    return find_binary("jaeger", BUILD_HINT, env_var="JAEGER_BIN")


def prometheus_binary() -> str:
    return find_binary("prometheus", APT_HINT)


def alertmanager_binary() -> str:
    # Debian names it prometheus-alertmanager; upstream tarballs `alertmanager`.
    return find_binary(("prometheus-alertmanager", "alertmanager"), APT_HINT)


# ------------------------------------------------------------------- http ---
def http_text(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> str:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.read().decode())


def http_json(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    return json.loads(http_text(url, data, headers))


def base_env() -> dict[str, str]:
    """This process's environment without anything the configs or SDKs read."""
    prefixes = ("OTEL_", "OTELCOL_", "JAEGER_", "PROMETHEUS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


# -------------------------------------------------------------- processes ---
@dataclass
class NativeProcess:
    """One backend binary; stop() and start() again reuse the same ports and data."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        assert not self.alive(), f"{self.name} is already running"
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_for(
                lambda: not self.alive() or http_get(self.ready_url)[0] == 200,
                timeout=timeout,
                what=f"{self.name} to answer 200 at {self.ready_url}",
            )
        except AssertionError as exc:
            # Not left running: the fixture that started it never gets to stop it.
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None
        if not self.alive():
            assert self.proc is not None
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode} at start-up:\n{self.log_tail()}"
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout}s") from None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def ports(*names: str) -> dict[str, int]:
    return {name: free_port() for name in names}


class Jaeger:
    """Jaeger v2 with in-memory storage (a restart starts empty)."""

    def __init__(self, tmp: Path) -> None:
        self.ports = ports("otlp_grpc", "otlp_http", "query", "query_grpc", "health", "metrics")
        p = self.ports
        env = base_env() | {
            "JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{p['otlp_grpc']}",
            "JAEGER_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{p['otlp_http']}",
            "JAEGER_QUERY_HTTP_ENDPOINT": f"127.0.0.1:{p['query']}",
            "JAEGER_QUERY_GRPC_ENDPOINT": f"127.0.0.1:{p['query_grpc']}",
            "JAEGER_HEALTH_ENDPOINT": f"127.0.0.1:{p['health']}",
            "JAEGER_METRICS_HOST": "127.0.0.1",
            "JAEGER_METRICS_PORT": str(p["metrics"]),
        }
        self.process = NativeProcess(
            "jaeger",
            [jaeger_binary(), "--config", str(JAEGER_CONFIG)],
            env,
            tmp / "jaeger.log",
            f"http://127.0.0.1:{p['health']}/status",
        )

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['otlp_grpc']}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['query']}"

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The trace's spans, flattened (see :func:`jaeger_spans`); [] when unknown."""
        status, body = http_get(f"{self.query_url}/api/traces/{trace_id}")
        if status == 404:
            return []
        assert status == 200, f"GET /api/traces/{trace_id}: {status} {body[:300]!r}"
        return [s for t in json.loads(body)["data"] or [] for s in jaeger_spans(t)]

    def wait_trace(
        self, trace_id: str, *, services: set[str], min_spans: int = 1, timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Poll until the trace has ``min_spans`` spans from every one of ``services``."""
        last: list[dict[str, Any]] = []

        def complete() -> list[dict[str, Any]]:
            nonlocal last
            last = self.trace(trace_id)
            have = {s["service"] for s in last}
            return last if services <= have and len(last) >= min_spans else []

        try:
            return wait_for(complete, timeout=timeout, what=f"trace {trace_id} in Jaeger")
        except AssertionError as exc:
            seen = sorted((s["service"], s["name"]) for s in last)
            raise AssertionError(f"{exc}; spans so far: {seen}") from None

    def find_trace_ids(self, service: str, **params: str) -> set[str]:
        query = urllib.parse.urlencode({"service": service, **params})
        data = http_json(f"{self.query_url}/api/traces?{query}")["data"] or []
        return {t["traceID"] for t in data}


def jaeger_spans(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Jaeger API spans as {trace_id, span_id, parent_id (the CHILD_OF reference),
    refs [(refType, spanID)], name, service, kind, tags}."""
    out = []
    for span in trace["spans"]:
        tags = {t["key"]: t["value"] for t in span.get("tags", [])}
        refs = [(r["refType"], r["spanID"]) for r in span.get("references", [])]
        parents = [span_id for ref_type, span_id in refs if ref_type == "CHILD_OF"]
        out.append(
            {
                "trace_id": span["traceID"],
                "span_id": span["spanID"],
                "parent_id": parents[0] if parents else None,
                "refs": refs,
                "name": span["operationName"],
                "service": trace["processes"][span["processID"]]["serviceName"],
                "kind": tags.get("span.kind"),
                "tags": tags,
            }
        )
    return out


class Collector:
    """otelcol-wabot with the committed config, exporting to ``jaeger``."""

    def __init__(self, tmp: Path, jaeger: Jaeger) -> None:
        self.ports = ports("otlp_grpc", "otlp_http", "prom_exporter", "health", "self_metrics")
        p = self.ports
        self.storage_dir = tmp / "otelcol-storage"
        self.logs_file = tmp / "otelcol-logs" / "logs.jsonl"
        env = base_env() | {
            "OTELCOL_GRPC_ENDPOINT": f"127.0.0.1:{p['otlp_grpc']}",
            "OTELCOL_HTTP_ENDPOINT": f"127.0.0.1:{p['otlp_http']}",
            "JAEGER_OTLP_ENDPOINT": jaeger.otlp_grpc_endpoint,
            "PROMETHEUS_EXPORTER_ENDPOINT": f"127.0.0.1:{p['prom_exporter']}",
            "OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{p['health']}",
            "OTELCOL_METRICS_HOST": "127.0.0.1",
            "OTELCOL_METRICS_PORT": str(p["self_metrics"]),
            "OTELCOL_STORAGE_DIR": str(self.storage_dir),
            "OTELCOL_LOGS_FILE": str(self.logs_file),
            # Shortened flushes: seconds-long waits instead of 15s ones.
            "OTELCOL_SPANMETRICS_FLUSH_INTERVAL": "1s",
            "OTELCOL_BATCH_TIMEOUT": "200ms",
            "OTELCOL_PROMETHEUS_METRIC_EXPIRATION": METRIC_EXPIRATION,
        }
        self.process = NativeProcess(
            "otelcol-wabot",
            [otelcol_binary(), "--config", str(COLLECTOR_DIR / "config.yaml")],
            env,
            tmp / "otelcol.log",
            f"http://127.0.0.1:{p['health']}/",
        )

    @property
    def http_endpoint(self) -> str:
        """OTLP/HTTP base URL, as OTEL_EXPORTER_OTLP_ENDPOINT wants it."""
        return f"http://127.0.0.1:{self.ports['otlp_http']}"

    @property
    def exporter_target(self) -> str:
        return f"127.0.0.1:{self.ports['prom_exporter']}"

    @property
    def self_metrics_target(self) -> str:
        return f"127.0.0.1:{self.ports['self_metrics']}"

    def post_otlp_json(self, signal: str, body: dict[str, Any]) -> None:
        """One OTLP/HTTP JSON export request to /v1/<signal>."""
        http_text(
            f"{self.http_endpoint}/v1/{signal}",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )

    def log_records(self) -> list[dict[str, Any]]:
        """Every log record in the file exporter's output, with its resource attributes."""
        if not self.logs_file.exists():
            return []
        out = []
        for line in self.logs_file.read_text(errors="replace").splitlines():
            try:
                request = json.loads(line)
            except ValueError:  # the line being written right now
                continue
            for rl in request.get("resourceLogs", []):
                resource = otlp_attrs(rl.get("resource", {}).get("attributes", []))
                for sl in rl.get("scopeLogs", []):
                    for record in sl.get("logRecords", []):
                        out.append({**record, "resource": resource, "line": line})
        return out

    def self_metrics(self) -> str:
        return http_text(f"http://{self.self_metrics_target}/metrics")


def otlp_attrs(kvs: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP JSON attributes -> {key: plain value} (scalars only; enough here)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        value = kv.get("value", {})
        out[kv["key"]] = next(iter(value.values()), None) if value else None
    return out


# ---------------------------------------------------------------- alerting ---
def alert_rules_test_copy() -> dict[str, Any]:
    """prometheus/alerts.yml with every `for:` shortened; nothing else changes."""
    doc: dict[str, Any] = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = RULE_FOR
    return doc


def prometheus_test_config(exporter: str, self_metrics: str, alertmanager: str) -> str:
    """prometheus/prometheus.yml with the compose targets replaced and 1s intervals."""
    # Comments dropped: the header quotes the placeholders too.
    lines = (PROM_DIR / "prometheus.yml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#")) + "\n"
    for placeholder, target in (
        ("otel-collector:8889", exporter),
        ("otel-collector:8888", self_metrics),
        ("alertmanager:9093", alertmanager),
    ):
        assert text.count(f'"{placeholder}"') == 1, placeholder
        text = text.replace(f'"{placeholder}"', f'"{target}"')
    for key, value in (
        ("scrape_interval", SCRAPE_INTERVAL),
        ("scrape_timeout", SCRAPE_INTERVAL),  # may not exceed the interval
        ("evaluation_interval", EVALUATION_INTERVAL),
    ):
        text, n = re.subn(rf"^(\s*){key}: \S+$", rf"\g<1>{key}: {value}", text, flags=re.M)
        assert n == 1, f"prometheus.yml: expected exactly one (global) {key}"
    return text


def alertmanager_test_config(webhook_url: str) -> dict[str, Any]:
    """prometheus/alertmanager.yml with the webhook placeholder replaced and the
    grouping delays shortened; routes, matchers and inhibitions unchanged."""
    doc: dict[str, Any] = yaml.safe_load((PROM_DIR / "alertmanager.yml").read_text())

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", AM_GROUP_WAIT), ("group_interval", AM_GROUP_INTERVAL)):
            if key in route:
                route[key] = value
        for child in route.get("routes", []):
            shorten(child)

    shorten(doc["route"])
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook["url"] == AM_WEBHOOK_PLACEHOLDER, hook
            hook["url"] = webhook_url
    return doc


@dataclass
class Notification:
    """One webhook POST from Alertmanager (payload version 4)."""

    index: int
    body: dict[str, Any]

    def alerts(self, alertname: str, status: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.body.get("alerts", [])
            if a["labels"].get("alertname") == alertname and a["status"] == status
        ]


@dataclass
class AlertReceiver:
    """A local stand-in for the chat bridge Alertmanager's webhooks go to."""

    port: int = 0  # set from the server's free port
    received: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = StubServer(self._handle)
        self.port = self.server.port

    def _handle(self, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, str, bytes]:
        with self.lock:
            self.received.append(Notification(len(self.received), json.loads(body)))
        return 200, "application/json", b""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def start(self) -> AlertReceiver:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def mark(self) -> int:
        """A position; later waits only look at notifications after it."""
        with self.lock:
            return len(self.received)

    def notifications(self, after: int = 0) -> list[Notification]:
        with self.lock:
            return list(self.received[after:])

    def wait_for(
        self, alertname: str, status: str, *, after: int, timeout: float
    ) -> tuple[Notification, dict[str, Any]]:
        """The first notification after ``after`` carrying ``alertname`` in ``status``."""

        def found() -> tuple[Notification, dict[str, Any]] | None:
            for note in self.notifications(after):
                alerts = note.alerts(alertname, status)
                if alerts:
                    return note, alerts[0]
            return None

        try:
            result = wait_for(
                found, timeout=timeout, what=f"a {status} {alertname} notification", interval=0.2
            )
            assert result is not None
            return result
        except AssertionError as exc:
            seen = [
                (a["labels"].get("alertname"), a["status"])
                for n in self.notifications(after)
                for a in n.body.get("alerts", [])
            ]
            raise AssertionError(f"{exc}; notifications since the mark: {seen}") from None


class Alertmanager:
    """Alertmanager with a test copy of prometheus/alertmanager.yml, clustering off."""

    def __init__(self, tmp: Path, receiver: AlertReceiver) -> None:
        self.port = free_port()
        config = tmp / "alertmanager.yml"
        config.write_text(yaml.safe_dump(alertmanager_test_config(receiver.url), sort_keys=False))
        self.process = NativeProcess(
            "alertmanager",
            [
                alertmanager_binary(),
                f"--config.file={config}",
                f"--storage.path={tmp / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                # Empty = no gossip listener (it would bind 0.0.0.0:9094).
                "--cluster.listen-address=",
            ],
            base_env(),
            tmp / "alertmanager.log",
            f"http://127.0.0.1:{self.port}/-/ready",
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alerts(self) -> list[dict[str, Any]]:
        return list(http_json(f"http://{self.target}/api/v2/alerts"))


class Prometheus:
    """Prometheus scraping the collector every second, rules from a test copy."""

    def __init__(self, tmp: Path, collector: Collector, alertmanager: Alertmanager) -> None:
        self.port = free_port()
        config_dir = tmp / "prometheus"
        config_dir.mkdir()
        (config_dir / "prometheus.yml").write_text(
            prometheus_test_config(
                collector.exporter_target, collector.self_metrics_target, alertmanager.target
            )
        )
        (config_dir / "alerts.yml").write_text(
            yaml.safe_dump(alert_rules_test_copy(), sort_keys=False)
        )
        self.config_dir = config_dir
        self.process = NativeProcess(
            "prometheus",
            [
                prometheus_binary(),
                f"--config.file={config_dir / 'prometheus.yml'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                # Keeps the collector's trace-id exemplars (query_exemplars API).
                "--enable-feature=exemplar-storage",
            ],
            base_env(),
            tmp / "prometheus.log",
            f"http://127.0.0.1:{self.port}/-/ready",
        )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def get(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer."""
        url = f"{self.api}/{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(url, timeout=5)
        answer = json.loads(body)
        assert status == 200, f"{url}: {status} {answer}"
        assert answer["status"] == "success", f"{url}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result's series (a scalar counts as one)."""
        data = self.get("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def exemplars(self, expr: str, window: float = 600) -> list[dict[str, Any]]:
        now = time.time()
        return list(
            self.get("query_exemplars", query=expr, start=str(now - window), end=str(now + 60))
        )

    def wait_scraping(self, jobs: set[str], timeout: float = 30) -> None:
        """Until every job in ``jobs`` has been scraped successfully."""

        def up() -> bool:
            targets = self.get("targets", state="active")["activeTargets"]
            return jobs <= {t["labels"]["job"] for t in targets if t["health"] == "up"}

        wait_for(up, timeout=timeout, what=f"Prometheus to scrape {sorted(jobs)}", interval=0.2)

    def alert_states(self, alertname: str) -> set[str]:
        """States (pending/firing) of the alert's active instances; empty when inactive."""
        alerts = self.get("alerts")["alerts"]
        return {a["state"] for a in alerts if a["labels"]["alertname"] == alertname}

    def rules(self) -> Iterator[dict[str, Any]]:
        for group in self.get("rules")["groups"]:
            yield from group["rules"]
