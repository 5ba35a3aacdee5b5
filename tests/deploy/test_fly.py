"""fly/*.toml against the services they run: they parse, kill_timeout exceeds
SHUTDOWN_TIMEOUT, ports and check paths are the settings' ports and the apps'
routes, the worker's check is the one `worker --check` makes (run against the
real health server), secrets are documented in fly/README.md and never in
[env], and exactly one app runs the migrations on deploy."""

from __future__ import annotations

import asyncio
import base64
import re
import shlex
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.files import (
    APP_SETTINGS,
    DOCKERFILE,
    FLY_DIR,
    all_env_names,
    assert_console_script,
    effective,
    field_of,
    ingest_get_routes,
    load_settings_from,
    parse_duration,
    required_env_names,
    secret_env_names,
)
from tests.support.stack.net import free_port
from wabot_ingest.settings import IngestSettings
from wabot_worker.settings import WorkerSettings

FLY_MAX_KILL_TIMEOUT = 300  # seconds, Fly's limit
# Secrets with a format of their own; the others get a long random-looking string.
FORMATTED_SECRETS = {
    "REDIS_URL": "redis://redis.internal:6379/0",
    "DATABASE_URL": "postgresql://u:p@db.internal:5432/wabot",
    "MESSAGE_ENCRYPTION_KEYS": "k1:" + base64.b64encode(bytes(range(32))).decode(),
}


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


def default_of(model: Any, variable: str) -> Any:
    return model.model_fields[field_of(model, variable)].default


def test_fly_configs_parse_and_stop_gracefully() -> None:
    for name, cfg in fly_configs():
        model = APP_SETTINGS[name]
        assert cfg["kill_signal"] == "SIGTERM", name
        kill_timeout = parse_duration(cfg["kill_timeout"])
        shutdown = float(effective(model, cfg["env"], "SHUTDOWN_TIMEOUT"))
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
        known = all_env_names(model)
        unknown = {k for k in env if k not in known and not k.startswith("OTEL_")}
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"
        assert not set(env) & secrets, f"{name}: secrets in [env]: {set(env) & secrets}"
        assert not any(k in env for k in ("DATABASE_URL", "REDIS_URL")), name
        assert env["APP_ENV"] == "production"
        assert env["OTEL_SERVICE_NAME"] == name
        # Required settings not in [env] are documented as `fly secrets set -a <app>`.
        as_secrets = documented[cfg["app"]]
        assert required_env_names(model) - set(env) <= as_secrets, (name, as_secrets)
        for key in as_secrets:
            assert key in known or key.startswith("OTEL_"), f"{name}: {key}"
        # With those secrets (production-grade values) the settings load.
        dummy = {k: v for k, v in FORMATTED_SECRETS.items() if k in as_secrets}
        dummy |= {
            k: "s3cr3t-" + "x" * 25
            for k in as_secrets
            if k not in dummy and k in secrets and not k.startswith("OTEL_")
        }
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
        "MESSAGE_ENCRYPTION_KEYS",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ):
        assert key in everything, f"fly/README.md does not say how to set {key}"


def test_fly_ingest_serves_http_on_its_port_with_a_ready_check() -> None:
    cfg = dict(fly_configs())["ingest"]
    service = cfg["http_service"]
    assert service["internal_port"] == int(effective(IngestSettings, cfg["env"], "INGEST_PORT"))
    assert service["internal_port"] == default_of(IngestSettings, "INGEST_PORT")
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
    port = int(effective(WorkerSettings, cfg["env"], "WORKER_HEALTH_PORT"))
    assert port == default_of(WorkerSettings, "WORKER_HEALTH_PORT")
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


def test_worker_check_and_fly_check_use_the_worker_health_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`worker --check` (the container healthcheck) and Fly's HTTP check agree
    with the real health server: 0/200 while healthy, 1/503 when not."""
    from wabot_worker.health import HealthServer
    from wabot_worker.main import check

    fly = dict(fly_configs())["worker"]
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
