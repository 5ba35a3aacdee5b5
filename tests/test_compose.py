"""Static consistency checks of the container and deployment files.

No Docker engine here, so docker-compose.yml, Dockerfile, .dockerignore and
fly/*.toml are checked against what they must agree with:

* the compose file validates against the Compose Specification JSON schema
  (the copy vendored by the ``check-jsonschema`` package) after interpolation;
* every image is pinned to a tag; the collector and Jaeger images are the ones
  in otel-collector/IMAGE and jaeger/IMAGE; every bind-mounted path exists;
* every variable set for ingest/worker/migrate is a real setting of
  wabot_shared.settings (or OTEL_*), every required setting is provided, and
  the settings actually load from that environment;
* host names and ports agree: Prometheus targets, the Alertmanager target and
  its webhook receiver, Grafana datasources, the services' OTLP endpoint, the
  collector's Jaeger exporter, DSNs, published ports and healthcheck URLs all
  name compose services and ports those services listen on (the collector's and
  Jaeger's ports come from their configs, ``${env:VAR:-default}`` resolved with
  the compose environment);
* healthchecks, one-shot services, depends_on conditions, stop_grace_period >
  SHUTDOWN_TIMEOUT; the ingest and alert-webhook healthchecks and the
  alert-webhook receiver are run against local servers;
* fly/*.toml parse, kill_timeout > SHUTDOWN_TIMEOUT, ports and check paths match
  the settings and the apps' routes, secrets are documented in fly/README.md and
  never in [env];
* the Dockerfile: pinned bases, built with ``uv sync --frozen --no-dev``, non-root,
  migrations and MIGRATIONS_DIR, console scripts that exist in the workspace.

Fast and offline: nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import importlib.resources
import json
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from tests.support.procs import free_port
from wabot_shared.settings import (
    CommonSettings,
    IngestSettings,
    MigrateSettings,
    WorkerSettings,
)

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
FLY_DIR = REPO / "fly"
COLLECTOR_CONFIG = REPO / "otel-collector" / "config.yaml"
JAEGER_CONFIG = REPO / "jaeger" / "config.yaml"
PROM_DIR = REPO / "prometheus"
GRAFANA_DIR = REPO / "grafana"

APP_SETTINGS: dict[str, type[CommonSettings]] = {
    "ingest": IngestSettings,
    "worker": WorkerSettings,
    "migrate": MigrateSettings,
}
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
    "prometheus",
    "alertmanager",
    "alert-webhook",
    "grafana",
}
FLY_MAX_KILL_TIMEOUT = 300  # seconds


# --------------------------------------------------------------------- helpers

_COMPOSE_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def interpolate(value: Any, env: dict[str, str], missing: set[str] | None = None) -> Any:
    """Compose variable interpolation (``${VAR:-default}``, ``$$``), recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, missing) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if current is None and missing is not None:
            missing.add(name)
        return current or ""

    return _COMPOSE_VAR.sub(sub, value)


def load_compose_raw() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict)
    return doc


def load_compose() -> dict[str, Any]:
    """The compose file as `docker compose config` sees it with no variables set."""
    result = interpolate(load_compose_raw(), {})
    assert isinstance(result, dict)
    return result


def services() -> dict[str, dict[str, Any]]:
    svcs = load_compose()["services"]
    assert isinstance(svcs, dict)
    return svcs


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
    return None


def mounts_of(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of each volume; type is "bind" or "volume"."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            kind, source, target = vol.get("type", "volume"), str(vol.get("source")), vol["target"]
        else:
            parts = str(vol).split(":")
            assert len(parts) >= 2, f"anonymous volume {vol!r}: give it a name"
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        out.append((kind, source, target))
    return out


def bind_target(service: dict[str, Any], repo_path: Path) -> str:
    """Where a repository file/directory is bind-mounted in a service."""
    for kind, source, target in mounts_of(service):
        if kind == "bind" and (REPO / source).resolve() == repo_path.resolve():
            return target
    raise AssertionError(f"{repo_path.relative_to(REPO)} is not bind-mounted")


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    if kind == "CMD-SHELL":
        return shlex.split(rest[0])
    assert kind == "CMD", f"healthcheck test must start with CMD or CMD-SHELL: {test}"
    return [str(a) for a in rest]


def parse_duration(value: str | int | float) -> float:
    """Compose/Fly durations: 30, "30s", "1m30s", "500ms"."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts, f"not a duration: {value!r}"
    assert "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def field_env_names(model: type[BaseSettings]) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        assert field.alias is None, name
        assert field.validation_alias is None, name
        names.add(name.upper())
    return names


def required_env_names(model: type[BaseSettings]) -> set[str]:
    return {name.upper() for name, f in model.model_fields.items() if f.is_required()}


def secret_env_names() -> set[str]:
    names = set()
    for model in APP_SETTINGS.values():
        for name, field in model.model_fields.items():
            if "SecretStr" in repr(field.annotation):
                names.add(name.upper())
    return names


def effective(model: type[BaseSettings], env: dict[str, str], name: str) -> Any:
    """The value a setting takes: from the environment, else its default."""
    if name.upper() in env:
        return env[name.upper()]
    default = model.model_fields[name].default
    assert default is not None, f"{name} has no default"
    return default


def load_settings_from(
    model: type[CommonSettings], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> CommonSettings:
    """Instantiate settings exactly as an entrypoint does, from this env only."""
    for name in model.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return model()


def resolve_env_refs(path: Path, env: dict[str, str]) -> dict[str, Any]:
    """Load a collector-style config with ``${env:VAR:-default}`` resolved."""

    def sub(m: re.Match[str]) -> str:
        return env.get(m.group(1), m.group(2) or "")

    text = re.sub(r"\$\{env:([A-Za-z_]\w*)(?::-([^}]*))?\}", sub, path.read_text())
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def env_refs(path: Path) -> dict[str, str]:
    """Variables a collector-style config reads, with their defaults."""
    refs = re.findall(r"\$\{env:([A-Za-z_]\w*)(?::-([^}]*))?\}", path.read_text())
    return dict(refs)


def collector_ports(env: dict[str, str]) -> dict[str, int]:
    cfg = resolve_env_refs(COLLECTOR_CONFIG, env)
    protocols = cfg["receivers"]["otlp"]["protocols"]
    telemetry = cfg["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
    return {
        "otlp_grpc": port_of(protocols["grpc"]["endpoint"]),
        "otlp_http": port_of(protocols["http"]["endpoint"]),
        "prometheus_exporter": port_of(cfg["exporters"]["prometheus"]["endpoint"]),
        "self_metrics": int(telemetry["prometheus"]["port"]),
        "health": port_of(cfg["extensions"]["health_check"]["endpoint"]),
    }


def jaeger_ports(env: dict[str, str]) -> dict[str, int]:
    cfg = resolve_env_refs(JAEGER_CONFIG, env)
    protocols = cfg["receivers"]["otlp"]["protocols"]
    ext = cfg["extensions"]
    return {
        "otlp_grpc": port_of(protocols["grpc"]["endpoint"]),
        "otlp_http": port_of(protocols["http"]["endpoint"]),
        "query_http": port_of(ext["jaeger_query"]["http"]["endpoint"]),
        "query_grpc": port_of(ext["jaeger_query"]["grpc"]["endpoint"]),
        "health": port_of(ext["healthcheckv2"]["http"]["endpoint"]),
    }


def alert_webhook_script() -> str:
    cmd = command_of(services()["alert-webhook"])
    assert cmd[:3] == ["python", "-u", "-c"], cmd
    return cmd[3]


def alert_webhook_port() -> int:
    match = re.search(r"HTTPServer\(\(\"0\.0\.0\.0\", (\d+)\)", alert_webhook_script())
    assert match, "alert-webhook must listen on 0.0.0.0:<port>"
    return int(match.group(1))


def listen_ports() -> dict[str, set[int]]:
    """The ports each compose service listens on inside its container."""
    svcs = services()
    prom_addr = flag_value(command_of(svcs["prometheus"]), "--web.listen-address")
    am_addr = flag_value(command_of(svcs["alertmanager"]), "--web.listen-address")
    redis_port = flag_value(command_of(svcs["redis"]), "--port")
    ingest_env, worker_env = env_of(svcs["ingest"]), env_of(svcs["worker"])
    return {
        "otel-collector": set(collector_ports(env_of(svcs["otel-collector"])).values()),
        "jaeger": set(jaeger_ports(env_of(svcs["jaeger"])).values()),
        "prometheus": {port_of(prom_addr) if prom_addr else 9090},
        "alertmanager": {port_of(am_addr) if am_addr else 9093},
        "alert-webhook": {alert_webhook_port()},
        "grafana": {int(env_of(svcs["grafana"]).get("GF_SERVER_HTTP_PORT", 3000))},
        "redis": {int(redis_port or 6379)},
        "postgres": {int(env_of(svcs["postgres"]).get("PGPORT", 5432))},
        "ingest": {int(effective(IngestSettings, ingest_env, "ingest_port"))},
        "worker": {int(effective(WorkerSettings, worker_env, "worker_health_port"))},
    }


def console_scripts() -> dict[str, str]:
    """Console scripts of every workspace member: name -> "module:function"."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts: dict[str, str] = {}
    for member in root["tool"]["uv"]["workspace"]["members"]:
        project = tomllib.loads((REPO / member / "pyproject.toml").read_text())["project"]
        scripts.update(project.get("scripts", {}))
    return scripts


def assert_console_script(name: str) -> None:
    scripts = console_scripts()
    assert name in scripts, f"{name!r} is not a console script of the workspace ({sorted(scripts)})"
    module, _, attr = scripts[name].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def image_is_pinned(ref: str) -> bool:
    if "@sha256:" in ref:
        return True
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return bool(tag) and tag != "latest" and "$" not in tag


def ingest_get_routes() -> set[str]:
    from wabot_ingest.app import create_app

    settings = IngestSettings(
        redis_url=SecretStr("redis://127.0.0.1:1/0"),
        webhook_secret=SecretStr("x" * 32),
    )
    app = create_app(settings, "0.0.0-test")
    return {
        str(getattr(r, "path", ""))
        for r in app.routes
        if "GET" in (getattr(r, "methods", None) or set())
    }


class _StatusServer:
    """A local HTTP server answering GET with a fixed status, for healthcheck scripts."""

    def __init__(self, status: int) -> None:
        answer = status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(answer)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_python_healthcheck(argv: list[str], real_port: int, test_port: int) -> int:
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2].replace(f":{real_port}/", f":{test_port}/")
    assert code != argv[2], f"healthcheck does not use port {real_port}"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=30, check=False
    )
    return proc.returncode


# ---------------------------------------------------------------- compose file


def compose_schema() -> dict[str, Any]:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    schema: dict[str, Any] = json.loads(resource.read_text())
    assert schema["title"] == "Compose Specification"
    return schema


def test_compose_file_validates_against_the_compose_specification_schema() -> None:
    schema = compose_schema()
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    doc = load_compose()
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    assert not errors, errors
    # The schema is strict: a misspelt key or a wrong type is caught.
    broken = copy.deepcopy(doc)
    broken["services"]["ingest"]["helthcheck"] = broken["services"]["ingest"].pop("healthcheck")
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(doc)
    broken["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_done"
    assert not validator.is_valid(broken)


def test_compose_has_the_expected_services_and_every_variable_has_a_default() -> None:
    assert set(services()) == EXPECTED_SERVICES
    missing: set[str] = set()
    interpolate(load_compose_raw(), {}, missing)
    assert not missing, f"variables without a default: {sorted(missing)}"
    # Defaults work for development; a set variable wins.
    raw_ingest = load_compose_raw()["services"]["ingest"]["environment"]
    assert raw_ingest["WEBHOOK_SECRET"] == "${WEBHOOK_SECRET:-dev-secret}"
    overridden = interpolate(load_compose_raw(), {"WEBHOOK_SECRET": "s" * 20})
    assert overridden["services"]["ingest"]["environment"]["WEBHOOK_SECRET"] == "s" * 20


def test_every_image_is_pinned_to_a_tag() -> None:
    svcs = services()
    for name, svc in svcs.items():
        assert "image" in svc, f"{name}: no image"
        assert image_is_pinned(svc["image"]), f"{name}: image {svc['image']!r} is not pinned"
    assert (
        svcs["otel-collector"]["image"] == (REPO / "otel-collector" / "IMAGE").read_text().strip()
    )
    assert svcs["jaeger"]["image"] == (REPO / "jaeger" / "IMAGE").read_text().strip()
    assert svcs["prometheus"]["image"].startswith("prom/prometheus:v")
    assert svcs["alertmanager"]["image"].startswith("prom/alertmanager:v")
    assert svcs["grafana"]["image"].startswith("grafana/grafana:")
    assert not image_is_pinned("redis")
    assert not image_is_pinned("grafana/grafana:latest")
    assert image_is_pinned("localhost:5000/x:1.2")
    assert not image_is_pinned("localhost:5000/x")


def test_app_services_share_one_image_built_from_the_dockerfile() -> None:
    svcs = services()
    images = set()
    for name in APP_SETTINGS:
        build = svcs[name]["build"]
        context = REPO / build["context"]
        assert context.resolve() == REPO, name
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
        images.add(svcs[name]["image"])
    assert len(images) == 1, f"ingest, worker and migrate should share one image: {images}"


def test_bind_mounts_exist_and_named_volumes_are_declared() -> None:
    doc = load_compose()
    declared = set(doc.get("volumes") or {})
    used = set()
    binds = 0
    for name, svc in doc["services"].items():
        for kind, source, target in mounts_of(svc):
            assert target.startswith("/"), f"{name}: {target}"
            if kind == "bind":
                binds += 1
                assert source.startswith("./"), f"{name}: bind {source} should be repo-relative"
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
                assert (REPO / source).resolve().is_relative_to(REPO)
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert binds >= 7
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_app_environment_uses_real_setting_names_and_provides_required_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    svcs = services()
    for name, model in APP_SETTINGS.items():
        env = env_of(svcs[name])
        known = field_env_names(model)
        unknown = {k for k in env if k not in known and not k.startswith("OTEL_")}
        assert not unknown, f"{name}: not settings of {model.__name__}: {sorted(unknown)}"
        missing = required_env_names(model) - set(env)
        assert not missing, f"{name}: required settings not set: {sorted(missing)}"
        # They really load (types, validators, development secret rules).
        with monkeypatch.context() as mp:
            settings = load_settings_from(model, env, mp)
        assert settings.app_env == "development"
    assert required_env_names(IngestSettings) == {"REDIS_URL", "WEBHOOK_SECRET"}
    assert required_env_names(WorkerSettings) == {"REDIS_URL", "DATABASE_URL"}
    assert required_env_names(MigrateSettings) == {"DATABASE_URL"}


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
        assert f"-d {pg_env['POSTGRES_DB']}" in " ".join(healthcheck_argv(svcs["postgres"]))
        if name != "migrate":
            redis = urllib.parse.urlsplit(env["REDIS_URL"])
            assert redis.scheme == "redis"
            assert redis.hostname == "redis", name
            assert redis.port in ports["redis"], name


def test_redis_persists_with_aof_and_data_services_have_volumes() -> None:
    svcs = services()
    cmd = command_of(svcs["redis"])
    assert flag_value(cmd, "--appendonly") == "yes"
    assert healthcheck_argv(svcs["redis"]) == ["redis-cli", "ping"]
    assert healthcheck_argv(svcs["postgres"])[0] == "pg_isready"
    targets = {
        name: {t for kind, _, t in mounts_of(svcs[name]) if kind == "volume"}
        for name in ("redis", "postgres", "prometheus", "alertmanager", "grafana")
    }
    assert "/data" in targets["redis"]
    assert "/var/lib/postgresql/data" in targets["postgres"]
    assert (
        flag_value(command_of(svcs["prometheus"]), "--storage.tsdb.path") in targets["prometheus"]
    )
    assert flag_value(command_of(svcs["alertmanager"]), "--storage.path") in targets["alertmanager"]
    assert "/var/lib/grafana" in targets["grafana"]


def test_depends_on_conditions_and_one_shot_services() -> None:
    svcs = services()
    for name, svc in svcs.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep} healthy: none"
            if condition == "service_completed_successfully":
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
    long_running = set(svcs) - ONE_SHOT
    for name in sorted(long_running):
        svc = svcs[name]
        assert svc.get("restart") == "unless-stopped", f"{name}: restart policy"
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in svc
            continue
        assert "healthcheck" in svc, f"{name}: no healthcheck"
        assert not svc["healthcheck"].get("disable"), name
        assert healthcheck_argv(svc), name
    # The exception: a scratch image; its health endpoint is published instead.
    collector = svcs["otel-collector"]
    assert collector["image"].startswith("otel/opentelemetry-collector-contrib:")
    health = collector_ports(env_of(collector))["health"]
    assert any(str(p).endswith(f":{health}") for p in collector["ports"])
    assert healthcheck_argv(svcs["worker"]) == ["worker", "--check"]
    assert_console_script("worker")


def test_healthcheck_urls_and_published_ports_match_listening_ports() -> None:
    svcs = services()
    ports = listen_ports()
    for name, svc in svcs.items():
        if "healthcheck" in svc:
            for url in re.findall(r"https?://[^\s'\"]+", " ".join(healthcheck_argv(svc))):
                parts = urllib.parse.urlsplit(url)
                assert parts.hostname in {"127.0.0.1", "localhost"}, f"{name}: {url}"
                assert parts.port in ports[name], f"{name}: healthcheck {url} vs {ports[name]}"
        for spec in svc.get("ports", []):
            pieces = str(spec).split("/")[0].split(":")
            assert len(pieces) == 3, f"{name}: publish {spec} with a host address"
            assert pieces[0] == "127.0.0.1", f"{name}: publish {spec} on loopback only"
            assert int(pieces[2]) in ports[name], f"{name}: publishes {spec}, not listening"
    worker_env = env_of(svcs["worker"])
    assert int(effective(WorkerSettings, worker_env, "worker_health_port")) in ports["worker"]


def test_stop_grace_period_exceeds_shutdown_timeout() -> None:
    svcs = services()
    for name, model in (("ingest", IngestSettings), ("worker", WorkerSettings)):
        timeout = float(effective(model, env_of(svcs[name]), "shutdown_timeout"))
        grace = parse_duration(svcs[name]["stop_grace_period"])
        assert grace > timeout, f"{name}: stop_grace_period {grace}s <= SHUTDOWN_TIMEOUT {timeout}s"
        assert svcs[name].get("stop_signal", "SIGTERM") == "SIGTERM"


def test_ingest_healthcheck_requires_ready_200() -> None:
    svc = services()["ingest"]
    argv = healthcheck_argv(svc)
    urls = re.findall(r"http://[^\s'\"]+", argv[2])
    assert len(urls) == 1
    url = urllib.parse.urlsplit(urls[0])
    assert url.path == "/ready"
    assert url.path in ingest_get_routes()
    for status, expected_ok in ((200, True), (503, False)):
        server = _StatusServer(status)
        try:
            rc = run_python_healthcheck(argv, url.port or 80, server.port)
        finally:
            server.close()
        assert (rc == 0) is expected_ok, f"/ready {status}: exit {rc}"


def test_worker_check_and_fly_check_use_the_worker_health_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wabot_worker.health import HealthServer
    from wabot_worker.main import check

    fly = tomllib.loads((FLY_DIR / "worker.toml").read_text())
    (fly_check,) = fly["checks"].values()
    port = free_port()
    monkeypatch.setenv("WORKER_HEALTH_PORT", str(port))
    healthy = {"ok": True}

    async def health() -> tuple[bool, dict[str, Any]]:
        return healthy["ok"], {"status": "pass" if healthy["ok"] else "fail"}

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    async def scenario() -> list[int]:
        server = HealthServer("127.0.0.1", port, health)
        await server.start()
        try:
            results = [
                await asyncio.to_thread(check),
                await asyncio.to_thread(get, fly_check["path"]),
            ]
            healthy["ok"] = False
            results += [
                await asyncio.to_thread(check),
                await asyncio.to_thread(get, fly_check["path"]),
            ]
        finally:
            await server.close()
        return results

    assert asyncio.run(scenario()) == [0, 200, 1, 503]


# --------------------------------------------------------- observability wiring


def test_prometheus_targets_are_compose_services_and_collector_ports() -> None:
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
    wanted = {
        "wabot": collector["prometheus_exporter"],
        "otel-collector": collector["self_metrics"],
    }
    jobs = {}
    for job in cfg["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host in svcs, f"job {job['job_name']}: {host} is not a compose service"
                assert int(port) in ports[host], f"job {job['job_name']}: {target}"
                jobs[job["job_name"]] = (host, int(port))
    assert jobs == {name: ("otel-collector", port) for name, port in wanted.items()}
    for am in cfg["alerting"]["alertmanagers"]:
        for static in am["static_configs"]:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                assert host == "alertmanager", target
                assert int(port) in ports["alertmanager"], target


def test_alertmanager_notifies_the_alert_webhook_service() -> None:
    svcs = services()
    am = svcs["alertmanager"]
    target = bind_target(am, PROM_DIR / "alertmanager.yml")
    assert flag_value(command_of(am), "--config.file") == target
    cfg = yaml.safe_load((PROM_DIR / "alertmanager.yml").read_text())
    urls = [w["url"] for r in cfg["receivers"] for w in r.get("webhook_configs", [])]
    assert urls
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "alert-webhook", url
        assert parts.port == alert_webhook_port(), url


def test_alert_webhook_receiver_accepts_notifications() -> None:
    port = free_port()
    script = alert_webhook_script().replace(str(alert_webhook_port()), str(port))
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "alert-webhook did not start"
                time.sleep(0.05)
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
        # Its own healthcheck passes against it.
        argv = healthcheck_argv(services()["alert-webhook"])
        code = argv[2].replace(f":{alert_webhook_port()}/", f":{port}/")
        assert code != argv[2]
        health = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
        assert health.returncode == 0
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    line = json.loads(out.splitlines()[0])
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
        kinds[ds["type"]] = url.hostname
    assert kinds == {"prometheus": "prometheus", "jaeger": "jaeger"}
    jaeger_query = jaeger_ports(env_of(svcs["jaeger"]))["query_http"]
    assert (
        urllib.parse.urlsplit(
            next(d["url"] for d in ds_doc["datasources"] if d["type"] == "jaeger")
        ).port
        == jaeger_query
    )
    env = env_of(grafana)
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
    refs = env_refs(COLLECTOR_CONFIG)
    unknown = set(env) - set(refs)
    assert not unknown, f"the collector config does not read {sorted(unknown)}"
    config_target = bind_target(collector, COLLECTOR_CONFIG)
    assert command_of(collector) == [f"--config={config_target}"]
    cfg = resolve_env_refs(COLLECTOR_CONFIG, env)
    volume_targets = [PurePosixPath(t) for kind, _, t in mounts_of(collector) if kind == "volume"]

    def on_volume(path: str) -> bool:
        return any(PurePosixPath(path).is_relative_to(t) for t in volume_targets)

    storage = cfg["extensions"]["file_storage"]["directory"]
    logs_file = cfg["exporters"]["file/logs"]["path"]
    assert on_volume(storage), f"file_storage dir {storage} is not on a volume"
    assert on_volume(str(PurePosixPath(logs_file).parent)), f"{logs_file} is not on a volume"
    # The init service hands exactly those volumes to the collector's user.
    init = svcs["otel-collector-init"]
    assert {(s, t) for k, s, t in mounts_of(init)} == {
        (s, t) for k, s, t in mounts_of(collector) if k == "volume"
    }
    init_cmd = command_of(init)
    assert init_cmd[:3] == ["chown", "-R", "10001:10001"]
    assert {PurePosixPath(p) for p in init_cmd[3:]} == set(volume_targets)
    # Traces go to the jaeger service's OTLP gRPC receiver.
    host, port = cfg["exporters"]["otlp_grpc/jaeger"]["endpoint"].rsplit(":", 1)
    assert host == "jaeger"
    assert int(port) == jaeger_ports(env_of(svcs["jaeger"]))["otlp_grpc"]


def test_jaeger_mounts_its_config_and_checks_its_health_port() -> None:
    jaeger = services()["jaeger"]
    assert command_of(jaeger) == [f"--config={bind_target(jaeger, JAEGER_CONFIG)}"]
    health = jaeger_ports(env_of(jaeger))["health"]
    url = urllib.parse.urlsplit(healthcheck_argv(jaeger)[-1])
    assert url.port == health
    assert url.path == "/status"


# ------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def dockerfile_stages() -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            words = args.split()
            words = [w for w in words if not w.startswith("--platform")]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"base": words[0], "alias": alias, "instructions": []})
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1]["instructions"].append((keyword, args))
    return stages


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV key=value: {args}"
                env[key] = value
    return env


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip().lstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (or a directory above it) out of the context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in dockerignore_patterns():
        assert not pattern.startswith("!"), "negations are not handled by this check"
        regex = _pattern_regex(pattern)
        if any(regex.fullmatch(p) for p in prefixes):
            return True
    return False


def test_dockerfile_bases_are_pinned_and_the_runtime_is_python_311_slim() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("#"), "the Dockerfile starts with a comment saying what it is for"
    stages = dockerfile_stages()
    aliases: set[str] = set()
    for stage in stages:
        if stage["base"] not in aliases:
            assert image_is_pinned(stage["base"]), f"FROM {stage['base']} is not pinned"
        for keyword, args in stage["instructions"]:
            match = re.match(r"--from=(\S+)", args)
            if keyword == "COPY" and match and match.group(1) not in aliases:
                assert image_is_pinned(match.group(1)), f"COPY --from={match.group(1)}"
        if stage["alias"]:
            aliases.add(stage["alias"])
    assert len(stages) >= 2, "multi-stage"
    assert stages[-1]["base"].startswith("python:3.11-slim")
    assert "$" not in stages[-1]["base"]


def test_dockerfile_builds_from_the_lock_file_with_uv() -> None:
    stages = dockerfile_stages()
    instructions = [i for s in stages for i in s["instructions"]]
    syncs = [args for kw, args in instructions if kw == "RUN" and "uv sync" in args]
    assert syncs
    for args in syncs:
        assert "uv sync --frozen --no-dev" in args
    # Every workspace member's pyproject.toml, the root one and uv.lock are in
    # the image before the first sync (a workspace sync needs all of them).
    first_sync = next(
        i for i, (kw, args) in enumerate(instructions) if kw == "RUN" and "uv sync" in args
    )
    copied: set[str] = set()
    for keyword, args in instructions[:first_sync]:
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, dest = shlex.split(args)
            for src in sources:
                copied.add(
                    str(PurePosixPath(dest) / PurePosixPath(src).name)
                    if dest.endswith("/")
                    else dest
                )
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"./pyproject.toml", "./uv.lock"} | {
        f"{member}/pyproject.toml" for member in root["tool"]["uv"]["workspace"]["members"]
    }
    normalized = {str(PurePosixPath(p)) for p in copied}
    assert {str(PurePosixPath(p)) for p in needed} <= normalized, normalized
    # uv itself comes from its pinned image.
    uv_refs = {s["alias"] for s in stages if s["base"].startswith("ghcr.io/astral-sh/uv:")}
    uv_refs |= {s["base"] for s in stages if s["base"].startswith("ghcr.io/astral-sh/uv:")}
    copy_from = [
        re.match(r"--from=(\S+)\s+/uv\s", args) for kw, args in instructions if kw == "COPY"
    ]
    uv_copies = [m.group(1) for m in copy_from if m and m.group(1) in uv_refs]
    assert uv_copies, "uv is copied from the pinned ghcr.io/astral-sh/uv image"


def test_dockerfile_copies_only_existing_unignored_sources() -> None:
    sources = []
    for stage in dockerfile_stages():
        for keyword, args in stage["instructions"]:
            if keyword in {"COPY", "ADD"} and not args.startswith("--from"):
                sources += shlex.split(args)[:-1]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: missing"
        assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"
    for kept in (
        "shared/src/wabot_shared/settings.py",
        "migrations/001_base_schema.sql",
        "uv.lock",
    ):
        assert not dockerignored(kept), kept
    for dropped in (
        ".venv/bin/python",
        ".run/logs/ingest.log",
        "tests/test_compose.py",
        "bench/results/pipeline.json",
        "shared/src/wabot_shared/__pycache__/settings.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v/x",
        ".git/HEAD",
    ):
        assert dockerignored(dropped), f".dockerignore lets {dropped} into the build context"


def test_dockerfile_runtime_stage_user_workdir_migrations_and_cmd() -> None:
    final = dockerfile_stages()[-1]["instructions"]
    users = [args for kw, args in final if kw == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so runtimes can verify "non-root" without reading /etc/passwd.
    assert uid.isdigit(), f"USER {users[-1]}: use a numeric uid"
    assert int(uid) != 0, f"runs as {users[-1]}"
    assert gid == "" or (gid.isdigit() and int(gid) != 0), f"group {gid}"
    runs = " ".join(args for kw, args in final if kw == "RUN")
    assert re.search(rf"useradd\b.*--uid {uid}\b", runs), "the user exists in the image"
    workdirs = [args for kw, args in final if kw == "WORKDIR"]
    assert workdirs
    assert workdirs[-1] == "/app"
    env = dockerfile_env(final)
    assert env["MIGRATIONS_DIR"] == "/app/migrations"
    assert "MIGRATIONS_DIR" in field_env_names(MigrateSettings)
    assert "/app/.venv/bin" in env["PATH"].split(":")
    copies = [shlex.split(args) for kw, args in final if kw == "COPY"]
    assert ["migrations", "/app/migrations"] in copies
    assert ["--from=build", "/app/.venv", "/app/.venv"] in copies
    # The last USER comes before CMD, and CMD is exec form naming a console script.
    keywords = [kw for kw, _ in final]
    assert keywords.index("CMD") > len(keywords) - 1 - keywords[::-1].index("USER")
    cmds = [args for kw, args in final if kw == "CMD"]
    cmd = json.loads(cmds[-1])
    assert cmd == ["ingest"]
    for script in ("ingest", "worker", "migrate"):
        assert_console_script(script)


def test_dockerfile_holds_no_secrets() -> None:
    secrets = secret_env_names() | {"DATABASE_URL", "REDIS_URL"}
    for keyword, args in dockerfile_instructions():
        if keyword in {"ENV", "ARG"}:
            for token in shlex.split(args):
                key = token.split("=", 1)[0]
                assert key not in secrets, f"{keyword} {key} in the Dockerfile"
                assert not re.search(r"SECRET|PASSWORD|TOKEN|API_KEY", key), key
        # No credentials in URLs or assignments anywhere in the instructions.
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", args), f"{keyword} {args}"
        assert not re.search(r"(?i)(password|secret|api_key|token)\s*=", args), f"{keyword} {args}"


# ---------------------------------------------------------------------- Fly.io


def fly_configs() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in ("ingest", "worker"):
        yield name, tomllib.loads((FLY_DIR / f"{name}.toml").read_text())


def fly_secret_commands() -> dict[str, set[str]]:
    """App name -> variables set by `fly secrets set -a APP` in fly/README.md."""
    text = (FLY_DIR / "README.md").read_text()
    found: dict[str, set[str]] = {}
    for block in re.findall(r"```(?:sh|bash)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for raw in joined.splitlines():
            line = raw.strip()
            if not line.startswith("fly secrets set"):
                continue
            words = shlex.split(line)
            app = words[words.index("-a") + 1]
            names = {w.split("=", 1)[0] for w in words[3:] if re.match(r"[A-Z_][A-Z0-9_]*=", w)}
            found.setdefault(app, set()).update(names)
    return found


def test_fly_configs_parse_and_stop_gracefully() -> None:
    for name, cfg in fly_configs():
        assert (FLY_DIR / f"{name}.toml").read_text().startswith("#"), "header comment"
        model = APP_SETTINGS[name]
        assert cfg["kill_signal"] == "SIGTERM", name
        kill_timeout = parse_duration(cfg["kill_timeout"])
        shutdown = float(effective(model, cfg["env"], "shutdown_timeout"))
        assert shutdown < kill_timeout <= FLY_MAX_KILL_TIMEOUT, f"{name}: {kill_timeout}s"
        assert (FLY_DIR / cfg["build"]["dockerfile"]).resolve() == DOCKERFILE, name
        for command in cfg["processes"].values():
            assert_console_script(shlex.split(command)[0])


def test_fly_env_is_settings_without_secrets_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = secret_env_names()
    documented = fly_secret_commands()
    apps = {name: cfg["app"] for name, cfg in fly_configs()}
    assert set(documented) == set(apps.values()), documented
    for name, cfg in fly_configs():
        model = APP_SETTINGS[name]
        env = cfg["env"]
        assert all(isinstance(v, str) for v in env.values()), "Fly env values are strings"
        unknown = {k for k in env if k not in field_env_names(model) and not k.startswith("OTEL_")}
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"
        assert not set(env) & secrets, f"{name}: secrets in [env]: {set(env) & secrets}"
        assert not any(k in env for k in ("DATABASE_URL", "REDIS_URL")), name
        assert env["APP_ENV"] == "production"
        assert env["OTEL_SERVICE_NAME"] == name
        # Required settings not in [env] are documented as `fly secrets set -a <app>`.
        as_secrets = documented[cfg["app"]]
        assert required_env_names(model) - set(env) <= as_secrets, (name, as_secrets)
        for key in as_secrets:
            assert key in field_env_names(model) or key.startswith("OTEL_"), f"{name}: {key}"
        # With those secrets (production-grade values) the settings load.
        dummy = {k: "redis://redis.internal:6379/0" for k in as_secrets if k == "REDIS_URL"}
        dummy |= {
            k: "postgresql://u:p@db.internal:5432/wabot" for k in as_secrets if k == "DATABASE_URL"
        }
        dummy |= {k: "s3cr3t-" + "x" * 25 for k in required_env_names(model) if k not in dummy}
        with monkeypatch.context() as mp:
            settings = load_settings_from(model, {**env, **dummy}, mp)
        assert not settings.is_development
    everything = set().union(*documented.values())
    for key in (
        "DATABASE_URL",
        "REDIS_URL",
        "WEBHOOK_SECRET",
        "WEBHOOK_JWT_KEY",
        "EVOLUTION_API_KEY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ):
        assert key in everything, f"fly/README.md does not say how to set {key}"


def test_fly_ingest_serves_http_on_its_port_with_a_ready_check() -> None:
    cfg = dict(fly_configs())["ingest"]
    service = cfg["http_service"]
    assert service["internal_port"] == int(effective(IngestSettings, cfg["env"], "ingest_port"))
    assert service["internal_port"] == IngestSettings.model_fields["ingest_port"].default
    assert set(service["processes"]) <= set(cfg["processes"])
    assert [cfg["processes"][p] for p in service["processes"]] == ["ingest"]
    routes = ingest_get_routes()
    paths = [check["path"] for check in service["checks"]]
    assert "/ready" in paths
    for path in paths + [c["path"] for c in cfg.get("checks", {}).values()]:
        assert path in routes, f"{path} is not a GET route of ingest ({sorted(routes)})"
    assert {"/health", "/ready"} <= routes


def test_fly_worker_checks_its_health_port_and_runs_migrations() -> None:
    configs = dict(fly_configs())
    cfg = configs["worker"]
    assert list(cfg["processes"].values()) == ["worker"]
    port = int(effective(WorkerSettings, cfg["env"], "worker_health_port"))
    assert port == WorkerSettings.model_fields["worker_health_port"].default
    checks = list(cfg["checks"].values())
    assert checks
    for check in checks:
        assert check["type"] == "http"
        assert check["port"] == port
        assert check["path"] == "/health"
        assert set(check["processes"]) <= set(cfg["processes"])
    releases = [
        c["deploy"]["release_command"]
        for c in configs.values()
        if "release_command" in c.get("deploy", {})
    ]
    assert releases == ["migrate"], "exactly one app runs the migrations on deploy"
    assert_console_script("migrate")
