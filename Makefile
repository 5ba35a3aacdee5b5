# Two commands set everything up on a fresh machine: `make run` and `make test`.
# uv from PATH, else as a module of the machine's python3 (bootstrap installs it).
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PYTEST_ARGS ?=

.PHONY: bootstrap run test test-fast test-image lint dashboards typecheck unit bench bench-deploy clean

bootstrap:
	@scripts/bootstrap.sh

## run: Redis, PostgreSQL, migrations, ingest, worker and the observability backend, natively
## (tests/support/stack/run.py; Ctrl-C stops all, services first)
run: bootstrap
	@scripts/run-local.sh

## test: install what is missing, then lint, type-check and run every test
test: bootstrap lint typecheck
	$(UV) run pytest $(PYTEST_ARGS)

## test-image: the image test alone (tests/image/; `make test` runs it too): the Dockerfile
## built with podman against local base images (cached in ~/.cache/wabot/image), then
## migrate, ingest and worker run from it as uid 10001
test-image: bootstrap
	$(UV) run pytest tests/image $(PYTEST_ARGS)

## test-fast: the in-process tests only (tests/unit/, real Redis and PostgreSQL; under a minute)
test-fast:
	$(UV) run pytest tests/unit -m "not process" $(PYTEST_ARGS)

# Every shell script, tracked or new, found by its sh/bash shebang (so a new
# script is linted without being listed here).
SHELL_SCRIPTS = $(shell git ls-files --cached --others --exclude-standard | xargs awk \
  'BEGIN { for (i = 1; i < ARGC; i++) if ((getline line < ARGV[i]) > 0 \
  && line ~ /^\#!.*[\/ ](ba)?sh( |$$)/) print ARGV[i] }' | sort -u)

## lint: ruff (Python), shellcheck (every shell script), hadolint (the Dockerfile)
lint:
	$(UV) run ruff check services shared tests bench grafana
	$(UV) run ruff format --check services shared tests bench grafana
	shellcheck $(SHELL_SCRIPTS)
	$(UV) run hadolint Dockerfile

## dashboards: regenerate grafana/dashboards/*.json from grafana/generate.py
dashboards:
	$(UV) run python grafana/generate.py

typecheck:
	$(UV) run mypy services shared grafana/generate.py

## bench: wabot against its peers in one run, each target of issue 11 with its measured
## ratio or figure (about 20 minutes on 2 cores; writes bench/results/bench-*.json and .md).
## Installs what it needs (scripts/bench-bootstrap.sh); BENCH_ARGS are passed on (--help).
.PHONY: bench-quick bench-profile
bench: bootstrap
	@scripts/bench-bootstrap.sh
	$(UV) run --frozen --group bench python -m bench.pipeline $(BENCH_ARGS)

## bench-quick: the same, short (a few minutes), to iterate on performance
bench-quick: bootstrap
	@scripts/bench-bootstrap.sh
	$(UV) run --frozen --group bench python -m bench.pipeline --quick $(BENCH_ARGS)

## bench-profile: py-spy profiles of ingest and worker under load (bench/results/profile-*/)
bench-profile: bootstrap
	@scripts/bench-bootstrap.sh
	$(UV) run --frozen --group bench python -m bench.pipeline --quick --only profile $(BENCH_ARGS)

## bench-deploy: deploys under load behind HAProxy: fly's blue-green and rolling, a canary,
## start-ups (writes bench/results/deploy-*.json; tests/support/deploys.py has the models)
bench-deploy: bootstrap
	$(UV) run python -m bench.deploy

clean:
	rm -rf .run .mypy_cache .ruff_cache .pytest_cache bench/results
