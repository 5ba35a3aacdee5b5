"""``make run``: the whole pipeline natively on this machine.

Starts redis-server, PostgreSQL, the migrations, ingest and worker, plus the
observability backend (OpenTelemetry Collector, Jaeger, VictoriaLogs,
Prometheus, Alertmanager) with the committed configs, keeping data in ``$RUN_DIR``
(``.run``) between runs, and prints the URLs. The services' logs are shown
here and kept in ``$RUN_DIR/logs``. Ctrl-C (or SIGTERM) stops everything
gracefully: ingest and worker first (they drain and flush their telemetry
while Redis, PostgreSQL and the collector still run), then the collector and
Prometheus, then the rest. The children run in their own sessions, so a
Ctrl-C reaches them once, from here (a second signal would make the worker
skip its drain), and the stop still happens when this process's output is
gone (``make run | tee run.log``, then Ctrl-C, kills ``tee``).

Ports (all on 127.0.0.1) and other overrides, with their defaults:
  REDIS_PORT 16379  PG_PORT 15432  INGEST_PORT 8000  WORKER_HEALTH_PORT 8001
  OTELCOL_GRPC_PORT 14317  OTELCOL_HTTP_PORT 14318   collector OTLP receivers
  OTELCOL_HEALTH_PORT 13133                          collector health check
  OTELCOL_PROMETHEUS_PORT 18889                      app + span metrics (scraped)
  OTELCOL_METRICS_PORT 18888                         collector self-metrics
  JAEGER_UI_PORT 16686  JAEGER_QUERY_GRPC_PORT 16685  JAEGER_HEALTH_PORT 13134
  JAEGER_OTLP_GRPC_PORT 24317  JAEGER_OTLP_HTTP_PORT 24318  JAEGER_METRICS_PORT 14269
  VICTORIALOGS_PORT 19428                            log store (UI /select/vmui/)
  PROMETHEUS_PORT 19090  ALERTMANAGER_PORT 19093
  REDIS_EXPORTER_PORT 19121  POSTGRES_EXPORTER_PORT 19187  (scraped by Prometheus)
  ALERT_WEBHOOK_PORT 19095  the notification receiver `make run` starts
                      (prometheus/alert-webhook.py: prints each notification)
  JAEGER_UI_ASSETS    a jaeger-ui build for Jaeger to serve (default
                      ../shared/jaeger-ui when present; without one the
                      natively built Jaeger answers its API only)
  ALERT_WEBHOOK_URL   where Alertmanager posts notifications instead (then no
                      receiver is started)
  RUN_OBSERVABILITY=0 skip the observability backend (telemetry then goes to
                      OTEL_EXPORTER_OTLP_ENDPOINT if set, else nowhere)
  RUN_DIR (.run), PG_DATA (data directory of the cluster, default $RUN_DIR/pg)
  APP_ENV (development), WEBHOOK_SECRET (dev-secret), INGEST_HOST and
  WORKER_HEALTH_HOST (127.0.0.1), and any other setting or OTEL_* variable,
  which the services read as usual
  OTELCOL_BIN, JAEGER_BIN, VICTORIALOGS_BIN (default ~/.cache/wabot/bin, built
  by scripts/build-otel-tools.sh), PROMETHEUS_BIN, ALERTMANAGER_BIN
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from types import FrameType
from typing import NamedTuple

from tests.support.stack.alerting import Alertmanager, Prometheus
from tests.support.stack.backend import Collector, Jaeger, VictoriaLogs
from tests.support.stack.env import NO_EXPORT, clean_env
from tests.support.stack.exporters import PostgresExporter, RedisExporter
from tests.support.stack.paths import PROM_DIR, MissingTool
from tests.support.stack.pipeline import Stack
from tests.support.stack.process import Process, StartError, stop_together
from tests.support.stack.runconfig import (
    COLLECTOR_PORT_VARS,
    ERR,
    JAEGER_PORT_VARS,
    OUT,
    STOP_SIGNALS,
    Config,
    banner,
    fail,
)
from tests.support.stack.servers import PostgresServer, RedisServer, postgres_home
from tests.support.stack.services import run_migrate
from wabot_shared import names


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


class Backend(NamedTuple):
    jaeger: Jaeger
    victorialogs: VictoriaLogs
    collector: Collector
    alert_webhook: Process | None
    alertmanager: Alertmanager
    redis_exporter: RedisExporter
    postgres_exporter: PostgresExporter
    prometheus: Prometheus

    def processes(self) -> list[Process]:
        return [p.process if not isinstance(p, Process) else p for p in self if p is not None]


def alert_webhook(config: Config) -> Process:
    """prometheus/alert-webhook.py (compose's receiver too) on 127.0.0.1: each
    notification as a JSON line in its log and, prefixed, on our terminal."""
    port = config.ports["ALERT_WEBHOOK_PORT"]
    return Process(
        "alert-webhook",
        [sys.executable, "-u", str(PROM_DIR / "alert-webhook.py")],
        env=clean_env(ALERT_WEBHOOK_HOST="127.0.0.1", ALERT_WEBHOOK_PORT=str(port)),
        log_path=config.run_dir / "logs" / "alert-webhook.log",
        ready=f"http://127.0.0.1:{port}/",
        new_session=True,
        echo=lambda line: OUT.write(b"alertmanager notification: " + line),
    )


def backend(config: Config) -> Backend:
    """The observability backend on the configured ports (not started)."""
    p, root = config.ports, config.run_dir
    jaeger = Jaeger(
        root, ports={k: p[var] for k, var in JAEGER_PORT_VARS.items()}, new_session=True
    )
    victorialogs = VictoriaLogs(root, port=p["VICTORIALOGS_PORT"], new_session=True)
    collector = Collector(
        root,
        jaeger,
        victorialogs,
        ports={k: p[var] for k, var in COLLECTOR_PORT_VARS.items()},
        new_session=True,
    )
    alertmanager = Alertmanager(
        root, config.alert_webhook, port=p["ALERTMANAGER_PORT"], new_session=True
    )
    redis_exporter = RedisExporter(
        root,
        f"redis://127.0.0.1:{p['REDIS_PORT']}",
        port=p["REDIS_EXPORTER_PORT"],
        new_session=True,
    )
    postgres_exporter = PostgresExporter(
        root,
        f"postgresql://postgres@127.0.0.1:{p['PG_PORT']}/wabot",
        port=p["POSTGRES_EXPORTER_PORT"],
        new_session=True,
    )
    prometheus = Prometheus(
        root,
        collector,
        alertmanager,
        port=p["PROMETHEUS_PORT"],
        redis_exporter=redis_exporter.target,
        postgres_exporter=postgres_exporter.target,
        new_session=True,
    )
    return Backend(
        jaeger,
        victorialogs,
        collector,
        alert_webhook(config) if config.own_alert_webhook else None,
        alertmanager,
        redis_exporter,
        postgres_exporter,
        prometheus,
    )


def service_settings(env: Mapping[str, str], collector: Collector | None) -> dict[str, str]:
    """What ``make run`` sets for ingest and worker on top of the caller's environment."""
    settings = {
        "INGEST_HOST": env.get("INGEST_HOST") or "127.0.0.1",
        "WORKER_HEALTH_HOST": env.get("WORKER_HEALTH_HOST") or "127.0.0.1",
    }
    if collector is not None:
        # Exemplars (trace ids on latency buckets) stay in the collector's exporter
        # for one export interval only; twice Prometheus' 15s scrape interval makes
        # sure each one is scraped, and dashboards are fresher than with 60s.
        settings["OTEL_METRIC_EXPORT_INTERVAL"] = env.get("OTEL_METRIC_EXPORT_INTERVAL", "30000")
    # The caller's own choice of exporters wins over "none" without an endpoint.
    settings.update({k: env[k] for k in NO_EXPORT if k in env})
    return settings


def otlp_endpoint(env: Mapping[str, str], collector: Collector | None) -> str | None:
    """The caller's endpoint, else our collector's (its gRPC port only if the
    services were asked to speak gRPC)."""
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or collector is None:
        return env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    grpc = env.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc"
    return collector.grpc_endpoint if grpc else collector.http_endpoint


def start(config: Config, env: Mapping[str, str], started: list[list[Process]]) -> Stack:
    """Everything, in dependency order; each process goes into ``started`` (its stop
    stage: services, then collector and Prometheus, then the rest) once launched."""
    apps: list[Process] = []
    first: list[Process] = []
    last: list[Process] = []
    started[:] = [apps, first, last]
    logs = config.run_dir / "logs"
    p = config.ports
    # Every binary is looked up before anything starts.
    redis = RedisServer(
        p["REDIS_PORT"], config.run_dir / "redis", logs / "redis.log", new_session=True
    )
    pg_dir = config.pg_data or postgres_home(config.run_dir)
    pg = PostgresServer(
        p["PG_PORT"],
        pg_dir,
        data=pg_dir,
        log_path=logs / "postgres.log",
        durable=True,
        new_session=True,
    )
    parts = backend(config) if config.observability else None

    config.run_dir.joinpath("redis").mkdir(parents=True, exist_ok=True)
    last.append(redis.process)
    redis.start()
    if parts is not None:
        # Stopped after the services: the collector (flushing their last
        # telemetry to the stores, which stop after it) and Prometheus.
        for process in parts.processes():
            stage = (
                first if process in (parts.collector.process, parts.prometheus.process) else last
            )
            stage.append(process)
            process.start(wait=False)
    last.append(pg.process)
    pg.init().start()
    dsn = pg.ensure_database("wabot")
    if parts is not None:
        # Up before the services start exporting, so their first spans are kept.
        for process in parts.processes():
            process.wait_ready()

    migrated = run_migrate(dsn)
    OUT.write((migrated.stdout + migrated.stderr).encode())
    if migrated.returncode != 0:
        fail(f"run: migrate failed with exit code {migrated.returncode}")

    collector_ = parts.collector if parts is not None else None
    endpoint = otlp_endpoint(env, collector_)
    stack = Stack(
        logs,
        redis,
        dsn,
        None,
        secret=env.get("WEBHOOK_SECRET") or "dev-secret",
        app_env=env.get("APP_ENV") or "development",
        stream=env.get("STREAM_NAME") or names.DEFAULT_STREAM,
        settings=service_settings(env, collector_),
        otlp_endpoint=endpoint,
        base_env=env,
        echo=OUT.write,
        new_session=True,
    )
    stack.services = apps  # the services it starts are stopped first, whatever happens
    ingest = stack.start_ingest(p["INGEST_PORT"])
    stack.start_worker(
        env.get("WORKER_CONSUMER_NAME") or socket.gethostname(),
        port=p["WORKER_HEALTH_PORT"],
        healthy=True,
    )
    assert ingest.alive(), f"ingest exited:\n{ingest.log_tail()}"
    OUT.say(banner(config, stack, endpoint, parts.jaeger.ui_assets if parts else None))
    return stack


def stop(stages: list[list[Process]], budget: float) -> None:
    """Stop each stage after the one before it has exited (killing what overstays)."""
    for stage in stages:
        for process in stop_together(stage, budget):
            ERR.say(f"run: {process.name} ignored its stop signal for {budget:.0f}s; killed")


def main() -> int:
    env = dict(os.environ)
    config = Config.from_env(env)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Stop(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    stages: list[list[Process]] = []
    code = 0
    try:
        start(config, env, stages)
        # Until a signal (Stop) or one of the processes exits by itself.
        while True:
            dead = [p for stage in stages for p in stage if not p.alive()]
            if dead:
                ERR.say(
                    f"run: {dead[0].name} exited with code {dead[0].returncode} "
                    f"(logs in {config.run_dir / 'logs'}); stopping the rest"
                )
                code = 1
                break
            time.sleep(0.5)  # liveness poll interval
    except Stop:
        pass
    except (MissingTool, StartError) as exc:
        ERR.say(f"run: {exc}")
        code = 1
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        # A second Ctrl-C must not interrupt the stop: the children never see it.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        OUT.say("run: stopping...")
        budget = float(env.get("SHUTDOWN_TIMEOUT") or 20) + 10
        stop(stages, budget)
        OUT.say("run: stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
