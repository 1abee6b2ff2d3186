#!/usr/bin/env bash
# Record the address of the Ray head just started here (head_start_ray_commands, right after `ray start --head`)
# in ~/.aot_ray/ray_address, so the head's entry (aot_ray/cluster/head.py) joins this cluster and not whichever Ray on
# the machine started last, as `--address auto` would.
set -euo pipefail
project=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p ~/.aot_ray
"$project/.venv/bin/python" - <<'PYEOF'
import os
from pathlib import Path

from ray._common.utils import get_ray_address_file  # where `ray start --head` writes the GCS address

address = Path(get_ray_address_file(None)).read_text().strip()
Path(os.path.expanduser("~/.aot_ray/ray_address")).write_text(address + "\n")
print(f"ray head recorded at {address}")
PYEOF
