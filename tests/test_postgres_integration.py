"""A real database behind the head's MLflow: `cluster/start_mlflow.sh` with AOT_MLFLOW_BACKEND pointing at a
PostgreSQL server this test starts itself (Debian's postgresql, a cluster of its own under a temporary folder,
on 127.0.0.1 and a free port, run as the `postgres` user), then the tiny sweep through that server, `report`
and `status` against it, and everything stopped and removed afterwards.

Needs root and Debian's `postgresql`; AOT_POSTGRES_TEST=require (set by .ci/run) turns a skip into a failure."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aot_ray import tracking
from ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[1]
AOT_RAY = [sys.executable, "-m", "aot_ray.cli"]


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    why = None
    if os.geteuid() != 0:
        why = "needs root (the server runs as the postgres user)"
    elif pg_bin() is None or shutil.which("runuser") is None:
        why = "PostgreSQL is not installed (apt-get install postgresql)"
    if why:
        if os.environ.get("AOT_POSTGRES_TEST") == "require":
            pytest.fail(f"the PostgreSQL test cannot run: {why} (AOT_POSTGRES_TEST=require)")
        pytest.skip(why)
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="aot-pg-"))  # pytest's own folders are root's alone (mode 700)
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    shutil.chown(root, "postgres")
    shutil.chown(sock, "postgres")
    port = free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    bin_ = pg_bin()
    subprocess.run([*as_pg, str(bin_ / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(bin_ / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "start",
                    "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}"], check=True, capture_output=True)
    try:
        subprocess.run([*as_pg, str(bin_ / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "aot_mlflow"], check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/aot_mlflow", root
    finally:
        subprocess.run([*as_pg, str(bin_ / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        left = subprocess.run(["pgrep", "-af", str(data)], capture_output=True, text=True).stdout
        shutil.rmtree(root, ignore_errors=True)
    assert not left.strip(), f"left running: {left}"


def _login(home, monkeypatch) -> dict:
    """The credentials start_mlflow.sh recorded for its server, as MLflow's variables (here and for commands)."""
    import json

    known = json.loads((home / ".aot_ray" / "mlflow_credentials.json").read_text())
    (entry,) = known.values()
    login = {"MLFLOW_TRACKING_USERNAME": entry["username"], "MLFLOW_TRACKING_PASSWORD": entry["password"]}
    for k, v in login.items():
        monkeypatch.setenv(k, v)
    return login


def test_the_heads_mlflow_on_postgresql_takes_a_sweep(postgres, tmp_path, monkeypatch):
    backend, root = postgres
    home = tmp_path / "home"  # start_mlflow.sh records the address under $HOME/.aot_ray
    home.mkdir()
    port = free_port()
    env = {**os.environ, "HOME": str(home), "AOT_MLFLOW_HOST": "127.0.0.1", "AOT_MLFLOW_PORT": str(port),
           "AOT_MLFLOW_DIR": str(tmp_path / "mlflow"), "AOT_MLFLOW_BACKEND": backend,
           "AOT_MLFLOW_ARTIFACTS": str(tmp_path / "bucket"), "AOT_MLFLOW_WAIT": "120"}
    script = ROOT / "cluster" / "start_mlflow.sh"
    p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr + p.stdout
    uri = (home / ".aot_ray" / "mlflow_uri").read_text().strip()
    try:
        assert uri == f"http://127.0.0.1:{port}"
        assert not (tmp_path / "mlflow" / "mlflow.db").exists()  # the runs live in PostgreSQL
        sets = ["--set", "grid.seed=[0]", "--set", "defaults.train.steps=60"]
        # the head's user: its commands find the server's credentials in its own ~/.aot_ray
        run = subprocess.run([*AOT_RAY, "run", "sweeps/cluster-check.yaml", "--tracking-uri", uri, "--storage",
                              str(tmp_path / "store"), "--num-cpus", "2", "--quiet", *sets],
                             cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(home)})
        assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-2000:]
        assert "progress: 2/2 trials finished" in run.stdout
        _login(home, monkeypatch)
        runs = tracking.SweepRuns(uri, "cluster-check").trials()
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        assert list((tmp_path / "bucket").rglob("per_window.json"))  # artifacts went to the destination
        for cmd in (["status", "sweeps/cluster-check.yaml"], ["report", "sweeps/cluster-check.yaml", "--no-plots",
                                                             "--out", str(tmp_path / "rep")]):
            q = subprocess.run([*AOT_RAY, *cmd, "--tracking-uri", uri, *sets], cwd=ROOT, capture_output=True,
                               text=True, timeout=300)
            assert q.returncode == 0, q.stderr[-2000:]
        # the server goes (the head is lost); a new one on the same database has every run
        subprocess.run(["bash", str(script), "stop"], env=env, check=True, capture_output=True, timeout=60)
        shutil.rmtree(tmp_path / "mlflow")
        p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr
        _login(home, monkeypatch)  # a new head: new credentials for its new auth database
        again = tracking.SweepRuns(uri, "cluster-check").trials()
        assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, timeout=60)
