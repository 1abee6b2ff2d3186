#!/usr/bin/env bash
# Create .venv and install aot_ray with its dev extra. torch goes first, pinned, so pip keeps that build
# (on a CPU-only machine the CPU wheel) instead of pulling the newest CUDA build as a dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
log=$(mktemp)
pip_install() {
  if ! .venv/bin/pip install -q "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither" "$log" >&2
    echo "setup: pip install $* failed" >&2
    exit 1
  fi
}
pip_install torch==2.13.0
pip_install -c constraints.txt -e '.[dev]'
rm -f "$log"
.venv/bin/python -c "import aot_ray, torch, ray, mlflow, transformers; print('aot_ray ready: torch', torch.__version__, '| ray', ray.__version__, '| mlflow', mlflow.__version__)"
