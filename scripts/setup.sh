#!/usr/bin/env bash
# Create .venv and install aot_ray. torch goes first, pinned, so pip keeps that build instead of pulling the
# newest CUDA build as a dependency. The same script installs a cluster node (cluster/setup_node.sh).
#   PYTHON           the interpreter that makes the venv (default python3)
#   AOT_EXTRAS       the project's extras, comma-separated (default dev; a cluster node: s3, gcs or none)
#   AOT_TORCH_INDEX  a package index for torch alone, e.g. PyTorch's CPU index on a CPU-only machine (saves the
#                    GBs of the CUDA build); unset: pip's own choice (PyPI's Linux wheel is the CUDA build)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${AOT_EXTRAS-dev}
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
if [ -n "${AOT_TORCH_INDEX:-}" ]; then
  pip_install torch==2.13.0 --index-url "$AOT_TORCH_INDEX"
else
  pip_install torch==2.13.0
fi
pip_install -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"
rm -f "$log"
# A GPU node with a CPU build of torch would train on the CPU and waste the GPU: refuse it here.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  .venv/bin/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "setup: this machine has a GPU but torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') cannot use it; unset AOT_TORCH_INDEX or point it at a CUDA index" >&2
    exit 1; }
fi
.venv/bin/python -c "import aot_ray, torch, ray, mlflow, transformers; print('aot_ray ready: torch', torch.__version__, '(cuda)' if torch.cuda.is_available() else '(cpu)', '| ray', ray.__version__, '| mlflow', mlflow.__version__)"
