"""Cluster YAMLs pass Ray's own autoscaler validation; `aot-ray submit` validates, syncs and submits."""

import copy
import os
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


def test_mlflow_start_script_binds_to_a_private_address_and_allows_its_own_host():
    text = (ROOT / "cluster" / "start_mlflow.sh").read_text()
    assert "0.0.0.0" not in text.replace("never 0.0.0.0", "") and "hostname -I" in text
    assert '--allowed-hosts "$HOST,$HOST:$PORT,' in text and "/health" in text


def test_every_cluster_yaml_installs_and_starts_the_same_way():
    """One install (a venv per node on the login PATH) and one head start (address recorded, MLflow waited for)."""
    for name in ("aws", "gcp", "onprem"):
        cfg = yaml.safe_load((ROOT / "cluster" / f"{name}.yaml").read_text())
        assert [c.split()[:2] for c in cfg["setup_commands"]] == [["bash", "~/aot_ray/cluster/setup_node.sh"]]
        assert not any("--user" in c for c in cfg["setup_commands"])
        head = cfg["head_start_ray_commands"]
        assert head[-2:] == ["bash ~/aot_ray/cluster/record_ray.sh", "bash ~/aot_ray/cluster/start_mlflow.sh"]


def run_cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "aot_ray.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env or os.environ.copy())


@pytest.mark.slow  # a `ray CMD --help` subprocess per command: seconds each
def test_submit_shells_out_only_to_commands_and_options_the_real_ray_cli_has():
    """Each `ray` invocation of `aot-ray submit` checked against the installed Ray's own --help (a mocked CLI let
    `ray rsync_up` pass once); the real cycle is tests/test_cluster_launcher.py."""
    from aot_ray.cluster.submit import ENTRY, commands

    ray = str(Path(sys.executable).parent / "ray")
    cmds = commands("cluster/aws.yaml", "sweeps/quickstart.yaml", ["--storage", "s3://b/aot"], ray)
    assert [c[1] for c in cmds] == ["rsync-up", "submit"]
    assert cmds[1][3:] == ["cluster/aws.yaml", str(ENTRY), "sweeps/quickstart.yaml", "--", "--storage", "s3://b/aot"]
    assert ENTRY.is_file() and ENTRY.parent.parent.name == "aot_ray"  # shipped in the package, not from a checkout
    for cmd in cmds:
        helptext = subprocess.run([ray, cmd[1], "--help"], capture_output=True, text=True)
        assert helptext.returncode == 0, f"ray {cmd[1]}: {helptext.stderr}"
        for opt in (a for a in cmd[2:] if a.startswith("--") and a != "--" and a not in ("--storage",)):
            assert opt in helptext.stdout, f"ray {cmd[1]} has no {opt}"


def test_a_sweep_outside_the_project_lands_in_its_sweeps_folder():
    from aot_ray.cluster.submit import rel_path

    assert rel_path("sweeps/sizes.yaml") == "sweeps/sizes.yaml"
    assert rel_path("/home/me/my.yaml") == "sweeps/my.yaml"
    assert rel_path("../elsewhere/my.yaml") == "sweeps/my.yaml"


@pytest.mark.parametrize("args,needle", [
    (["submit", "cluster/nope.yaml", "sweeps/quickstart.yaml"], "cluster/nope.yaml: no such cluster file"),
    (["submit", "sweeps/quickstart.yaml", "sweeps/quickstart.yaml"], "not a valid Ray cluster config"),
    (["submit", "cluster/aws.yaml", "sweeps/nope.yaml"], "sweeps/nope.yaml: no such sweep file"),
])
def test_submit_rejects_bad_files_before_touching_the_cluster(args, needle):
    # no `ray` on PATH at all: the file error comes first, so nothing was about to reach a cluster
    without_ray = {**os.environ, "PATH": "/usr/bin:/bin"}
    p = run_cli(*args, env=without_ray)
    assert p.returncode == 2 and needle in p.stderr and p.stderr.count("\n") == 1
    assert "`ray` command is not on PATH" not in p.stderr


@pytest.fixture
def head_state(tmp_path, monkeypatch):
    from aot_ray.cluster import head

    monkeypatch.setattr(head, "STATE", tmp_path / "state")
    monkeypatch.setattr(head, "PROJECT", ROOT)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "state").mkdir()
    return tmp_path / "state"


def test_head_entry_uses_the_addresses_the_head_recorded(head_state, tmp_path, monkeypatch):
    from aot_ray.cluster import head

    (head_state / "ray_address").write_text("10.1.2.3:6379\n")
    (head_state / "mlflow_uri").write_text("http://10.1.2.3:5000\n")
    monkeypatch.chdir(tmp_path)
    assert head.run_args(["sweeps/quickstart.yaml", "--storage", "s3://b/aot"]) == [
        "run", str(ROOT / "sweeps" / "quickstart.yaml"), "--address", "10.1.2.3:6379",
        "--tracking-uri", "http://10.1.2.3:5000", "--storage", "s3://b/aot"]
    # flags and the environment win over what was recorded
    assert head.run_args(["sweeps/quickstart.yaml", "--address=a:1", "--tracking-uri", "http://b:2"]) == [
        "run", str(ROOT / "sweeps" / "quickstart.yaml"), "--address=a:1", "--tracking-uri", "http://b:2"]
    monkeypatch.setenv("RAY_ADDRESS", "c:3")
    assert "--address" not in head.run_args(["sweeps/quickstart.yaml"])


def test_head_entry_without_recorded_addresses_says_which_file_and_flag(head_state, capsys):
    from aot_ray.cluster import head

    assert head.main(["sweeps/quickstart.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ray_address is missing" in err and "record_ray.sh" in err and "--address" in err
    assert head.main([]) == 2 and "usage" in capsys.readouterr().err


def test_login_python_hands_a_sweep_to_the_head_entry_and_anything_else_to_the_venv(tmp_path):
    """cluster/bin/python as `ray submit CLUSTER sweep.yaml` reaches it: here HOME has no recorded addresses."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    if not venv_python.exists():
        pytest.skip("needs the project's .venv (scripts/setup.sh)")
    wrapper = str(ROOT / "cluster" / "bin" / "python")
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([wrapper, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and Path(p.stdout.strip()) == ROOT / ".venv"
    sweep = tmp_path / "quickstart.yaml"  # where `ray submit` puts it: ~/NAME.yaml
    sweep.write_text((ROOT / "sweeps" / "quickstart.yaml").read_text())
    p = subprocess.run([wrapper, str(sweep)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 2 and "ray_address is missing" in p.stderr, p.stderr
