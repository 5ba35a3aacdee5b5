"""`make run` brings the whole pipeline up natively, the README's curl ends as a
row, as a trace in the Jaeger it started (found through the URL it printed,
and shown by its UI in headless Chromium) and as log lines in its VictoriaLogs,
and a stop leaves nothing running: Ctrl-C with the output piped to `tee` (which
the Ctrl-C kills first), and SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.observability.test_jaeger_ui import trace_span_names
from tests.support.browser import open_trace
from tests.support.stack.env import clean_env
from tests.support.stack.net import free_port, http_get, listening, wait_for
from tests.support.stack.paths import REPO
from tests.support.stack.process import Process
from tests.support.stack.runconfig import PORTS
from tests.support.stack.servers import postgres_home
from wabot_shared import names

# Settings `make run` reads that a developer's shell may hold (its ports are
# all set below, so the test never clashes with a `make run` on the defaults).
RUN_SETTINGS = ("RUN_DIR", "PG_DATA", "RUN_OBSERVABILITY", "ALERT_WEBHOOK_URL", "WEBHOOK_SECRET")
UP = "the pipeline is up"
BACKEND_PORTS = {
    name for name in PORTS if name.startswith(("OTELCOL_", "JAEGER_", "VICTORIALOGS_"))
} | {
    "PROMETHEUS_PORT",
    "ALERTMANAGER_PORT",
    "ALERT_WEBHOOK_PORT",
    "REDIS_EXPORTER_PORT",
    "POSTGRES_EXPORTER_PORT",
}


@dataclass
class MakeRun:
    """One `make run` in its own session (so a signal can reach its whole group)."""

    process: Process
    ports: dict[str, int]
    run_dir: Path
    output: Path  # what the terminal (or tee) got
    pg_data: Path

    def signal_group(self, sig: int) -> None:
        """What a terminal does on Ctrl-C: signal every process of the foreground group."""
        os.killpg(self.process.pid, sig)

    def kill_tee(self) -> None:
        """Ctrl-C's first victim: tee, which dies at once (here: before the others
        get theirs, so `make run` surely stops with nobody reading its output)."""
        [tee] = [pid for pid, name in children(self.process.pid) if name == "tee"]
        os.kill(tee, signal.SIGINT)
        wait_for(lambda: not running(tee), timeout=10, what="tee to die of SIGINT")

    def wait_stopped(self, timeout: float = 90) -> None:
        self.process.wait(timeout)
        # Everything it started has stopped listening, and PostgreSQL is shut down.
        wait_for(
            lambda: not [name for name, port in self.ports.items() if listening(port)],
            timeout=30,
            what="every port `make run` opened to be closed",
        )
        assert not (self.pg_data / "postmaster.pid").exists(), "PostgreSQL still running"

    def log(self, name: str) -> str:
        path = self.run_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def logged(text: str, service: str, message: str) -> bool:
    """Whether ``text`` holds a JSON log record of ``service`` saying ``message``."""
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and (record.get("service"), record.get("message")) == (
                service,
                message,
            ):
                return True
    return False


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            name, rest = stat.read_text().rsplit(")", 1)
            if int(rest.split()[1]) == pid:
                found.append((int(stat.parent.name), name.split("(", 1)[1]))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def make_run(tmp_path: Path, shell: str, **env: str) -> Iterator[MakeRun]:
    ports = {name: free_port() for name in PORTS}
    run_dir = tmp_path / "run"
    output = tmp_path / "make-run.out"
    full = clean_env(
        *RUN_SETTINGS,
        RUN_DIR=str(run_dir),
        # Spans reach the collector within 0.5s instead of the SDK's 5s.
        OTEL_BSP_SCHEDULE_DELAY="500",
        **{name: str(port) for name, port in ports.items()},
        **env,
    )
    if env.get("RUN_OBSERVABILITY") == "0":
        ports = {k: v for k, v in ports.items() if k not in BACKEND_PORTS}
    run = MakeRun(
        Process(
            "make run",
            ["bash", "-c", shell.format(output=output)],
            env=full,
            log_path=tmp_path / "make-run.log",
            ready=lambda: UP in (output.read_text() if output.exists() else ""),
            ready_timeout=240,  # includes `make bootstrap`
            new_session=True,
        ),
        ports,
        run_dir,
        output,
        # Where `make run` keeps the cluster (outside a dir postgres cannot enter).
        postgres_home(run_dir),
    )
    run.process.start()
    try:
        yield run
    finally:
        if run.process.alive():
            run.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.process.wait(90)
        run.process.kill()
        if not run.pg_data.is_relative_to(tmp_path):
            shutil.rmtree(run.pg_data.parent, ignore_errors=True)


@pytest.fixture
def piped_make_run(tmp_path: Path) -> Iterator[MakeRun]:
    """`make run | tee`: Ctrl-C kills tee too, and the runner's output goes nowhere."""
    yield from make_run(tmp_path, "make run 2>&1 | tee {output}")


@pytest.fixture
def bare_make_run(tmp_path: Path) -> Iterator[MakeRun]:
    """`make run` without the observability backend, output in a file."""
    yield from make_run(tmp_path, "exec make run >{output} 2>&1", RUN_OBSERVABILITY="0")


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


def curl_the_readme_sample(run: MakeRun) -> str:
    """Run the README's curl against this `make run`; the trace id it answered."""
    curl = readme_curl().replace("127.0.0.1:8000", f"127.0.0.1:{run.ports['INGEST_PORT']}")
    result = subprocess.run(
        ["bash", "-c", curl], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert '"status":"queued"' in result.stdout, result.stdout
    trace_id = re.search(r'"trace_id":"([0-9a-f]{32})"', result.stdout)
    assert trace_id, result.stdout
    return trace_id.group(1)


def wait_row(run: MakeRun) -> tuple[str, str]:
    dsn = f"postgresql://postgres@127.0.0.1:{run.ports['PG_PORT']}/wabot"

    def row() -> tuple[str, str] | None:
        with psycopg.connect(dsn) as conn:
            return conn.execute(
                "SELECT message_id, trace_id FROM healthcare.whatsapp_messages"
            ).fetchone()

    return wait_for(row, timeout=20, what="the curl'd message as a row")


def test_make_run_starts_everything_a_curl_ends_as_a_row_and_ctrl_c_under_tee_stops_all(
    piped_make_run: MakeRun,
) -> None:
    run = piped_make_run
    assert http_get(f"http://127.0.0.1:{run.ports['WORKER_HEALTH_PORT']}/health")[0] == 200
    trace_id = curl_the_readme_sample(run)
    assert wait_row(run) == ("3EB0C767D26A3D2B9F1A", trace_id)

    # The trace, through the Jaeger URL `make run` printed.
    printed = re.search(r"^\s+jaeger\s+(http://\S+)", run.output.read_text(), re.M)
    assert printed, "make run printed no Jaeger URL"
    assert printed.group(1) == f"http://127.0.0.1:{run.ports['JAEGER_UI_PORT']}"
    process_span = names.process_span_name(names.DEFAULT_STREAM)

    def services_in_trace() -> set[str] | None:
        status, body = http_get(f"{printed.group(1)}/api/traces/{trace_id}")
        if status != 200:
            return None
        trace = json.loads(body)["data"][0]
        services = {p["serviceName"] for p in trace["processes"].values()}
        span_names = {s["operationName"] for s in trace["spans"]}
        done = services >= {"ingest", "worker"} and process_span in span_names
        return services if done else None

    wait_for(services_in_trace, timeout=30, what="the curl'd message's trace in Jaeger")

    # Its log lines, in the VictoriaLogs `make run` printed, by the trace id.
    printed = re.search(
        r"^\s+victorialogs\s+(http://\S+)/select/vmui/", run.output.read_text(), re.M
    )
    assert printed, "make run printed no VictoriaLogs URL"
    logsql = f"{printed.group(1)}/select/logsql/query?query=trace_id:{trace_id}"

    def messages() -> set[str] | None:
        status, body = http_get(logsql)
        found = {json.loads(line)["_msg"] for line in body.splitlines() if line.strip()}
        return found if status == 200 and "message processed" in found else None

    wait_for(messages, timeout=30, what="the curl'd message's log lines in VictoriaLogs")

    # The trace in the Jaeger UI `make run` serves, as a person opens it: the
    # page shows the spans of both services (screenshot kept in .artifacts/).
    assert re.search(r"^\s+jaeger\s+\S+\s+\(UI:", run.output.read_text(), re.M), (
        "make run served no Jaeger UI"
    )
    open_trace(
        f"http://127.0.0.1:{run.ports['JAEGER_UI_PORT']}",
        trace_id,
        trace_span_names(names.DEFAULT_STREAM),
        run.run_dir.parent / "make-run-jaeger-trace.png",
        run.run_dir.parent / "chromium.log",
    )

    # Redis and PostgreSQL series, scraped from their exporters.
    prometheus = f"http://127.0.0.1:{run.ports['PROMETHEUS_PORT']}/api/v1/query?query="

    def infra_series() -> set[str] | None:
        names_found = set()
        for metric in (
            "redis_memory_used_bytes",
            "redis_aof_enabled",
            "pg_up",
            "pg_stat_activity_count",
            "pg_database_size_bytes",
        ):
            status, body = http_get(prometheus + metric)
            if status == 200 and json.loads(body)["data"]["result"]:
                names_found.add(metric)
        return names_found if len(names_found) == 5 else None

    wait_for(infra_series, timeout=60, what="Redis and PostgreSQL series in Prometheus")

    # Alertmanager's notifications reach the receiver `make run` started, and
    # are printed: an alert posted to Alertmanager, routed as a critical one.
    alertmanager = f"http://127.0.0.1:{run.ports['ALERTMANAGER_PORT']}/api/v2/alerts"
    alert = [{"labels": {"alertname": "MakeRunCheck", "severity": "critical", "service": "test"}}]
    request = urllib.request.Request(
        alertmanager, json.dumps(alert).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
    wait_for(
        lambda: (
            "MakeRunCheck" in run.log("alert-webhook")
            and "alertmanager notification:" in run.output.read_text()
        ),
        timeout=60,
        what="the notification in the receiver's log and the terminal",
    )

    # Ctrl-C: tee dies first, so the runner's stop happens with its output
    # gone; still all of Redis, PostgreSQL, ingest, worker, the collector,
    # Jaeger, VictoriaLogs, Prometheus and Alertmanager stop, the services
    # gracefully.
    run.kill_tee()
    run.signal_group(signal.SIGINT)
    run.wait_stopped()
    assert logged(run.log("worker"), "worker", "shutdown complete")  # the worker drained


def test_make_run_without_observability_stops_on_sigterm(bare_make_run: MakeRun) -> None:
    run = bare_make_run
    assert not re.search(r"^\s+jaeger\s", run.output.read_text(), re.M)
    trace_id = curl_the_readme_sample(run)
    assert wait_row(run) == ("3EB0C767D26A3D2B9F1A", trace_id)
    run.process.send_signal(signal.SIGTERM)  # make forwards it to the runner
    run.wait_stopped()
    text = run.output.read_text()
    assert text.index("run: stopping...") < text.index("run: stopped")
    assert logged(text, "worker", "shutdown complete")  # the worker's log, shown and drained
