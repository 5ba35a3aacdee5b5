#!/usr/bin/env bash
# `make run`: the whole pipeline natively on this machine — redis-server,
# PostgreSQL, migrations, ingest and worker — plus the observability backend
# (OpenTelemetry Collector, Jaeger, Prometheus, Alertmanager) with the committed
# configs, with data kept in $RUN_DIR between runs. Ctrl-C (or SIGTERM) stops
# everything gracefully: ingest and worker first (they drain and flush their
# telemetry while Redis and the collector still run), then the rest.
#
# Ports (all on 127.0.0.1) and other overrides, with their defaults:
#   REDIS_PORT 16379  PG_PORT 15432  INGEST_PORT 8000  WORKER_HEALTH_PORT 8001
#   OTELCOL_GRPC_PORT 14317  OTELCOL_HTTP_PORT 14318   collector OTLP receivers
#   OTELCOL_HEALTH_PORT 13133                          collector health check
#   OTELCOL_PROMETHEUS_PORT 18889                      app + span metrics (scraped)
#   OTELCOL_METRICS_PORT 18888                         collector self-metrics
#   JAEGER_UI_PORT 16686  JAEGER_QUERY_GRPC_PORT 16685  JAEGER_HEALTH_PORT 13134
#   JAEGER_OTLP_GRPC_PORT 24317  JAEGER_OTLP_HTTP_PORT 24318  JAEGER_METRICS_PORT 14269
#   PROMETHEUS_PORT 19090  ALERTMANAGER_PORT 19093
#   ALERT_WEBHOOK_URL   where Alertmanager posts notifications
#                       (http://127.0.0.1:19095/alerts; nothing listens there by default)
#   RUN_OBSERVABILITY=0 skip the observability backend (telemetry then goes to
#                       OTEL_EXPORTER_OTLP_ENDPOINT if set, else nowhere)
#   OTELCOL_BIN, JAEGER_BIN (default ~/.cache/wabot/bin/{otelcol-wabot,jaeger},
#   built by scripts/build-otel-tools.sh), PROMETHEUS_BIN, ALERTMANAGER_BIN
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

RUN_OBSERVABILITY=${RUN_OBSERVABILITY:-1}
OTELCOL_GRPC_PORT=${OTELCOL_GRPC_PORT:-14317}
OTELCOL_HTTP_PORT=${OTELCOL_HTTP_PORT:-14318}
OTELCOL_HEALTH_PORT=${OTELCOL_HEALTH_PORT:-13133}
OTELCOL_PROMETHEUS_PORT=${OTELCOL_PROMETHEUS_PORT:-18889}
OTELCOL_METRICS_PORT=${OTELCOL_METRICS_PORT:-18888}
JAEGER_UI_PORT=${JAEGER_UI_PORT:-16686}
JAEGER_QUERY_GRPC_PORT=${JAEGER_QUERY_GRPC_PORT:-16685}
JAEGER_HEALTH_PORT=${JAEGER_HEALTH_PORT:-13134}
JAEGER_OTLP_GRPC_PORT=${JAEGER_OTLP_GRPC_PORT:-24317}
JAEGER_OTLP_HTTP_PORT=${JAEGER_OTLP_HTTP_PORT:-24318}
JAEGER_METRICS_PORT=${JAEGER_METRICS_PORT:-14269}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-19090}
ALERTMANAGER_PORT=${ALERTMANAGER_PORT:-19093}
ALERT_WEBHOOK_URL=${ALERT_WEBHOOK_URL:-http://127.0.0.1:19095/alerts}
CACHE_BIN="${WABOT_CACHE_DIR:-$HOME/.cache/wabot}/bin"

if [ "$RUN_OBSERVABILITY" = 1 ] && [ -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
  # Our collector; its gRPC port only if the services were asked to speak gRPC.
  if [ "${OTEL_EXPORTER_OTLP_PROTOCOL:-http/protobuf}" = grpc ]; then
    export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTELCOL_GRPC_PORT"
  else
    export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTELCOL_HTTP_PORT"
  fi
fi
if [ "$RUN_OBSERVABILITY" = 1 ]; then
  # Exemplars (trace ids on latency buckets) stay in the collector's exporter
  # for one export interval only; twice Prometheus' 15s scrape interval makes
  # sure each one is scraped, and dashboards are fresher than with the 60s default.
  export OTEL_METRIC_EXPORT_INTERVAL=${OTEL_METRIC_EXPORT_INTERVAL:-30000}
fi
if [ -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
  # No collector: keep telemetry local instead of logging export errors.
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

app_pids=()   # ingest, worker: stopped first
infra_pids=() # redis and the observability backend: stopped once the apps are gone
stopping=0
stop_all() { # pid...
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
cleanup() {
  [ "$stopping" -eq 1 ] && return
  stopping=1
  echo "run: stopping..."
  stop_all "${app_pids[@]}"
  stop_all "${infra_pids[@]}"
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
  echo "run: $1 did not become ready at $2 (logs in $RUN_DIR/logs)" >&2
  return 1
}

need_bin() { # name path-or-empty hint
  if [ -z "$2" ] || [ ! -x "$2" ]; then
    echo "run: $1 not found${2:+ at $2}; $3 (or RUN_OBSERVABILITY=0)" >&2
    exit 1
  fi
}

mkdir -p "$RUN_DIR/redis" "$RUN_DIR/logs"
# Children run in their own sessions (setsid) so a Ctrl-C reaches them once,
# through cleanup(): a second signal would make the worker skip its drain.
setsid redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$RUN_DIR/redis" \
  --appendonly yes --save "" --daemonize no >"$RUN_DIR/logs/redis.log" 2>&1 &
infra_pids+=($!)

if [ "$RUN_OBSERVABILITY" = 1 ]; then
  OTELCOL_BIN=${OTELCOL_BIN:-$CACHE_BIN/otelcol-wabot}
  JAEGER_BIN=${JAEGER_BIN:-$CACHE_BIN/jaeger}
  PROMETHEUS_BIN=${PROMETHEUS_BIN:-$(command -v prometheus || true)}
  ALERTMANAGER_BIN=${ALERTMANAGER_BIN:-$(command -v prometheus-alertmanager || command -v alertmanager || true)}
  need_bin otelcol-wabot "$OTELCOL_BIN" "run scripts/build-otel-tools.sh"
  need_bin jaeger "$JAEGER_BIN" "run scripts/build-otel-tools.sh"
  need_bin prometheus "$PROMETHEUS_BIN" "apt-get install -y prometheus"
  need_bin alertmanager "$ALERTMANAGER_BIN" "apt-get install -y prometheus-alertmanager"
  mkdir -p "$RUN_DIR/otelcol" "$RUN_DIR/prometheus" "$RUN_DIR/alertmanager"

  # Jaeger: in-memory traces (empty after a restart), UI + API on JAEGER_UI_PORT.
  JAEGER_OTLP_GRPC_ENDPOINT="127.0.0.1:$JAEGER_OTLP_GRPC_PORT" \
  JAEGER_OTLP_HTTP_ENDPOINT="127.0.0.1:$JAEGER_OTLP_HTTP_PORT" \
  JAEGER_QUERY_HTTP_ENDPOINT="127.0.0.1:$JAEGER_UI_PORT" \
  JAEGER_QUERY_GRPC_ENDPOINT="127.0.0.1:$JAEGER_QUERY_GRPC_PORT" \
  JAEGER_HEALTH_ENDPOINT="127.0.0.1:$JAEGER_HEALTH_PORT" \
  JAEGER_METRICS_HOST=127.0.0.1 JAEGER_METRICS_PORT="$JAEGER_METRICS_PORT" \
    setsid "$JAEGER_BIN" --config "$ROOT/jaeger/config.yaml" >"$RUN_DIR/logs/jaeger.log" 2>&1 &
  infra_pids+=($!)

  # The collector: its Jaeger export queue and its log-records file live in RUN_DIR.
  OTELCOL_GRPC_ENDPOINT="127.0.0.1:$OTELCOL_GRPC_PORT" \
  OTELCOL_HTTP_ENDPOINT="127.0.0.1:$OTELCOL_HTTP_PORT" \
  JAEGER_OTLP_ENDPOINT="127.0.0.1:$JAEGER_OTLP_GRPC_PORT" \
  PROMETHEUS_EXPORTER_ENDPOINT="127.0.0.1:$OTELCOL_PROMETHEUS_PORT" \
  OTELCOL_HEALTH_ENDPOINT="127.0.0.1:$OTELCOL_HEALTH_PORT" \
  OTELCOL_METRICS_HOST=127.0.0.1 OTELCOL_METRICS_PORT="$OTELCOL_METRICS_PORT" \
  OTELCOL_STORAGE_DIR="$RUN_DIR/otelcol/storage" \
  OTELCOL_LOGS_FILE="$RUN_DIR/otelcol/logs.jsonl" \
    setsid "$OTELCOL_BIN" --config "$ROOT/otel-collector/config.yaml" \
    >"$RUN_DIR/logs/otelcol.log" 2>&1 &
  infra_pids+=($!)

  # Alertmanager reads no environment: a copy of its config with the webhook
  # placeholder replaced. No cluster listener (it would bind 0.0.0.0:9094).
  sed "s|http://alert-webhook:9095/alerts|$ALERT_WEBHOOK_URL|" \
    "$ROOT/prometheus/alertmanager.yml" >"$RUN_DIR/alertmanager/alertmanager.yml"
  setsid "$ALERTMANAGER_BIN" --config.file="$RUN_DIR/alertmanager/alertmanager.yml" \
    --storage.path="$RUN_DIR/alertmanager/data" \
    --web.listen-address="127.0.0.1:$ALERTMANAGER_PORT" --cluster.listen-address= \
    >"$RUN_DIR/logs/alertmanager.log" 2>&1 &
  infra_pids+=($!)

  # Prometheus: a copy of prometheus.yml with the compose targets replaced (see
  # its header), next to an unchanged copy of the alert rules.
  sed -e "s|\"otel-collector:8889\"|\"127.0.0.1:$OTELCOL_PROMETHEUS_PORT\"|" \
    -e "s|\"otel-collector:8888\"|\"127.0.0.1:$OTELCOL_METRICS_PORT\"|" \
    -e "s|\"alertmanager:9093\"|\"127.0.0.1:$ALERTMANAGER_PORT\"|" \
    "$ROOT/prometheus/prometheus.yml" >"$RUN_DIR/prometheus/prometheus.yml"
  cp "$ROOT/prometheus/alerts.yml" "$RUN_DIR/prometheus/alerts.yml"
  setsid "$PROMETHEUS_BIN" --config.file="$RUN_DIR/prometheus/prometheus.yml" \
    --storage.tsdb.path="$RUN_DIR/prometheus/data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
    --enable-feature=exemplar-storage >"$RUN_DIR/logs/prometheus.log" 2>&1 &
  infra_pids+=($!)
fi

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

if [ "$RUN_OBSERVABILITY" = 1 ]; then
  # Up before the services start exporting, so their first spans are kept.
  wait_ready jaeger "http://127.0.0.1:$JAEGER_HEALTH_PORT/status"
  wait_ready collector "http://127.0.0.1:$OTELCOL_HEALTH_PORT/"
  wait_ready alertmanager "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready"
  wait_ready prometheus "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
fi

"$VENV_BIN/migrate"
setsid "$VENV_BIN/ingest" & app_pids+=($!)
setsid "$VENV_BIN/worker" & app_pids+=($!)
wait_ready ingest "http://127.0.0.1:$INGEST_PORT/ready"
wait_ready worker "http://127.0.0.1:$WORKER_HEALTH_PORT/health"

cat <<MSG
run: the pipeline is up
  ingest   http://127.0.0.1:$INGEST_PORT   (POST /webhooks/evolution, GET /health, /ready)
  worker   http://127.0.0.1:$WORKER_HEALTH_PORT/health
  redis    $REDIS_URL
  postgres $DATABASE_URL
MSG
if [ "$RUN_OBSERVABILITY" = 1 ]; then
  cat <<MSG
  jaeger        http://127.0.0.1:$JAEGER_UI_PORT   (UI; API: /api/traces/<trace_id>, /api/traces?service=worker)
  prometheus    http://127.0.0.1:$PROMETHEUS_PORT   (alerts: /alerts; exemplar storage on)
  alertmanager  http://127.0.0.1:$ALERTMANAGER_PORT   (notifications go to $ALERT_WEBHOOK_URL)
  collector     http://127.0.0.1:$OTELCOL_HEALTH_PORT/   (health; OTLP http://127.0.0.1:$OTELCOL_HTTP_PORT, grpc 127.0.0.1:$OTELCOL_GRPC_PORT)
  log records   $RUN_DIR/otelcol/logs.jsonl   (grep <trace_id>)
  services export OTLP to $OTEL_EXPORTER_OTLP_ENDPOINT
MSG
fi
cat <<MSG
Send a sample webhook:
  curl -sS -X POST http://127.0.0.1:$INGEST_PORT/webhooks/evolution \\
    -H 'Content-Type: application/json' -H 'X-Webhook-Secret: $WEBHOOK_SECRET' \\
    --data @../shared/evolution-webhooks/messages-upsert-text.json
Press Ctrl-C to stop.
MSG
# Returns when any process exits (or a signal arrives); the trap stops the rest.
wait -n "${app_pids[@]}" "${infra_pids[@]}" || true
