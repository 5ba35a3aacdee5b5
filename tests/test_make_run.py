"""`make run` brings the whole pipeline up natively, and the README's curl ends as a
row and as a trace in the Jaeger that `make run` started (found through the URL
it printed)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import psycopg

from tests.support.procs import REPO, free_port, http_get, wait_for

# Every port scripts/run-local.sh binds, so the test never clashes with a
# `make run` (or anything else) already running on the defaults.
PORT_VARS = (
    "REDIS_PORT",
    "PG_PORT",
    "INGEST_PORT",
    "WORKER_HEALTH_PORT",
    "OTELCOL_GRPC_PORT",
    "OTELCOL_HTTP_PORT",
    "OTELCOL_HEALTH_PORT",
    "OTELCOL_PROMETHEUS_PORT",
    "OTELCOL_METRICS_PORT",
    "JAEGER_UI_PORT",
    "JAEGER_QUERY_GRPC_PORT",
    "JAEGER_HEALTH_PORT",
    "JAEGER_OTLP_GRPC_PORT",
    "JAEGER_OTLP_HTTP_PORT",
    "JAEGER_METRICS_PORT",
    "PROMETHEUS_PORT",
    "ALERTMANAGER_PORT",
)
# Variables the observability configs read: inherited values would override
# what run-local.sh sets up.
CONFIG_ENV_PREFIXES = ("OTEL_", "OTELCOL_", "JAEGER_", "PROMETHEUS_", "ALERT")


def readme_curl() -> str:
    """The sample-webhook curl command documented in the README (continuation lines joined)."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("curl ")), None)
    assert start is not None, "README.md documents no curl command"
    command = [lines[start]]
    while command[-1].endswith("\\"):
        command[-1] = command[-1][:-1]
        start += 1
        command.append(lines[start])
    return " ".join(command)


def test_make_run_starts_everything_and_a_curl_ends_as_a_row(tmp_path: Path) -> None:
    ports = {name: str(free_port()) for name in PORT_VARS}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(CONFIG_ENV_PREFIXES)},
        "RUN_DIR": str(tmp_path / "run"),
        # Spans reach the collector within 0.5s instead of the SDK's 5s.
        "OTEL_BSP_SCHEDULE_DELAY": "500",
        **ports,
    }
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "run"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: "the pipeline is up" in log.read_text() or proc.poll() is not None,
            timeout=180,
            what="make run to report the pipeline up",
        )
        assert proc.poll() is None, log.read_text()
        assert http_get(f"http://127.0.0.1:{ports['WORKER_HEALTH_PORT']}/health")[0] == 200

        curl = readme_curl().replace("127.0.0.1:8000", f"127.0.0.1:{ports['INGEST_PORT']}")
        result = subprocess.run(
            ["bash", "-c", curl], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
        assert '"status":"queued"' in result.stdout, result.stdout
        trace_id = re.search(r'"trace_id":"([0-9a-f]{32})"', result.stdout)
        assert trace_id

        dsn = f"postgresql://postgres@127.0.0.1:{ports['PG_PORT']}/wabot"

        def row() -> tuple[str, str] | None:
            with psycopg.connect(dsn) as conn:
                return conn.execute(
                    "SELECT message_id, trace_id FROM healthcare.whatsapp_messages"
                ).fetchone()

        found = wait_for(row, timeout=20, what="the curl'd message as a row")
        assert found == ("3EB0C767D26A3D2B9F1A", trace_id.group(1))

        # The trace, through the Jaeger URL `make run` printed.
        printed = re.search(r"^\s+jaeger\s+(http://\S+)", log.read_text(), re.M)
        assert printed, "make run printed no Jaeger URL"
        assert printed.group(1) == f"http://127.0.0.1:{ports['JAEGER_UI_PORT']}"

        def services_in_trace() -> set[str] | None:
            status, body = http_get(f"{printed.group(1)}/api/traces/{trace_id.group(1)}")
            if status != 200:
                return None
            trace = json.loads(body)["data"][0]
            services = {p["serviceName"] for p in trace["processes"].values()}
            names = {s["operationName"] for s in trace["spans"]}
            done = services >= {"ingest", "worker"} and "process whatsapp:inbound" in names
            return services if done else None

        wait_for(services_in_trace, timeout=30, what="the curl'd message's trace in Jaeger")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    text = log.read_text()
    assert "run: stopped" in text
    assert '"message": "shutdown complete"' in text  # the worker drained
