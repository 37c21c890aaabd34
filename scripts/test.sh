#!/usr/bin/env bash
# The test suite: set up .venv with the test extras if needed, then run pytest (slow tests excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh test
exec .venv/bin/python -m pytest "$@"
