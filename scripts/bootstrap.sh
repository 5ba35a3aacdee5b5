#!/usr/bin/env bash
# Installs everything `make test` and `make run` need on a fresh Debian machine,
# idempotently: Debian packages (Redis, PostgreSQL, Prometheus, Alertmanager,
# the Redis and PostgreSQL Prometheus exporters, Chromium for the Jaeger UI
# browser test, podman, runc and debootstrap for the image test (`make
# test-image`), HAProxy for the deploy tests, and shellcheck for `make
# lint`), uv (the version pinned in versions.env), the locked Python
# dependencies in .venv (hadolint among them), and the Go-built collector,
# Jaeger and VictoriaLogs (cached in ~/.cache/wabot/bin). Safe to run again;
# it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../versions.env
. ./versions.env

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
getent passwd postgres >/dev/null || missing+=(postgresql)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v prometheus-redis-exporter >/dev/null 2>&1 || missing+=(prometheus-redis-exporter)
command -v prometheus-postgres-exporter >/dev/null 2>&1 || missing+=(prometheus-postgres-exporter)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
# HAProxy stands in for Fly's proxy in the deploy tests (tests/deploy/test_rollouts.py).
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
else
  if ! python3 -m uv --version >/dev/null 2>&1; then
    echo "bootstrap: installing uv"
    python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
  UV=(python3 -m uv)
fi

"${UV[@]}" sync --frozen --quiet
scripts/build-otel-tools.sh >/dev/null
echo "bootstrap: ok ($("${UV[@]}" --version), redis $(redis-server --version | cut -d' ' -f3))"
