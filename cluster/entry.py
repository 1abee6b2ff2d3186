"""The script `ray submit` runs on the head node: `python ~/entry.py SWEEP.yaml [aot-ray run options]`.

`ray submit` copies only this file to the head and runs it with a bare `python` in the login environment, so
the sweep path is looked up relative to the project that file_mounts put at ~/aot_ray. Defaults: the running
cluster (`--address auto`) and the MLflow server that cluster/start_mlflow.sh started on the head.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

PROJECT = Path(os.environ.get("AOT_RAY_PROJECT", Path.home() / "aot_ray"))


def private_ip() -> str:
    try:
        return subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True).stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return socket.gethostbyname(socket.gethostname())


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python entry.py SWEEP.yaml [aot-ray run options]", file=sys.stderr)
        return 2
    sweep, rest = Path(argv[0]), argv[1:]
    if not sweep.is_file() and (PROJECT / sweep).is_file():
        sweep = PROJECT / sweep
    args = ["run", str(sweep)]
    if "--address" not in rest:
        args += ["--address", "auto"]
    if "--tracking-uri" not in rest and not os.environ.get("MLFLOW_TRACKING_URI"):
        args += ["--tracking-uri", f"http://{private_ip()}:{os.environ.get('AOT_MLFLOW_PORT', '5000')}"]
    from aot_ray.cli import main as aot_main

    return aot_main(args + rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
