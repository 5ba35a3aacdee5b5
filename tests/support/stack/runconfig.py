"""How ``make run`` is configured (ports and switches from the environment, see
:mod:`.run`) and how it talks: a console that survives a closed stdout, and the
banner with the URLs."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

from tests.support.stack.paths import REPO
from tests.support.stack.pipeline import Stack

PORTS = {
    "REDIS_PORT": 16379,
    "PG_PORT": 15432,
    "INGEST_PORT": 8000,
    "WORKER_HEALTH_PORT": 8001,
    "OTELCOL_GRPC_PORT": 14317,
    "OTELCOL_HTTP_PORT": 14318,
    "OTELCOL_HEALTH_PORT": 13133,
    "OTELCOL_PROMETHEUS_PORT": 18889,
    "OTELCOL_METRICS_PORT": 18888,
    "JAEGER_UI_PORT": 16686,
    "JAEGER_QUERY_GRPC_PORT": 16685,
    "JAEGER_HEALTH_PORT": 13134,
    "JAEGER_OTLP_GRPC_PORT": 24317,
    "JAEGER_OTLP_HTTP_PORT": 24318,
    "JAEGER_METRICS_PORT": 14269,
    "VICTORIALOGS_PORT": 19428,
    "PROMETHEUS_PORT": 19090,
    "ALERTMANAGER_PORT": 19093,
    "ALERT_WEBHOOK_PORT": 19095,
    "REDIS_EXPORTER_PORT": 19121,
    "POSTGRES_EXPORTER_PORT": 19187,
}
# The backend's own port names (see .backend), by the variable that sets each.
JAEGER_PORT_VARS = {
    "otlp_grpc": "JAEGER_OTLP_GRPC_PORT",
    "otlp_http": "JAEGER_OTLP_HTTP_PORT",
    "query": "JAEGER_UI_PORT",
    "query_grpc": "JAEGER_QUERY_GRPC_PORT",
    "health": "JAEGER_HEALTH_PORT",
    "metrics": "JAEGER_METRICS_PORT",
}
COLLECTOR_PORT_VARS = {
    "otlp_grpc": "OTELCOL_GRPC_PORT",
    "otlp_http": "OTELCOL_HTTP_PORT",
    "prom_exporter": "OTELCOL_PROMETHEUS_PORT",
    "health": "OTELCOL_HEALTH_PORT",
    "self_metrics": "OTELCOL_METRICS_PORT",
}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Console:
    """Our stdout or stderr, written to until it breaks (a closed pipe), then
    silently dropped: nothing about stopping may depend on being able to print."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.open = True

    def write(self, data: bytes) -> None:
        with self.lock:
            if not self.open:
                return
            try:
                self.stream.buffer.write(data)
                self.stream.flush()
            except (OSError, ValueError):
                self.open = False
                # Also keeps the interpreter's own flush at exit from failing.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())

    def say(self, text: str) -> None:
        self.write((text.rstrip("\n") + "\n").encode())


OUT = Console(sys.stdout)
ERR = Console(sys.stderr)


@dataclass(frozen=True)
class Config:
    """Ports and switches, from the environment (see the module docstring)."""

    run_dir: Path
    ports: Mapping[str, int]
    observability: bool
    # Where Alertmanager posts: the caller's ALERT_WEBHOOK_URL, else the
    # receiver `make run` starts (own_alert_webhook) on ALERT_WEBHOOK_PORT.
    alert_webhook: str
    own_alert_webhook: bool
    pg_data: Path | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        ports = {}
        for name, default in PORTS.items():
            value = env.get(name, "") or str(default)
            if not value.isdigit() or not 0 < int(value) < 65536:
                fail(f"run: {name} must be a port number")
            ports[name] = int(value)
        run_dir = Path(env.get("RUN_DIR") or REPO / ".run").resolve()
        return cls(
            run_dir=run_dir,
            ports=ports,
            observability=env.get("RUN_OBSERVABILITY", "1") != "0",
            alert_webhook=env.get("ALERT_WEBHOOK_URL")
            or f"http://127.0.0.1:{ports['ALERT_WEBHOOK_PORT']}/alerts",
            own_alert_webhook=not env.get("ALERT_WEBHOOK_URL"),
            pg_data=Path(env["PG_DATA"]).resolve() if env.get("PG_DATA") else None,
        )


def fail(message: str) -> NoReturn:
    ERR.say(message)
    raise SystemExit(1)


def jaeger_line(url: str, ui_assets: Path | None) -> str:
    if ui_assets is not None:
        return f"  jaeger        {url}   (UI: /trace/<trace_id>; API: /api/traces/<trace_id>)"
    return (
        f"  jaeger        {url}   (API only: /api/traces/<trace_id>, /api/traces?service=worker;\n"
        "                no UI: this Jaeger was built with `go install`, which has no UI assets.\n"
        "                Set JAEGER_UI_ASSETS to a jaeger-ui build (default ../shared/jaeger-ui),\n"
        "                or run the compose stack, whose Jaeger image has the UI)"
    )


def banner(config: Config, stack: Stack, endpoint: str | None, ui_assets: Path | None) -> str:
    p = config.ports
    lines = [
        "run: the pipeline is up",
        f"  ingest   http://127.0.0.1:{p['INGEST_PORT']}   "
        "(POST /webhooks/evolution, GET /health, /ready)",
        f"  worker   http://127.0.0.1:{p['WORKER_HEALTH_PORT']}/health",
        f"  redis    {stack.redis.url}",
        f"  postgres {stack.dsn}",
    ]
    if config.observability:
        victorialogs = f"http://127.0.0.1:{p['VICTORIALOGS_PORT']}"
        lines += [
            jaeger_line(f"http://127.0.0.1:{p['JAEGER_UI_PORT']}", ui_assets),
            f"  victorialogs  {victorialogs}/select/vmui/   (logs UI; query trace_id:<trace_id>; "
            f"API: {victorialogs}/select/logsql/query?query=trace_id:<trace_id>)",
            f"  prometheus    http://127.0.0.1:{p['PROMETHEUS_PORT']}   "
            "(alerts: /alerts; exemplar storage on; scrapes the collector and the Redis "
            f"(:{p['REDIS_EXPORTER_PORT']}) and PostgreSQL (:{p['POSTGRES_EXPORTER_PORT']}) "
            "exporters)",
            f"  alertmanager  http://127.0.0.1:{p['ALERTMANAGER_PORT']}   "
            "(API only: /api/v2/alerts, /api/v2/silences, or amtool; Debian's build has no "
            "web UI)",
            f"  notifications {config.alert_webhook}   "
            + (
                f"(printed here and in {config.run_dir / 'logs' / 'alert-webhook.log'})"
                if config.own_alert_webhook
                else "(ALERT_WEBHOOK_URL)"
            ),
            f"  collector     http://127.0.0.1:{p['OTELCOL_HEALTH_PORT']}/   "
            f"(health; OTLP http://127.0.0.1:{p['OTELCOL_HTTP_PORT']}, "
            f"grpc 127.0.0.1:{p['OTELCOL_GRPC_PORT']})",
            f"  services export OTLP to {endpoint}",
        ]
    lines += [
        f"  logs     {config.run_dir / 'logs'}",
        "Send a sample webhook:",
        f"  curl -sS -X POST http://127.0.0.1:{p['INGEST_PORT']}/webhooks/evolution \\",
        f"    -H 'Content-Type: application/json' -H 'X-Webhook-Secret: {stack.secret}' \\",
        "    --data @../shared/evolution-webhooks/messages-upsert-text.json",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)
