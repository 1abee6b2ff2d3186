"""A Ray head started with `ray start --head` on 127.0.0.1 and an MLflow server on 127.0.0.1: a tiny sweep run
with `aot-ray run --address` and another through `ray job submit`; the runs are read back over MLflow's REST API."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from ray_nodes import RayNodes
from test_faults_integration import spec_dict
from test_outage_integration import free_port, start_server, stop_server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("head")
    nodes, dash = RayNodes(), free_port()
    try:
        nodes.head(2, dashboard_port=dash)
        mport = free_port()
        server = start_server(tmp, mport)
        try:
            yield {"env": nodes.env, "address": nodes.address, "dashboard": f"http://127.0.0.1:{dash}",
                   "mlflow": f"http://127.0.0.1:{mport}", "tmp": tmp}
        finally:
            stop_server(server)
    finally:
        nodes.stop()  # this test's Ray alone


def rest(base, path, body=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def runs_over_rest(base, sweep):
    exp = rest(base, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={sweep}")["experiment"]
    runs = rest(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})
    out = []
    for r in runs["runs"]:
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        metrics = {m["key"]: m["value"] for m in r["data"].get("metrics", [])}
        out.append((r["info"]["status"], tags, metrics))
    return out


def check_sweep(base, sweep):
    runs = runs_over_rest(base, sweep)
    parents = [r for r in runs if r[1].get("aot.role") == "sweep"]
    trials = [r for r in runs if r[1].get("aot.role") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    assert {t[1]["direction"] for t in trials} == {"forward", "backward"}
    assert all(t[0] == "FINISHED" and t[2]["val_loss"] > 0 and t[2]["n_params"] > 0 for t in trials)


def test_run_with_address_against_a_started_head(head):
    raw = spec_dict("headrun", steps=20)
    f = head["tmp"] / "headrun.yaml"
    f.write_text(yaml.safe_dump(raw))
    p = subprocess.run([str(BIN / "aot-ray"), "run", str(f), "--address", head["address"], "--tracking-uri",
                        head["mlflow"], "--storage", str(head["tmp"] / "r"), "--quiet"],
                       env=head["env"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Arrow of Time per pair" in p.stdout
    check_sweep(head["mlflow"], "headrun")


def test_ray_job_submit_with_working_dir(head):
    raw = spec_dict("headjob", steps=20)
    f = head["tmp"] / "headjob.yaml"
    f.write_text(yaml.safe_dump(raw))
    runtime_env = {"excludes": [".venv", ".git", "aot_results", "mlflow.db", "mlartifacts", "**/__pycache__"]}
    p = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", head["dashboard"], "--working-dir", str(ROOT),
                        "--runtime-env-json", json.dumps(runtime_env), "--",
                        "python", "-m", "aot_ray.cli", "run", str(f), "--tracking-uri", head["mlflow"],
                        "--storage", str(head["tmp"] / "r"), "--quiet"],
                       env=head["env"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "succeeded" in (p.stdout + p.stderr)
    check_sweep(head["mlflow"], "headjob")


def test_run_without_address_starts_its_own_ray_beside_a_running_head(head):
    """Another Ray is running on the machine (the head): `aot-ray run` without --address starts a Ray of its
    own instead of attaching to it; its trials run on nodes the head does not have."""
    raw = spec_dict("ownray", steps=10)
    f = head["tmp"] / "ownray.yaml"
    f.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in head["env"].items() if k != "RAY_ADDRESS"}
    p = subprocess.run([str(BIN / "aot-ray"), "run", str(f), "--num-cpus", "1", "--tracking-uri", head["mlflow"],
                        "--storage", str(head["tmp"] / "own"), "--quiet"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    nodes = subprocess.run([sys.executable, "-c", "import ray; ray.init(address=%r, logging_level='ERROR'); "
                            "print(' '.join(n['NodeID'] for n in ray.nodes()))" % head["address"]],
                           env=env, capture_output=True, text=True, timeout=120).stdout.split()
    ran_on = {t[1]["aot.node"] for t in runs_over_rest(head["mlflow"], "ownray") if t[1].get("aot.role") == "trial"}
    assert nodes and ran_on and not ran_on & set(nodes)
