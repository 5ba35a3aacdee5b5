# Container image for wabot: ONE image for all three console scripts of the uv
# workspace (see pyproject.toml):
#   ingest    the webhook receiver (default CMD; port INGEST_PORT=8000)
#   worker    the stream consumer (health server on WORKER_HEALTH_PORT=8001;
#             `worker --check` is the container health check, `worker redrive`
#             re-drives dead letters)
#   migrate   applies migrations/*.sql (MIGRATIONS_DIR=/app/migrations)
# Used by docker-compose.yml (ingest, worker, migrate) and by fly/*.toml.
#
# Dependencies come from uv.lock exactly (`uv sync --frozen --no-dev`); the
# workspace packages are installed non-editable into /app/.venv, which is the
# only thing the runtime stage takes from the build stage. The image holds no
# secrets: every setting (DATABASE_URL, REDIS_URL, WEBHOOK_SECRET, ...) comes
# from the environment at run time. It runs as an unprivileged user (uid 10001).
#
#   docker build -t wabot:dev .
#   docker run --rm -e REDIS_URL=... -e WEBHOOK_SECRET=... wabot:dev            # ingest
#   docker run --rm -e REDIS_URL=... -e DATABASE_URL=... wabot:dev worker
#   docker run --rm -e DATABASE_URL=... wabot:dev migrate
#
# The base images are build arguments whose defaults are the official images
# (pinned in versions.env): `make test-image` (tests/image/) builds this file
# with --build-arg PYTHON_IMAGE=/UV_IMAGE= naming local images it imports itself.

# uv itself, pinned (the same version the project is developed with), and the
# Python 3.11 base of both stages below.
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

COPY --from=uv /uv /usr/local/bin/uv

# Use the image's interpreter (never download one), copy files out of the cache
# instead of hard-linking, precompile bytecode so the runtime user never writes.
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.11 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# 1) Third-party dependencies only, from the lock file: this layer is reused
#    until pyproject.toml/uv.lock change. A workspace sync needs every member's
#    pyproject.toml, not its sources.
COPY pyproject.toml uv.lock ./
COPY shared/pyproject.toml shared/pyproject.toml
COPY services/ingest/pyproject.toml services/ingest/pyproject.toml
COPY services/worker/pyproject.toml services/worker/pyproject.toml
RUN uv sync --frozen --no-dev --no-install-workspace

# 2) The workspace packages themselves, installed as regular (non-editable)
#    packages so the venv does not need the sources next to it. uv's lock file
#    in the venv is world-writable (0666) and the runtime has no uv: dropped.
COPY shared/src shared/src
COPY services/ingest/src services/ingest/src
COPY services/worker/src services/worker/src
RUN uv sync --frozen --no-dev --no-editable \
    && rm -f /app/.venv/.lock

# -------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 wabot \
    && useradd --system --uid 10001 --gid wabot --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin wabot

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
ENV MIGRATIONS_DIR=/app/migrations

WORKDIR /app

# Owned by root, read-only for the service user.
COPY --from=build /app/.venv /app/.venv
COPY migrations /app/migrations

USER 10001:10001

# ingest's listener and the worker's /health server (defaults of INGEST_PORT
# and WORKER_HEALTH_PORT).
EXPOSE 8000 8001

# Exec form: the console script is PID 1 and receives SIGTERM itself, which
# starts its graceful drain (see README "Deploys").
CMD ["ingest"]
