"""Cluster YAMLs pass Ray's own autoscaler validation; `aot-ray submit` validates, syncs and submits."""

import copy
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("name", ["aws", "gcp", "onprem"])
def test_cluster_yaml_passes_ray_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / f"{name}.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    if name != "onprem":  # cloud heads run the driver and MLflow, never trials
        head = prepared["available_node_types"][prepared["head_node_type"]]
        assert head["max_workers"] == 0 and head["resources"] == {"CPU": 0}
    text = (ROOT / "cluster" / f"{name}.yaml").read_text()
    assert "--dashboard-host=127.0.0.1" in text and "RAY_AUTH_MODE=token" in text  # nothing public, tokens on
    assert "start_mlflow.sh" in text
    if name == "onprem":  # node types come from the listed machines
        assert prepared["available_node_types"]["local.cluster.node"]["min_workers"] == len(cfg["provider"]["worker_ips"])
        assert not any("ray stop" in c for c in cfg["worker_start_ray_commands"])


def test_mlflow_start_script_binds_to_a_private_address():
    text = (ROOT / "cluster" / "start_mlflow.sh").read_text()
    assert "0.0.0.0" not in text.replace("never 0.0.0.0", "") and "hostname -I" in text


@pytest.fixture
def fake_ray(tmp_path, monkeypatch):
    log = tmp_path / "calls.txt"
    exe = tmp_path / "bin" / "ray"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    return log


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "aot_ray.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=os.environ.copy())


def test_submit_syncs_the_sweep_and_runs_the_entry_in_tmux(fake_ray):
    p = run_cli("submit", "cluster/aws.yaml", "sweeps/quickstart.yaml", "--", "--storage", "s3://b/aot")
    assert p.returncode == 0, p.stderr
    calls = fake_ray.read_text().splitlines()
    assert calls[0] == "rsync_up cluster/aws.yaml sweeps/quickstart.yaml ~/aot_ray/sweeps/quickstart.yaml"
    assert calls[1] == (f"submit --tmux cluster/aws.yaml {ROOT / 'cluster' / 'entry.py'} sweeps/quickstart.yaml "
                        f"--storage s3://b/aot")
    assert "ray attach cluster/aws.yaml --tmux" in p.stdout and "resume" in p.stdout


@pytest.mark.parametrize("args,needle", [
    (["submit", "cluster/nope.yaml", "sweeps/quickstart.yaml"], "cluster/nope.yaml: no such cluster file"),
    (["submit", "sweeps/quickstart.yaml", "sweeps/quickstart.yaml"], "not a valid Ray cluster config"),
    (["submit", "cluster/aws.yaml", "sweeps/nope.yaml"], "sweeps/nope.yaml: no such sweep file"),
])
def test_submit_rejects_bad_files_before_touching_the_cluster(fake_ray, args, needle):
    p = run_cli(*args)
    assert p.returncode == 2 and needle in p.stderr and p.stderr.count("\n") == 1
    assert not fake_ray.exists()


def test_entry_script_defaults_to_the_running_cluster_and_head_mlflow(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "cluster"))
    try:
        import entry
    finally:
        sys.path.pop(0)
    seen = {}
    monkeypatch.setattr("aot_ray.cli.main", lambda argv: seen.setdefault("argv", argv) and 0)
    monkeypatch.setattr(entry, "PROJECT", ROOT)
    monkeypatch.setattr(entry, "private_ip", lambda: "10.1.2.3")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    entry.main(["sweeps/quickstart.yaml", "--storage", "s3://b/aot"])
    assert seen["argv"] == ["run", str(ROOT / "sweeps" / "quickstart.yaml"), "--address", "auto",
                            "--tracking-uri", "http://10.1.2.3:5000", "--storage", "s3://b/aot"]
