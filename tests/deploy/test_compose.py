"""docker-compose.yml, as Docker Compose itself reads it (``docker compose
config``; no engine needed), against what it must agree with:

* it is valid Compose (and Compose refuses a misspelt key or a wrong
  condition), every variable has a default, a set variable wins;
* every variable set for ingest/worker/migrate is a real setting of that
  service (or OTEL_*), every required setting is provided, and the settings
  load from that environment;
* host names and ports agree: Prometheus targets, the Alertmanager target and
  its webhook receiver, Grafana datasources, the services' OTLP endpoint, the
  collector's Jaeger exporter, DSNs, published ports and healthcheck URLs all
  name compose services and ports those services listen on (the collector's
  and Jaeger's ports as their own ``print-config`` resolves them with the
  compose environment);
* healthchecks, one-shot services, depends_on conditions, stop_grace_period >
  SHUTDOWN_TIMEOUT; the ingest and alert-webhook healthchecks and the
  alert-webhook receiver are run against local servers.

Images and their versions: test_versions.py. Fast and offline: nothing leaves
127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.files import (
    APP_SETTINGS,
    COLLECTOR_CONFIG,
    COMPOSE_FILE,
    DOCKERFILE,
    GRAFANA_DIR,
    JAEGER_CONFIG,
    PROM_DIR,
    REPO,
    all_env_names,
    assert_console_script,
    bind_target,
    collector_config,
    collector_ports,
    command_of,
    compose_config,
    docker_compose,
    effective,
    env_of,
    env_refs,
    flag_value,
    healthcheck_argv,
    jaeger_ports,
    load_settings_from,
    parse_duration,
    port_of,
    published_ports,
    required_env_names,
    services,
    versions,
)
from tests.support.stack.configs import LOG_RETENTION, METRICS_RETENTION
from tests.support.stack.env import clean_env
from tests.support.stack.net import free_port
from tests.support.stack.process import Process
from wabot_ingest.settings import IngestSettings
from wabot_worker.settings import WorkerSettings

ONE_SHOT = {"migrate", "otel-collector-init"}
# Long-running services that cannot have a container healthcheck, and why.
NO_HEALTHCHECK = {
    "otel-collector": "the contrib image is FROM scratch: no shell, no HTTP client to probe with",
}
EXPECTED_SERVICES = {
    "redis",
    "postgres",
    "migrate",
    "ingest",
    "worker",
    "otel-collector-init",
    "otel-collector",
    "jaeger",
    "victorialogs",
    "redis-exporter",
    "postgres-exporter",
    "prometheus",
    "alertmanager",
    "alert-webhook",
    "grafana",
}


ALERT_WEBHOOK = PROM_DIR / "alert-webhook.py"


def alert_webhook_script() -> Path:
    """The receiver's script: prometheus/alert-webhook.py, mounted and run."""
    svc = services()["alert-webhook"]
    cmd = command_of(svc)
    assert cmd[:2] == ["python", "-u"], cmd
    assert cmd[2] == bind_target(svc, ALERT_WEBHOOK), cmd
    return ALERT_WEBHOOK


def alert_webhook_port() -> int:
    env = env_of(services()["alert-webhook"])
    assert env.get("ALERT_WEBHOOK_HOST", "0.0.0.0") == "0.0.0.0", "other containers post to it"
    return int(env.get("ALERT_WEBHOOK_PORT", "9095"))


def listen_ports() -> dict[str, set[int]]:
    """The ports each compose service listens on inside its container."""
    svcs = services()
    prom_addr = flag_value(command_of(svcs["prometheus"]), "--web.listen-address")
    am_addr = flag_value(command_of(svcs["alertmanager"]), "--web.listen-address")
    redis_port = flag_value(command_of(svcs["redis"]), "--port")
    vl_addr = flag_value(command_of(svcs["victorialogs"]), "-httpListenAddr")
    return {
        "otel-collector": set(collector_ports(env_of(svcs["otel-collector"])).values()),
        "jaeger": set(jaeger_ports(env_of(svcs["jaeger"])).values()),
        "prometheus": {port_of(prom_addr) if prom_addr else 9090},
        "alertmanager": {port_of(am_addr) if am_addr else 9093},
        "alert-webhook": {alert_webhook_port()},
        "victorialogs": {port_of(vl_addr) if vl_addr else 9428},
        "redis-exporter": {
            port_of(
                flag_value(command_of(svcs["redis-exporter"]), "-web.listen-address") or ":9121"
            )
        },
        "postgres-exporter": {
            port_of(
                flag_value(command_of(svcs["postgres-exporter"]), "--web.listen-address") or ":9187"
            )
        },
        "grafana": {int(env_of(svcs["grafana"]).get("GF_SERVER_HTTP_PORT", 3000))},
        "redis": {int(redis_port or 6379)},
        "postgres": {int(env_of(svcs["postgres"]).get("PGPORT", 5432))},
        "ingest": {int(effective(IngestSettings, env_of(svcs["ingest"]), "INGEST_PORT"))},
        "worker": {int(effective(WorkerSettings, env_of(svcs["worker"]), "WORKER_HEALTH_PORT"))},
    }


@contextmanager
def answering(status: int) -> Iterator[int]:
    """A local server answering every GET with ``status``; its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def run_python_healthcheck(argv: list[str], real_port: int, test_port: int) -> int:
    """Run a `python -c` healthcheck with its port pointed at a local test server."""
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2].replace(f":{real_port}/", f":{test_port}/")
    assert code != argv[2], f"healthcheck does not use port {real_port}"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=30, check=False
    )
    return proc.returncode


# ---------------------------------------------------------------- the file ---
def test_compose_validates_and_compose_refuses_mistakes(tmp_path: Path) -> None:
    assert docker_compose("config", "--quiet").returncode == 0
    committed = COMPOSE_FILE.read_text()
    for broken, error in (
        (committed.replace("    healthcheck:", "    helthcheck:", 1), "'helthcheck' not allowed"),
        (
            committed.replace("condition: service_healthy", "condition: service_done", 1),
            "condition value must be one of",
        ),
    ):
        assert broken != committed
        path = tmp_path / "docker-compose.yml"
        path.write_text(broken)
        proc = docker_compose("config", "--quiet", file=path)
        assert proc.returncode != 0
        assert error in proc.stderr, proc.stderr


def test_compose_has_the_expected_services_and_every_variable_has_a_default() -> None:
    assert set(services()) == EXPECTED_SERVICES
    proc = docker_compose("config", "--variables", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    variables = json.loads(proc.stdout)
    assert variables, "the compose file reads no variable at all?"
    for name, spec in variables.items():
        assert spec["DefaultValue"], f"{name} has no default"
        assert not spec["Required"], f"{name} is required"
    # Defaults work for development; a set variable wins.
    assert env_of(services()["ingest"])["WEBHOOK_SECRET"] == "dev-secret"
    overridden = compose_config(env={"WEBHOOK_SECRET": "s" * 20})
    assert overridden["services"]["ingest"]["environment"]["WEBHOOK_SECRET"] == "s" * 20


def test_app_services_share_one_image_built_from_the_dockerfile() -> None:
    svcs = services()
    images = set()
    for name in APP_SETTINGS:
        build = svcs[name]["build"]
        assert Path(build["context"]).resolve() == REPO, name
        assert (Path(build["context"]) / build.get("dockerfile", "Dockerfile")) == DOCKERFILE
        images.add(svcs[name]["image"])
    assert len(images) == 1, f"ingest, worker and migrate should share one image: {images}"


def test_bind_mounts_exist_and_named_volumes_are_declared() -> None:
    doc = compose_config()
    declared = set(doc.get("volumes") or {})
    used = set()
    binds = 0
    for name, svc in doc["services"].items():
        for mount in svc.get("volumes", []):
            assert mount["target"].startswith("/"), f"{name}: {mount}"
            if mount["type"] == "bind":
                binds += 1
                source = Path(mount["source"])
                # Compose would create a missing host path as an empty directory.
                assert source.exists(), f"{name}: {source} does not exist"
                assert source.resolve().is_relative_to(REPO), f"{name}: {source} outside the repo"
            else:
                assert mount["type"] == "volume", f"{name}: {mount}"
                assert mount["source"] in declared, f"{name}: volume {mount['source']} undeclared"
                used.add(mount["source"])
    assert binds >= 7
    assert declared == used, f"declared but unused volumes: {declared - used}"


# ------------------------------------------------------------ the services ---
def test_app_environment_uses_real_setting_names_and_provides_required_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svcs = services()
    for name, model in APP_SETTINGS.items():
        env = env_of(svcs[name])
        known = all_env_names(model)
        unknown = {k for k in env if k not in known and not k.startswith("OTEL_")}
        assert not unknown, f"{name}: not settings of {model.__name__}: {sorted(unknown)}"
        missing = required_env_names(model) - set(env)
        assert not missing, f"{name}: required settings not set: {sorted(missing)}"
        # They really load (types, validators, development secret rules).
        with monkeypatch.context() as mp:
            settings = load_settings_from(model, env, mp)
        assert settings.app_env == "development"


def test_app_services_commands_and_telemetry() -> None:
    svcs = services()
    collector = collector_ports(env_of(svcs["otel-collector"]))
    for name in APP_SETTINGS:
        cmd = command_of(svcs[name])
        assert cmd[:1] == [name], f"{name}: command {cmd}"
        assert_console_script(cmd[0])
    for name in ("ingest", "worker"):
        env = env_of(svcs[name])
        assert env["OTEL_SERVICE_NAME"] == name
        assert env["APP_ENV"] == "development"
        endpoint = urllib.parse.urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert endpoint.scheme == "http"
        assert endpoint.hostname == "otel-collector"
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        wanted = collector["otlp_grpc"] if protocol == "grpc" else collector["otlp_http"]
        assert endpoint.port == wanted, f"{name}: {endpoint.port} but collector has {wanted}"


def test_dsns_point_at_the_compose_data_services() -> None:
    svcs = services()
    pg_env = env_of(svcs["postgres"])
    ports = listen_ports()
    for name in ("ingest", "worker", "migrate"):
        env = env_of(svcs[name])
        dsn = urllib.parse.urlsplit(env["DATABASE_URL"])
        assert dsn.scheme in {"postgresql", "postgres"}
        assert dsn.hostname == "postgres", name
        assert dsn.port in ports["postgres"], name
        assert dsn.username == pg_env["POSTGRES_USER"]
        assert dsn.password == pg_env["POSTGRES_PASSWORD"]
        assert dsn.path.lstrip("/") == pg_env["POSTGRES_DB"]
        assert f"-d {pg_env['POSTGRES_DB']}" in svcs["postgres"]["healthcheck"]["test"][1]
        if name != "migrate":
            redis = urllib.parse.urlsplit(env["REDIS_URL"])
            assert redis.scheme == "redis"
            assert redis.hostname == "redis", name
            assert redis.port in ports["redis"], name


def test_redis_persists_with_aof_and_data_services_have_volumes() -> None:
    svcs = services()
    assert flag_value(command_of(svcs["redis"]), "--appendonly") == "yes"
    assert healthcheck_argv(svcs["redis"]) == ["redis-cli", "ping"]
    assert svcs["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert svcs["postgres"]["healthcheck"]["test"][1].startswith("pg_isready ")
    targets = {
        name: {m["target"] for m in svcs[name]["volumes"] if m["type"] == "volume"}
        for name in ("redis", "postgres", "prometheus", "alertmanager", "grafana")
    }
    assert "/data" in targets["redis"]
    assert "/var/lib/postgresql/data" in targets["postgres"]
    prom_cmd = command_of(svcs["prometheus"])
    assert flag_value(prom_cmd, "--storage.tsdb.path") in targets["prometheus"]
    assert flag_value(command_of(svcs["alertmanager"]), "--storage.path") in targets["alertmanager"]
    assert "/var/lib/grafana" in targets["grafana"]


def test_depends_on_conditions_and_one_shot_services() -> None:
    svcs = services()
    for name, svc in svcs.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep} healthy: none"
            if spec["condition"] == "service_completed_successfully":
                assert dep in ONE_SHOT, f"{name} waits for long-running {dep} to complete"
    for name in ONE_SHOT:
        assert svcs[name].get("restart", "no") == "no", f"{name} is one-shot"
    for name in ("ingest", "worker"):
        deps = svcs[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert svcs["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    collector_deps = svcs["otel-collector"]["depends_on"]
    assert collector_deps["otel-collector-init"]["condition"] == "service_completed_successfully"


def test_every_long_running_service_has_a_healthcheck() -> None:
    svcs = services()
    for name in sorted(set(svcs) - ONE_SHOT):
        svc = svcs[name]
        assert svc.get("restart") == "unless-stopped", f"{name}: restart policy"
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in svc
            continue
        assert "healthcheck" in svc, f"{name}: no healthcheck"
        assert not svc["healthcheck"].get("disable"), name
        assert svc["healthcheck"]["test"][1:], name
    # The exception: a scratch image; its health endpoint is published instead.
    collector = svcs["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    health = collector_ports(env_of(collector))["health"]
    assert health in {p["target"] for p in published_ports(collector)}
    assert healthcheck_argv(svcs["worker"]) == ["worker", "--check"]
    assert_console_script("worker")


def test_healthcheck_urls_and_published_ports_match_listening_ports() -> None:
    svcs = services()
    ports = listen_ports()
    for name, svc in svcs.items():
        if "healthcheck" in svc:
            for url in re.findall(r"https?://[^\s'\"]+", " ".join(svc["healthcheck"]["test"])):
                parts = urllib.parse.urlsplit(url)
                assert parts.hostname in {"127.0.0.1", "localhost"}, f"{name}: {url}"
                assert parts.port in ports[name], f"{name}: healthcheck {url} vs {ports[name]}"
        for port in published_ports(svc):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: publish {port} on loopback only"
            assert port["target"] in ports[name], f"{name}: publishes {port}, not listening"


def test_stop_grace_period_exceeds_shutdown_timeout() -> None:
    svcs = services()
    for name, model in (("ingest", IngestSettings), ("worker", WorkerSettings)):
        timeout = float(effective(model, env_of(svcs[name]), "SHUTDOWN_TIMEOUT"))
        grace = parse_duration(svcs[name]["stop_grace_period"])
        assert grace > timeout, f"{name}: stop_grace_period {grace}s <= SHUTDOWN_TIMEOUT {timeout}s"
        assert svcs[name].get("stop_signal", "SIGTERM") == "SIGTERM"


def test_ingest_healthcheck_requires_ready_200() -> None:
    from tests.deploy.files import ingest_get_routes

    argv = healthcheck_argv(services()["ingest"])
    urls = re.findall(r"http://[^\s'\"]+", argv[2])
    assert len(urls) == 1
    url = urllib.parse.urlsplit(urls[0])
    assert url.path == "/ready"
    assert url.path in ingest_get_routes()
    for status, expected_ok in ((200, True), (503, False)):
        with answering(status) as port:
            rc = run_python_healthcheck(argv, url.port or 80, port)
        assert (rc == 0) is expected_ok, f"/ready {status}: exit {rc}"


# --------------------------------------------------------- observability ---
def test_prometheus_loads_its_mounted_rules_and_scrapes_the_collector() -> None:
    svcs = services()
    prom = svcs["prometheus"]
    config_target = bind_target(prom, PROM_DIR / "prometheus.yml")
    assert flag_value(command_of(prom), "--config.file") == config_target
    assert "--enable-feature=exemplar-storage" in command_of(prom)
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    for rule_file in cfg["rule_files"]:
        in_container = str(PurePosixPath(config_target).parent / rule_file)
        assert in_container == bind_target(prom, PROM_DIR / rule_file)
    collector = collector_ports(env_of(svcs["otel-collector"]))
    ports = listen_ports()
    jobs = {}
    for job in cfg["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in svcs, f"job {job['job_name']}: {host} is not a compose service"
                assert int(port) in ports[host], f"job {job['job_name']}: {target}"
                jobs[job["job_name"]] = (host, int(port))
    assert jobs == {
        "wabot": ("otel-collector", collector["prometheus_exporter"]),
        "otel-collector": ("otel-collector", collector["self_metrics"]),
        "redis": ("redis-exporter", 9121),
        "postgres": ("postgres-exporter", 9187),
    }
    for am in cfg["alerting"]["alertmanagers"]:
        for static in am["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host == "alertmanager", target
                assert int(port) in ports["alertmanager"], target


def test_alertmanager_notifies_the_alert_webhook_service() -> None:
    am = services()["alertmanager"]
    target = bind_target(am, PROM_DIR / "alertmanager.yml")
    assert flag_value(command_of(am), "--config.file") == target
    cfg = yaml.safe_load((PROM_DIR / "alertmanager.yml").read_text())
    urls = [w["url"] for r in cfg["receivers"] for w in r.get("webhook_configs", [])]
    assert urls, "no webhook receivers"
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "alert-webhook", url
        assert parts.port == alert_webhook_port(), url


def test_alert_webhook_receiver_accepts_notifications(tmp_path: Path) -> None:
    port = free_port()
    argv = healthcheck_argv(services()["alert-webhook"])
    receiver = Process(
        "alert-webhook",
        [sys.executable, "-u", str(alert_webhook_script())],
        env=clean_env(ALERT_WEBHOOK_HOST="127.0.0.1", ALERT_WEBHOOK_PORT=str(port)),
        log_path=tmp_path / "alert-webhook.log",
        # Its own healthcheck is what says it is up.
        ready=lambda: run_python_healthcheck(argv, alert_webhook_port(), port) == 0,
        ready_timeout=20,
        ready_interval=0.2,  # each probe is a Python process
    )
    with receiver:
        payload = {
            "version": "4",
            "status": "firing",
            "receiver": "webhook-critical",
            "alerts": [{"labels": {"alertname": "WorkerDown", "service": "worker"}}],
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/alerts",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
    line = receiver.json_logs()[0]
    assert line["path"] == "/alerts"
    assert line["status"] == "firing"
    assert line["alerts"] == [{"alertname": "WorkerDown", "service": "worker"}]


def test_grafana_datasources_dashboards_and_anonymous_access() -> None:
    svcs = services()
    grafana = svcs["grafana"]
    ports = listen_ports()
    ds_doc = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    kinds = {}
    for ds in ds_doc["datasources"]:
        url = urllib.parse.urlsplit(ds["url"])
        assert url.hostname in svcs, f"{ds['name']}: {ds['url']}"
        assert url.port in ports[str(url.hostname)], f"{ds['name']}: {ds['url']}"
        kinds[ds["type"]] = (url.hostname, url.port)
    jaeger_query = jaeger_ports(env_of(svcs["jaeger"]))["query_http"]
    assert kinds == {
        "prometheus": ("prometheus", 9090),
        "jaeger": ("jaeger", jaeger_query),
        "victoriametrics-logs-datasource": ("victorialogs", min(ports["victorialogs"])),
    }
    env = env_of(grafana)
    # The VictoriaLogs datasource's plugin, at the version versions.env pins.
    plugins = env["GF_PLUGINS_PREINSTALL_SYNC"].split(",")
    assert plugins == [versions()["GRAFANA_VICTORIALOGS_PLUGIN"]]
    provisioning = env.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning")
    assert bind_target(grafana, GRAFANA_DIR / "provisioning") == provisioning
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yaml").read_text()
    )["providers"]
    dashboards_target = bind_target(grafana, GRAFANA_DIR / "dashboards")
    assert [p["options"]["path"] for p in providers] == [dashboards_target]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_collector_environment_mounts_and_jaeger_exporter() -> None:
    svcs = services()
    collector = svcs["otel-collector"]
    env = env_of(collector)
    unknown = set(env) - env_refs(COLLECTOR_CONFIG)
    assert not unknown, f"the collector config does not read {sorted(unknown)}"
    config_target = bind_target(collector, COLLECTOR_CONFIG)
    assert command_of(collector) == [f"--config={config_target}"]
    cfg = collector_config(env)
    volume_targets = [
        PurePosixPath(m["target"]) for m in collector["volumes"] if m["type"] == "volume"
    ]

    def on_volume(path: str) -> bool:
        return any(PurePosixPath(path).is_relative_to(t) for t in volume_targets)

    storage = cfg["extensions"]["file_storage"]["directory"]
    assert on_volume(storage), f"file_storage dir {storage} is not on a volume"
    # The init service hands exactly those volumes to the collector's user.
    init = svcs["otel-collector-init"]
    assert {(m["source"], m["target"]) for m in init["volumes"]} == {
        (m["source"], m["target"]) for m in collector["volumes"] if m["type"] == "volume"
    }
    init_cmd = command_of(init)
    assert init_cmd[:3] == ["chown", "-R", "10001:10001"]
    assert {PurePosixPath(p) for p in init_cmd[3:]} == set(volume_targets)
    # Traces go to the jaeger service's OTLP gRPC receiver.
    host, port = cfg["exporters"]["otlp_grpc/jaeger"]["endpoint"].rsplit(":", 1)
    assert host == "jaeger"
    assert int(port) == jaeger_ports(env_of(svcs["jaeger"]))["otlp_grpc"]
    # Log records go to the victorialogs service's OpenTelemetry endpoint.
    logs = urllib.parse.urlsplit(cfg["exporters"]["otlp_http/victorialogs"]["logs_endpoint"])
    assert (logs.hostname, logs.path) == ("victorialogs", "/insert/opentelemetry/v1/logs")
    assert logs.port in listen_ports()["victorialogs"]
    assert collector["depends_on"]["victorialogs"]["condition"] == "service_started"


def test_exporters_watch_the_compose_data_services_as_natively() -> None:
    svcs = services()
    ports = listen_ports()
    redis = urllib.parse.urlsplit(
        flag_value(command_of(svcs["redis-exporter"]), "-redis.addr") or ""
    )
    assert (redis.hostname, redis.port in ports["redis"]) == ("redis", True)
    assert "-include-system-metrics" in command_of(svcs["redis-exporter"])
    dsn = urllib.parse.urlsplit(env_of(svcs["postgres-exporter"])["DATA_SOURCE_NAME"])
    pg_env = env_of(svcs["postgres"])
    assert (dsn.hostname, dsn.username, dsn.password) == (
        "postgres",
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
    )
    assert dsn.port in ports["postgres"]
    # The extra queries file is the committed one.
    queries = flag_value(command_of(svcs["postgres-exporter"]), "--extend.query-path")
    assert queries == bind_target(
        svcs["postgres-exporter"], PROM_DIR / "postgres-exporter-queries.yaml"
    )


def test_stores_keep_data_as_long_as_natively() -> None:
    """Retention: the compose flags are the native runs' (configs.py)."""
    svcs = services()
    victorialogs = command_of(svcs["victorialogs"])
    assert flag_value(victorialogs, "-retentionPeriod") == LOG_RETENTION
    data = flag_value(victorialogs, "-storageDataPath")
    assert data in {m["target"] for m in svcs["victorialogs"]["volumes"] if m["type"] == "volume"}
    prometheus = command_of(svcs["prometheus"])
    assert flag_value(prometheus, "--storage.tsdb.retention.time") == METRICS_RETENTION


def test_jaeger_mounts_its_config_and_checks_its_health_port() -> None:
    jaeger = services()["jaeger"]
    assert command_of(jaeger) == [f"--config={bind_target(jaeger, JAEGER_CONFIG)}"]
    health = jaeger_ports(env_of(jaeger))["health"]
    url = urllib.parse.urlsplit(healthcheck_argv(jaeger)[-1])
    assert url.port == health
    assert url.path == "/status"
