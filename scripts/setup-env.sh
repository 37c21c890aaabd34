#!/usr/bin/env bash
# Create (or reuse) the local virtual environment .venv and install AutoSeg into it.
# Usage: scripts/setup-env.sh [test|bench]   (everything for training and the demo: the "train" extra; "test"
# adds pytest, slicer-core and ONNX Runtime; "bench" adds psutil for bench/). Prediction alone needs only
# `pip install .` (OpenVINO, no PyTorch).
# Idempotent: a stamp file records what was installed; nothing is reinstalled when pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
case "$extra" in ""|test|bench) ;; *) echo "unknown set-up '$extra': expected test or bench" >&2; exit 2;; esac
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || { echo "AutoSeg needs Python 3.10 or newer; $("$py" --version 2>&1) found. Set PYTHON=/path/to/python3.10+." >&2; exit 1; }
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.autoseg-installed-${extra:-main}"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: an unpinned torch would pull several GB of CUDA packages on a CPU machine.
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
if [ -n "$extra" ]; then
    .venv/bin/python -m pip install -q -e ".[train,$extra]"
else
    .venv/bin/python -m pip install -q -e ".[train]"
fi
echo "$want" > "$stamp"
