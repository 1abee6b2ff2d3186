"""`aot-ray submit CLUSTER.yaml SWEEP.yaml`: validate both files here, sync the sweep to the head, and start the
driver there detached from the SSH session (`ray submit --tmux`), with Ray's own cluster launcher. The script it
submits is the package's own head entry (aot_ray/cluster/head.py), so an installed `aot-ray` needs no checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from ..errors import AotError
from ..sweep import ResolvedSweep

# the head's entry script, by path: `ray submit` copies the file itself to the head
ENTRY = Path(__file__).with_name("head.py").resolve()


def load_cluster(path: str) -> dict:
    """Read a cluster YAML and check it against the cluster config schema Ray ships with its autoscaler
    (`ray/autoscaler/ray-schema.json`, the schema `ray up` validates with), before anything reaches a cluster."""
    import json
    from importlib import resources

    import jsonschema

    p = Path(path)
    if not p.is_file():
        raise AotError(f"{path}: no such cluster file (see cluster/aws.yaml, gcp.yaml, onprem.yaml)")
    try:
        cfg = yaml.safe_load(p.read_text())
        schema = json.loads(resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())
        jsonschema.validate(cfg, schema)
    except Exception as e:  # yaml and jsonschema errors: one line naming the file
        raise AotError(f"{path}: not a valid Ray cluster config: {str(e).strip().splitlines()[0]}") from None
    return cfg


def rel_path(sweep: str) -> str:
    """Where the sweep file lands in the head's ~/aot_ray."""
    p = Path(sweep)
    return f"sweeps/{p.name}" if p.is_absolute() or ".." in p.parts else p.as_posix()


def commands(cluster: str, sweep: str, run_args: list[str], ray: str = "ray") -> list[list[str]]:
    """The `ray` invocations: sync the sweep file into the project on the head, then run the entry in tmux."""
    rel = rel_path(sweep)
    return [
        [ray, "rsync-up", cluster, str(sweep), f"~/aot_ray/{rel}"],
        [ray, "submit", "--tmux", cluster, str(ENTRY), rel, *(["--", *run_args] if run_args else [])],
    ]


def submit(cluster: str, sweep: ResolvedSweep, run_args: list[str], say=print) -> None:
    """Run the resolved sweep (loaded here: a bad one never reaches the cluster) on the cluster's head."""
    cfg = load_cluster(cluster)
    ray = shutil.which("ray")
    if ray is None:
        raise AotError("the `ray` command is not on PATH; install aot-ray into this environment")
    for cmd in commands(cluster, sweep.source, run_args, ray):
        say("$ " + " ".join(cmd))
        done = subprocess.run(cmd)
        if done.returncode != 0:
            raise AotError(f"`ray {cmd[1]} {cluster} ...` failed with exit code {done.returncode} (Ray's output is "
                           f"above); if the cluster is not up: ray up {cluster}")
    name = cfg.get("cluster_name", "?")
    say(f"sweep {sweep.name} is running on cluster {name}, detached in tmux on the head.")
    say(f"  watch it:      ray attach {cluster} --tmux")
    say(f"  dashboard:     ray dashboard {cluster}")
    say(f"  MLflow UI:     ray exec {cluster} 'cat ~/.aot_ray/mlflow_uri' prints the server's address on the head; "
        f"tunnel its port (ssh -L 5000:THAT_ADDRESS:5000 to the head), then open http://127.0.0.1:5000")
    say(f"  status:        ray exec {cluster} 'aot-ray status ~/aot_ray/{rel_path(sweep.source)} "
        f"--tracking-uri $(cat ~/.aot_ray/mlflow_uri)'")
    say("  resume:        run the same `aot-ray submit` again: finished trials are kept, the rest resume")
