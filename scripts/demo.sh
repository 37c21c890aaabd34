#!/usr/bin/env bash
# The main job: set up .venv if needed, then run the end-to-end demo on a generated dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh
exec .venv/bin/autoseg demo "$@"
