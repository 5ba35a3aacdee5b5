"""Where things are: the repository, the virtualenv's console scripts, the
sample webhooks, and the native tools (each with a hint for when it is missing)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
# The console scripts (ingest, worker, migrate) of the interpreter running us.
BIN = Path(sys.executable).parent
MIGRATIONS = REPO / "migrations"
COLLECTOR_DIR = REPO / "otel-collector"
JAEGER_CONFIG = REPO / "jaeger" / "config.yaml"
PROM_DIR = REPO / "prometheus"
GRAFANA_DIR = REPO / "grafana"
CACHE_BIN = Path(os.environ.get("WABOT_CACHE_DIR", Path.home() / ".cache" / "wabot")) / "bin"
SAMPLES_DIR = Path(
    os.environ.get("WABOT_SAMPLES_DIR", REPO.parent / "shared" / "evolution-webhooks")
)
# The built Jaeger UI (jaeger-ui's production build; `go install` gives Jaeger
# a placeholder page only): $JAEGER_UI_ASSETS, else ../shared/jaeger-ui.
DEFAULT_JAEGER_UI_ASSETS = REPO.parent / "shared" / "jaeger-ui"
PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)

BUILD_HINT = (
    "run scripts/build-otel-tools.sh "
    "(builds otelcol-wabot, jaeger and victoria-logs into ~/.cache/wabot/bin)"
)
APT_HINT = (
    "install it with `apt-get install -y prometheus prometheus-alertmanager "
    "prometheus-redis-exporter prometheus-postgres-exporter` (scripts/bootstrap.sh does)"
)
INSTALL_HINT = "run `make test` or `make run` (they install it)"


class MissingTool(AssertionError):
    """A binary the harness needs is not installed (the message says how to get it)."""


def load_samples() -> dict[str, dict[str, Any]]:
    """The sample Evolution webhooks, by file stem."""
    if not SAMPLES_DIR.is_dir():
        raise MissingTool(f"sample webhooks not found at {SAMPLES_DIR} (set WABOT_SAMPLES_DIR)")
    return {p.stem: json.loads(p.read_text()) for p in sorted(SAMPLES_DIR.glob("*.json"))}


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binary(
    names: str | tuple[str, ...], hint: str, env_var: str | None = None, cached: str | None = None
) -> str:
    """Path of a tool: ``$env_var``, then PATH, then ~/.cache/wabot/bin."""
    candidates = (names,) if isinstance(names, str) else names
    if env_var and os.environ.get(env_var):
        path = Path(os.environ[env_var])
        if not _executable(path):
            raise MissingTool(f"${env_var}={path} is not an executable file; {hint}")
        return str(path)
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    candidate = CACHE_BIN / (cached or candidates[0])
    if _executable(candidate):
        return str(candidate)
    raise MissingTool(f"`{'` / `'.join(candidates)}` not found on PATH nor as {candidate}; {hint}")


def otelcol_binary() -> str:
    """The collector built from the *current* manifest (its name carries the hash)."""
    if os.environ.get("OTELCOL_BIN"):
        return find_binary("otelcol-wabot", BUILD_HINT, env_var="OTELCOL_BIN")
    manifest = COLLECTOR_DIR / "manifest.yaml"
    version = yaml.safe_load(manifest.read_text())["dist"]["version"]
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:10]
    path = CACHE_BIN / f"otelcol-wabot-{version}-{digest}"
    if not _executable(path):
        others = sorted(p.name for p in CACHE_BIN.glob("otelcol-wabot-*"))
        stale = f" (found only {others}: built from another manifest)" if others else ""
        raise MissingTool(f"{path} is missing{stale}; {BUILD_HINT}")
    return str(path)


def jaeger_binary() -> str:
    return find_binary("jaeger", BUILD_HINT, env_var="JAEGER_BIN")


def victorialogs_binary() -> str:
    return find_binary("victoria-logs", BUILD_HINT, env_var="VICTORIALOGS_BIN")


def jaeger_ui_assets() -> Path | None:
    """The Jaeger UI build to serve, or None (the native Jaeger is then API-only):
    ``$JAEGER_UI_ASSETS`` (which must then hold an index.html), else
    ../shared/jaeger-ui when it is there."""
    if os.environ.get("JAEGER_UI_ASSETS"):
        path = Path(os.environ["JAEGER_UI_ASSETS"]).resolve()
        if not (path / "index.html").is_file():
            raise MissingTool(f"$JAEGER_UI_ASSETS={path} holds no index.html (a jaeger-ui build)")
        return path
    if (DEFAULT_JAEGER_UI_ASSETS / "index.html").is_file():
        return DEFAULT_JAEGER_UI_ASSETS.resolve()
    return None


def redis_exporter_binary() -> str:
    return find_binary("prometheus-redis-exporter", APT_HINT, env_var="REDIS_EXPORTER_BIN")


def postgres_exporter_binary() -> str:
    return find_binary("prometheus-postgres-exporter", APT_HINT, env_var="POSTGRES_EXPORTER_BIN")


def chromium_binary() -> str:
    return find_binary(("chromium", "chromium-browser"), INSTALL_HINT, env_var="CHROMIUM_BIN")


def prometheus_binary() -> str:
    return find_binary("prometheus", APT_HINT, env_var="PROMETHEUS_BIN")


def alertmanager_binary() -> str:
    # Debian names it prometheus-alertmanager; upstream tarballs `alertmanager`.
    return find_binary(
        ("prometheus-alertmanager", "alertmanager"), APT_HINT, env_var="ALERTMANAGER_BIN"
    )


def redis_binary() -> str:
    return find_binary("redis-server", INSTALL_HINT)


def pg_tool(name: str) -> str:
    """A PostgreSQL server program (initdb, postgres): the newest installed version."""
    for directory in PG_BIN_CANDIDATES:
        if (directory / name).exists():
            return str(directory / name)
    return find_binary(name, INSTALL_HINT)
