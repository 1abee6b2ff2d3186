"""Servers answer their owner (reliability round 4), checked on the real thing: the Ray a driver starts for itself
listens on 127.0.0.1 only, metrics included (`ss -ltnp` of the driver's processes), and the head's MLflow server
(`cluster/start_mlflow.sh`) refuses a request without its credentials (`curl`), which aot-ray's own commands
find in the owner's ~/.aot_ray."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aot_ray import tracking
from ports import free_port
from test_faults_integration import spec_dict

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
AOT_RAY = [sys.executable, "-m", "aot_ray.cli"]
LOOPBACK = ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")


def _tree(pid: int) -> set[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {pid}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of every TCP socket in LISTEN state that one of `pids` holds (`ss -ltnp`)."""
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        holders = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if holders & pids:
            found.append((line.split()[3], re.search(r'\("([^"]+)"', line).group(1)))
    return found


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_the_ray_a_driver_starts_listens_on_loopback_only(tmp_path):
    raw = spec_dict("loopback", steps=100000)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [*AOT_RAY, "run", str(tmp_path / "s.yaml"), "--tracking-uri", uri, "--storage", str(tmp_path / "r"),
           "--num-cpus", "2", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # both trials train: every kind of Ray process is up
            try:
                c = tracking.client(uri)
                runs = tracking.SweepRuns(uri, "loopback").trials()
                if len(runs) == 2 and all(c.get_metric_history(r.info.run_id, "val_loss") for r in runs):
                    break
            except Exception:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError((tmp_path / "driver.log").read_text()[-3000:])
        sockets = _listening(_tree(driver.pid))
        names = {name for _, name in sockets}
        # the GCS, the raylet, the dashboard agent (its Prometheus metrics among them), the trainers
        assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sockets
        exposed = [(a, n) for a, n in sockets if not a.startswith(LOOPBACK)]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        driver.send_signal(signal.SIGINT)
        try:
            driver.wait(120)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait(30)


def _curl(url: str, *args: str) -> str:
    return subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *args, url], capture_output=True,
                          text=True, timeout=60).stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_heads_mlflow_server_answers_its_owner_only(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    folder = tmp_path / "mlflow"
    env = {**os.environ, "HOME": str(home), "AOT_MLFLOW_HOST": "127.0.0.1", "AOT_MLFLOW_PORT": str(port),
           "AOT_MLFLOW_DIR": str(folder), "AOT_MLFLOW_WAIT": "120"}
    env.pop("AOT_MLFLOW_CREDENTIALS", None)
    script = ROOT / "cluster" / "start_mlflow.sh"
    p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr + p.stdout
    try:
        uri = (home / ".aot_ray" / "mlflow_uri").read_text().strip()
        assert uri == f"http://127.0.0.1:{port}"
        creds = json.loads((folder / "credentials.json").read_text())
        api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _curl(api) == "401"  # no credentials: refused
        assert _curl(api, "-u", f"{creds['username']}:wrong") == "401"
        assert _curl(api, "-u", f"{creds['username']}:{creds['password']}") == "200"
        assert _curl(f"{uri}/health") == "200"  # the liveness probe stays open
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in
                 (folder, folder / "credentials.json", home / ".aot_ray" / "mlflow_credentials.json")}
        assert modes == {"mlflow": 0o700, "credentials.json": 0o600, "mlflow_credentials.json": 0o600}

        # aot-ray's commands of the same user find the credentials; another user's (no record) get one line
        base = [*AOT_RAY, "status", "sweeps/quickstart.yaml", "--tracking-uri", uri]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        ok = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**clean, "HOME": str(home)})
        assert ok.returncode == 0 and "driver: none" in ok.stdout, ok.stderr
        other = tmp_path / "other"
        other.mkdir()
        refused = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=120,
                                 env={**clean, "HOME": str(other)})
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "asks for credentials and none were given (HTTP 401)" in refused.stderr
        # a record others may read is refused, naming the fix
        (home / ".aot_ray" / "mlflow_credentials.json").chmod(0o644)
        loose = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={**clean, "HOME": str(home)})
        assert loose.returncode == 2 and "other users may read it" in loose.stderr and "chmod 600" in loose.stderr
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, timeout=60)
