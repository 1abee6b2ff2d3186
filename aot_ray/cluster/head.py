"""The driver's entry on a cluster's head node: `aot-ray run SWEEP` with the cluster's own defaults.

It is reached three ways, all ending here:
  ray submit CLUSTER.yaml sweeps/sizes.yaml [run options]      the head's login `python` (cluster/bin/python)
                                                               hands a sweep YAML to `python -m aot_ray.cluster.head`
  ray submit CLUSTER.yaml cluster/entry.py sweeps/sizes.yaml   the explicit form; `aot-ray submit` runs this
                                                               file itself (the package ships it)
  python -m aot_ray.cluster.head sweeps/sizes.yaml                      on the head, by hand
Defaults are what the head recorded when it started, not guesses: the GCS address of the Ray it started
(cluster/record_ray.sh; `--address auto` would join whichever Ray on the machine started last) and the address
the MLflow server was bound to (cluster/start_mlflow.sh). `--address` / `--tracking-uri` (or $RAY_ADDRESS /
$MLFLOW_TRACKING_URI) override them. The driver runs in the project folder, so relative paths in a sweep mean
what they mean in a checkout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT = Path(os.environ.get("AOT_RAY_PROJECT", Path.home() / "aot_ray"))
STATE = Path.home() / ".aot_ray"
RAY_ADDRESS_FILE = "ray_address"
MLFLOW_URI_FILE = "mlflow_uri"
USAGE = "usage: python -m aot_ray.cluster.head SWEEP.yaml [aot-ray run options]"


class HeadError(Exception):
    """What the head lacks to run a sweep, in one line."""


def recorded(name: str, flag: str, recorder: str) -> str:
    p = STATE / name
    try:
        value = p.read_text().strip()
    except OSError:
        value = ""
    if not value:
        raise HeadError(f"{p} is missing: this head did not record it at start (cluster/{recorder} in "
                        f"head_start_ray_commands; rerun `ray up`), or pass {flag}")
    return value


def run_args(argv: list[str]) -> list[str]:
    """The `aot-ray run` argument list for `SWEEP [options]` on this head."""
    if not argv or argv[0].startswith("-"):
        raise HeadError(USAGE)
    sweep, rest = Path(argv[0]).expanduser(), argv[1:]
    if not sweep.is_file() and (PROJECT / sweep).is_file():
        sweep = PROJECT / sweep
    args = ["run", str(sweep.resolve()) if sweep.is_file() else str(sweep)]
    if not any(a == "--address" or a.startswith("--address=") for a in rest) and not os.environ.get("RAY_ADDRESS"):
        args += ["--address", recorded(RAY_ADDRESS_FILE, "--address", "record_ray.sh")]
    if not any(a == "--tracking-uri" or a.startswith("--tracking-uri=") for a in rest) \
            and not os.environ.get("MLFLOW_TRACKING_URI"):
        args += ["--tracking-uri", recorded(MLFLOW_URI_FILE, "--tracking-uri", "start_mlflow.sh")]
    return args + rest


def main(argv: list[str]) -> int:
    try:
        args = run_args(argv)
    except HeadError as e:
        print(f"aot-ray: error: {e}", file=sys.stderr)
        return 2
    if PROJECT.is_dir():
        os.chdir(PROJECT)  # before the sweep is resolved: its relative paths are the project's
    # the package's own modules, imported by name: this file also runs as a copied script (`ray submit`)
    from aot_ray.execution.interrupt import terminable
    from aot_ray.sweep import RunOptions, resolve, run_command
    from aot_ray.sweep.commands import guarded
    from aot_ray.sweep.options import parse_run

    def drive() -> int:
        flags = parse_run(args[1], args[2:])
        sweep = resolve(flags.sweep, sets=flags.sets, tracking_uri=flags.tracking_uri, storage=flags.storage)
        return run_command(sweep, RunOptions.of(flags))

    with terminable():
        return guarded(drive)


if __name__ == "__main__":
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        # run as a copied script (`ray submit` puts it in ~, where ~/aot_ray is the project folder, which would
        # shadow the installed package as a namespace package): drop the script's folder from the path
        sys.path.pop(0)
    sys.exit(main(sys.argv[1:]))
