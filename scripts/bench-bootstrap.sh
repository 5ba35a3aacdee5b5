#!/usr/bin/env bash
# What `make bench` needs on top of scripts/bootstrap.sh, idempotently: wrk
# (Debian package), the `bench` dependency group in .venv (Celery, the contrib
# OpenTelemetry instrumentation, py-spy), and the arq peer's own environment
# (arq pins redis < 6, the services use redis 8), built from the hashed
# bench/peers/arq-requirements.txt into $WABOT_CACHE_DIR/bench/arq-venv
# (default ~/.cache/wabot), where bench/pipeline.py looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench-bootstrap: installing Debian package: wrk"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
else
  UV=(python3 -m uv)
fi
# Inexact: adds the group to what scripts/bootstrap.sh synced, removes nothing.
"${UV[@]}" sync --frozen --quiet --inexact --group bench

requirements=bench/peers/arq-requirements.txt
venv="${WABOT_CACHE_DIR:-$HOME/.cache/wabot}/bench/arq-venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bench-bootstrap: building the arq peer's environment in $venv"
  # The project's own interpreter: nothing to download.
  python="$("${UV[@]}" run --frozen --no-sync python -c 'import sys; print(sys.executable)')"
  "${UV[@]}" venv --quiet --allow-existing --python "$python" "$venv"
  "${UV[@]}" pip sync --quiet --require-hashes --python "$venv/bin/python" "$requirements"
  echo "$want" >"$stamp"
fi
