"""`aot-ray submit CLUSTER.yaml SWEEP.yaml`: validate both files here, sync the sweep to the head, and start the
driver there detached from the SSH session (`ray submit --tmux`), with Ray's own cluster launcher."""

from __future__ import annotations

import copy
import logging
import shutil
import subprocess
from pathlib import Path

import yaml

from .errors import AotError

ENTRY = Path(__file__).resolve().parent.parent / "cluster" / "entry.py"


def load_cluster(path: str) -> dict:
    """Read a cluster YAML and check it with Ray's autoscaler config validation (as `ray up` does)."""
    p = Path(path)
    if not p.is_file():
        raise AotError(f"{path}: no such cluster file (see cluster/aws.yaml, gcp.yaml, onprem.yaml)")
    try:
        cfg = yaml.safe_load(p.read_text())
        from ray.autoscaler._private.util import prepare_config, validate_config

        quiet = logging.getLogger("ray.autoscaler")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # Ray reports the defaults it fills in at INFO on stderr
        try:
            prepared = prepare_config(copy.deepcopy(cfg))
            validate_config(prepared)
        finally:
            quiet.setLevel(level)
    except Exception as e:  # yaml, jsonschema and Ray's own errors: one line naming the file
        raise AotError(f"{path}: not a valid Ray cluster config: {str(e).strip().splitlines()[0]}") from None
    return prepared


def commands(cluster: str, sweep: str, run_args: list[str], ray: str = "ray") -> list[list[str]]:
    """The `ray` invocations: sync the sweep file into the project on the head, then run the entry in tmux."""
    p = Path(sweep)
    rel = f"sweeps/{p.name}" if p.is_absolute() else p.as_posix()  # where it lands in the head's ~/aot_ray
    return [
        [ray, "rsync_up", cluster, str(sweep), f"~/aot_ray/{rel}"],
        [ray, "submit", "--tmux", cluster, str(ENTRY), rel, *run_args],
    ]


def submit(cluster: str, sweep: str, run_args: list[str], say=print) -> None:
    from .spec import load_sweep

    cfg = load_cluster(cluster)
    spec = load_sweep(sweep)  # a bad sweep fails here, before anything reaches the cluster
    ray = shutil.which("ray")
    if ray is None:
        raise AotError("the `ray` command is not on PATH; install aot-ray into this environment")
    for cmd in commands(cluster, sweep, run_args, ray):
        say("$ " + " ".join(cmd))
        done = subprocess.run(cmd)
        if done.returncode != 0:
            raise AotError(f"`{' '.join(cmd[:3])} ...` failed with exit code {done.returncode}; is the cluster up "
                           f"(ray up {cluster})?")
    name = cfg.get("cluster_name", "?")
    say(f"sweep {spec.name} is running on cluster {name}, detached in tmux on the head.")
    say(f"  watch it:      ray attach {cluster} --tmux")
    say(f"  dashboard:     ray dashboard {cluster}")
    say(f"  MLflow UI:     ray attach {cluster} -p 5000   (the server listens on the head's private address; or "
        f"ssh -L 5000:HEAD_PRIVATE_IP:5000 to the head), then http://127.0.0.1:5000")
    say(f"  status:        ray exec {cluster} 'aot-ray status ~/aot_ray/{Path(sweep).as_posix()} "
        f"--tracking-uri http://$(hostname -I | cut -d\" \" -f1):5000'")
    say(f"  resume:        run the same `aot-ray submit` again: finished trials are kept, the rest resume")
