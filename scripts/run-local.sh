#!/usr/bin/env bash
# `make run`: the whole pipeline natively on this machine — redis-server,
# PostgreSQL, migrations, ingest and worker — with data kept in $RUN_DIR between
# runs. Ctrl-C (or SIGTERM) stops everything gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

RUN_DIR=$(mkdir -p "${RUN_DIR:-.run}" && cd "${RUN_DIR:-.run}" && pwd)
REDIS_PORT=${REDIS_PORT:-16379}
PG_PORT=${PG_PORT:-15432}
export INGEST_PORT=${INGEST_PORT:-8000}
export WORKER_HEALTH_PORT=${WORKER_HEALTH_PORT:-8001}
export INGEST_HOST=${INGEST_HOST:-127.0.0.1}
export WORKER_HEALTH_HOST=${WORKER_HEALTH_HOST:-127.0.0.1}
export APP_ENV=${APP_ENV:-development}
export WEBHOOK_SECRET=${WEBHOOK_SECRET:-dev-secret}
export REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
export DATABASE_URL="postgresql://postgres@127.0.0.1:${PG_PORT}/wabot"
export MIGRATIONS_DIR="$ROOT/migrations"
if [ -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
  # No collector given: keep telemetry local instead of logging export errors.
  export OTEL_TRACES_EXPORTER=${OTEL_TRACES_EXPORTER:-none}
  export OTEL_METRICS_EXPORTER=${OTEL_METRICS_EXPORTER:-none}
  export OTEL_LOGS_EXPORTER=${OTEL_LOGS_EXPORTER:-none}
fi
VENV_BIN="$ROOT/.venv/bin"
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# PostgreSQL will not run as root; as root its data must be reachable by the
# postgres user, which a RUN_DIR under /root or a private temp dir is not.
PG_DATA=${PG_DATA:-$RUN_DIR/pg}
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$RUN_DIR"; then
  PG_DATA="/var/tmp/wabot-$(printf '%s' "$RUN_DIR" | md5sum | cut -c1-12)/pg"
  mkdir -p "$(dirname "$PG_DATA")" && chmod 755 "$(dirname "$PG_DATA")"
fi
PG_LOG="$(dirname "$PG_DATA")/postgres.log"

pids=()
stopping=0
cleanup() {
  [ "$stopping" -eq 1 ] && return
  stopping=1
  echo "run: stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
  echo "run: stopped"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

wait_ready() { # name url
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null "$2" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "run: $1 did not become ready at $2" >&2
  return 1
}

mkdir -p "$RUN_DIR/redis" "$RUN_DIR/logs"
# Children run in their own sessions (setsid) so a Ctrl-C reaches them once,
# through cleanup(): a second signal would make the worker skip its drain.
setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN_DIR/redis" \
  --appendonly yes --save "" --daemonize no >"$RUN_DIR/logs/redis.log" 2>&1 &
pids+=($!)

if [ ! -f "$PG_DATA/PG_VERSION" ]; then
  mkdir -p "$PG_DATA"
  if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$PG_DATA" "$(dirname "$PG_DATA")"; fi
  as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 >"$RUN_DIR/logs/initdb.log"
fi
as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w \
  -o "-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1" start >/dev/null
if ! "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'wabot'" | grep -q 1; then
  "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres wabot
fi

"$VENV_BIN/migrate"
setsid "$VENV_BIN/ingest" & pids+=($!)
setsid "$VENV_BIN/worker" & pids+=($!)
wait_ready ingest "http://127.0.0.1:$INGEST_PORT/ready"
wait_ready worker "http://127.0.0.1:$WORKER_HEALTH_PORT/health"

cat <<MSG
run: the pipeline is up
  ingest   http://127.0.0.1:$INGEST_PORT   (POST /webhooks/evolution, GET /health, /ready)
  worker   http://127.0.0.1:$WORKER_HEALTH_PORT/health
  redis    $REDIS_URL
  postgres $DATABASE_URL
Send a sample webhook:
  curl -sS -X POST http://127.0.0.1:$INGEST_PORT/webhooks/evolution \\
    -H 'Content-Type: application/json' -H 'X-Webhook-Secret: $WEBHOOK_SECRET' \\
    --data @../shared/evolution-webhooks/messages-upsert-text.json
Press Ctrl-C to stop.
MSG
# Returns when any process exits (or a signal arrives); the trap stops the rest.
wait -n "${pids[@]}" || true
