#!/usr/bin/env bash
# `make run`: the whole pipeline natively. The work is done by the test harness
# (tests/support/stack/run.py, which documents what it starts, its ports and
# overrides), so `make run`, the tests and the benchmark start the same
# processes the same way. exec: Ctrl-C and SIGTERM reach it directly.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tests.support.stack.run "$@"
