#!/usr/bin/env bash
# Install aot_ray on one cluster node (the `setup_commands` of every cluster YAML): a venv of the project in
# ~/aot_ray/.venv made by scripts/setup.sh, then the login environment that Ray's SSH commands get.
#   bash ~/aot_ray/cluster/setup_node.sh [EXTRAS]      EXTRAS: s3, gcs or nothing
# Why a venv: `pip install --user` is refused by PEP 668 on current Debian/Ubuntu system Pythons and inside any
# venv, and `~/.local` would be shared by nodes that share a home. `ray submit` and `ray down` run bare `python`
# and `ray` in `bash --login -i`, so ~/.bashrc puts cluster/bin (the sweep-aware `python`, the `ray` whose stop
# also stops the head's MLflow) and the venv first on PATH, with Ray's token authentication.
set -euo pipefail
cd "$(dirname "$0")/.."
project=$(pwd)
PY=${PYTHON:-python3}
if ! "$PY" -c "import ensurepip, venv" >/dev/null 2>&1; then
  # Debian/Ubuntu ship venv support apart; cloud images give the login user passwordless sudo
  sudo -n apt-get install -y -qq python3-venv >/dev/null || {
    echo "setup_node: $PY cannot make a venv; install python3-venv on this machine" >&2; exit 1; }
fi
AOT_EXTRAS=${1:-} PYTHON=$PY ./scripts/setup.sh
mkdir -p ~/.aot_ray
marker="# aot_ray cluster environment"
line="export PATH=\"$project/cluster/bin:$project/.venv/bin:\$PATH\" RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=\$HOME/.aot_ray/ray_auth_token  $marker"
touch ~/.bashrc
if ! grep -qxF "$line" ~/.bashrc; then
  grep -vF "$marker" ~/.bashrc > ~/.bashrc.aot_ray.tmp || true  # a line from an older project path goes
  echo "$line" >> ~/.bashrc.aot_ray.tmp
  mv ~/.bashrc.aot_ray.tmp ~/.bashrc
fi
echo "setup_node: $project/.venv on the login PATH of $(whoami)@$(hostname)"
