#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with torch, triton and the project.
# torch is installed first and pinned (CPU build 2.13.0 by default; set TORCH_SPEC to change,
# e.g. TORCH_SPEC="torch==2.11.0" on a CUDA machine): left to the project's loose requirement,
# pip would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "ready: source .venv/bin/activate"
