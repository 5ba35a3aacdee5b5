"""The harness itself (tests/support/stack/): a failed start leaves nothing
running, the rendered ops configs point at local ports only, the console of
`make run` survives a closed pipe, and children never inherit OTEL_*."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.stack import configs
from tests.support.stack.env import clean_env, pipeline_env
from tests.support.stack.net import wait_for
from tests.support.stack.paths import PROM_DIR
from tests.support.stack.process import Process, StartError, stop_together
from tests.support.stack.queue import QueueView
from tests.support.stack.runconfig import Console
from tests.support.stack.servers import RedisServer


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: it no longer runs.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def sleeper(tmp_path: Path, *, ready: bool) -> Process:
    return Process(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env=clean_env(),
        log_path=tmp_path / "sleeper.log",
        ready=lambda: ready,
        ready_timeout=0.5,
    )


def test_a_process_that_never_gets_ready_is_killed(tmp_path: Path) -> None:
    process = sleeper(tmp_path, ready=False)
    with pytest.raises(StartError, match="sleeper to be ready"):
        process.start()
    assert process.returncode == -signal.SIGKILL
    assert not process.alive()


def test_a_process_that_exits_at_start_up_fails_with_its_log(tmp_path: Path) -> None:
    process = Process(
        "quitter",
        [sys.executable, "-c", "print('no config'); raise SystemExit(3)"],
        env=clean_env(),
        log_path=tmp_path / "quitter.log",
        ready=lambda: False,
    )
    with pytest.raises(StartError, match=r"exited with 3 at start-up:\nno config"):
        process.start()


def test_killing_a_process_with_its_own_session_kills_what_it_started(tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    process = Process(
        "parent",
        ["bash", "-c", f"sleep 60 & echo $! > {child}; wait"],
        env=clean_env(),
        log_path=tmp_path / "parent.log",
        ready=lambda: child.exists() and child.read_text().strip() != "",
        new_session=True,
    ).start()
    grandchild = int(child.read_text())
    process.kill()
    assert not alive(process.pid)
    # SIGKILL is delivered asynchronously: the grandchild dies a moment later.
    wait_for(lambda: not alive(grandchild), timeout=5, what="the grandchild to be killed")


def test_stop_together_signals_all_and_kills_what_overstays(tmp_path: Path) -> None:
    polite = sleeper(tmp_path, ready=True).start()
    stubborn = Process(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(15, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        env=clean_env(),
        log_path=tmp_path / "stubborn.log",
        ready=lambda: "ready" in (tmp_path / "stubborn.log").read_text(),
    ).start()
    assert stop_together([polite, stubborn], timeout=1) == [stubborn]
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL


def test_children_never_inherit_telemetry_or_backend_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_SDK_DISABLED", "OTELCOL_BIN", "JAEGER_BIN", "PROMETHEUS_BIN"):
        monkeypatch.setenv(name, "x")
    env = clean_env("HOME", KEPT="1")
    assert not [k for k in env if k.startswith(("OTEL", "JAEGER_", "PROMETHEUS_"))]
    assert "HOME" not in env
    assert env["KEPT"] == "1"
    quiet = pipeline_env(
        redis_url="redis://r",
        database_url="postgresql://d",
        webhook_secret="s",
        app_env="test",
        otlp_endpoint=None,
    )
    assert quiet["OTEL_TRACES_EXPORTER"] == "none"


def test_rendered_prometheus_config_targets_only_local_ports(tmp_path: Path) -> None:
    config = configs.write_prometheus_dir(
        tmp_path,
        exporter="127.0.0.1:1001",
        self_metrics="127.0.0.1:1002",
        alertmanager="127.0.0.1:1003",
        timings=configs.TEST_TIMINGS,
    )
    doc = yaml.safe_load(config.read_text())
    targets = {
        t
        for section in doc["scrape_configs"] + doc["alerting"]["alertmanagers"]
        for static in section["static_configs"]
        for t in static["targets"]
    }
    assert targets == {"127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003"}
    assert doc["global"]["scrape_interval"] == configs.SCRAPE_INTERVAL
    # Every rule file the committed config loads is next to the copy.
    for rule_file in configs.rule_files():
        copy = yaml.safe_load((tmp_path / rule_file.relative_to(PROM_DIR)).read_text())
        alerts = [r for g in copy["groups"] for r in g["rules"] if "for" in r]
        assert all(r["for"] == configs.RULE_FOR for r in alerts)


def test_committed_timings_copy_the_rule_files_unchanged(tmp_path: Path) -> None:
    configs.write_prometheus_dir(tmp_path, exporter="a:1", self_metrics="a:2", alertmanager="a:3")
    for rule_file in configs.rule_files():
        assert (tmp_path / rule_file.relative_to(PROM_DIR)).read_text() == rule_file.read_text()


def test_rendered_alertmanager_config_posts_to_the_given_url() -> None:
    doc = configs.alertmanager_config("http://127.0.0.1:9/alerts")
    urls = {h["url"] for r in doc["receivers"] for h in r.get("webhook_configs", [])}
    assert urls == {"http://127.0.0.1:9/alerts"}


def test_console_survives_a_closed_pipe() -> None:
    read, write = os.pipe()
    with os.fdopen(write, "w") as stream:
        console = Console(stream)
        console.say("first")
        assert os.read(read, 100) == b"first\n"
        os.close(read)  # the reader (tee) is gone
        console.say("stopping...")  # EPIPE: dropped, not raised
        console.say("stopped")
        assert not console.open


def test_queue_view_sums_over_the_partitions(redis_server: RedisServer) -> None:
    stream = "harness:" + uuid.uuid4().hex[:8]
    queue = QueueView.at(redis_server.url, stream, partitions=3)
    assert (queue.length(), queue.pending(), queue.lag()) == (0, 0, 0)  # nothing exists yet
    first = queue.xadd({"n": "1"}, partition=0)
    queue.xadd({"n": "2"}, partition=2)
    assert queue.length() == 2
    assert queue.entry(first) == {"n": "1"}
    assert [fields["n"] for _, fields in queue.entries()] == ["1", "2"]
