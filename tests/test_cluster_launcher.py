"""The cluster launcher for real, on this machine: `ray up` of cluster/onprem.yaml over a private sshd on
127.0.0.1/127.0.0.2, `ray submit CLUSTER sweeps/cluster-check.yaml` typed as in the design card, `aot-ray submit`,
MLflow on the head receiving every trial, `aot-ray report` and `status` against it, `ray down`, every change undone.

No mock of Ray's CLI: the commands are the ones a user types. Only what differs between this machine and a real
cluster is changed: the YAML's addresses, user, key and an ssh proxy (sshd listens on a free port, not 22), and
the test user's environment (its own Ray temp folder, MLflow on 127.0.0.1 at a free port, this machine's pip
configuration). The SSH side runs as a user of its own, so the running user's home is not touched; the CLI
side runs with HOME in a temporary folder. Needs root, sshd, rsync, nc and tmux (CI installs them); skipped
without them unless AOT_CLUSTER_TEST=require. About 3-5 minutes, most of it the venv install on the "nodes".
Run it alone before a release:  .venv/bin/python -m pytest -m cluster -q
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ports import free_port

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
USER = "aotclustertest"
SWEEP = "sweeps/cluster-check.yaml"
NEEDS = ["/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync", "nc", "tmux", "useradd", "userdel", "runuser"]

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def _missing() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root (a test user and an sshd of its own)"
    gone = [n for n in NEEDS if shutil.which(n) is None]
    if gone:
        return f"needs {', '.join(gone)} (apt-get install openssh-server rsync netcat-openbsd tmux)"
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True).returncode:
        return "needs /usr/bin/python3 with venv support (python3-venv)"
    return None


def run(cmd: list[str], *, env: dict | None = None, timeout: float = 600, check: bool = True, cwd=ROOT,
        log: Path | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{p.stdout}\n{p.stderr}\n[rc {p.returncode}]\n")
    if check and p.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited {p.returncode}\n--- stdout\n{p.stdout[-6000:]}\n"
                             f"--- stderr\n{p.stderr[-6000:]}")
    return p


def as_user(script: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["runuser", "-u", USER, "--", "bash", "-c", script], check=check, cwd="/")


def home_state() -> dict:
    """What the running user's SSH and shell setup look like: must be the same after the test."""
    home = Path(os.path.expanduser("~"))
    out = {}
    for p in [home / ".bashrc", home / ".ssh", *sorted((home / ".ssh").glob("*"))]:
        if p.exists():
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def pip_config() -> str:
    """This machine's pip configuration (where its wheels and indexes are), for the test user's installs."""
    p = run([sys.executable, "-m", "pip", "config", "list"], check=False)
    keys = {}
    for line in p.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.startswith(("global.", ":env:.")):
            keys[key.split(".", 1)[1]] = value.strip().strip("'\"")
    return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


@pytest.fixture(scope="module")
def machine(tmp_path_factory):
    """A test user reachable over a private sshd on 127.0.0.1 and 127.0.0.2; everything removed afterwards."""
    why = _missing()
    if why:
        if os.environ.get("AOT_CLUSTER_TEST") == "require":
            pytest.fail(f"cluster launcher test required but cannot run: {why}")
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("cluster")
    before_home = home_state()
    left_in_tmp = lambda: set(Path("/tmp").glob("ray_ssh_*")) | set(Path("/tmp").glob("ray-config-*"))  # noqa: E731
    tmp_before = left_in_tmp()  # the ray CLI's SSH control sockets and config cache
    created_run_sshd = not Path("/run/sshd").exists()
    sshd = None
    run(["pkill", "-KILL", "-u", USER], check=False)
    run(["userdel", "-r", USER], check=False)  # a user left by a test that was killed
    try:
        run(["useradd", "-m", "-s", "/bin/bash", USER])
        run(["usermod", "-p", "*", USER])  # no password, but not locked: sshd without PAM refuses locked ones
        home = Path(f"~{USER}").expanduser()
        port, mlflow_port = free_port(), free_port()

        local_home = tmp / "home"  # HOME of the CLI side: key, Ray token, anything the ray CLI writes
        (local_home / ".ssh").mkdir(parents=True)
        (local_home / ".aot_ray").mkdir()
        key = local_home / ".ssh" / "id_ed25519"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        (local_home / ".aot_ray" / "ray_auth_token").write_text(os.urandom(32).hex() + "\n")

        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700)
        (ssh / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
        # the head's autoscaler drops the proxy command and would use port 22 for the worker
        (ssh / "config").write_text(f"Host 127.0.0.1 127.0.0.2\n  Port {port}\n")
        (home / ".config" / "pip").mkdir(parents=True)
        (home / ".config" / "pip" / "pip.conf").write_text(pip_config())
        with (home / ".bashrc").open("a") as f:  # this machine, not the cluster YAML: loopback MLflow, own temp
            f.write(f"export RAY_TMPDIR=$HOME/rt AOT_MLFLOW_HOST=127.0.0.1 AOT_MLFLOW_PORT={mlflow_port} "
                    f"PIP_DEFAULT_TIMEOUT=180\n")
        (home / "rt").mkdir()
        run(["chown", "-R", f"{USER}:{USER}", str(home)])
        for p in (ssh, ssh / "authorized_keys", ssh / "config"):
            p.chmod(0o700 if p.is_dir() else 0o600)

        Path("/run/sshd").mkdir(exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host_key")])
        (tmp / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nListenAddress 127.0.0.2\nHostKey {tmp / 'host_key'}\n"
            f"PidFile {tmp / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"PubkeyAuthentication yes\nAuthorizedKeysFile .ssh/authorized_keys\nAllowUsers {USER}\nUsePAM no\n"
            f"MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n")
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(tmp / "sshd_config"), "-E", str(tmp / "sshd.log")])
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.2", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or sshd.poll() is not None:
                    raise AssertionError(f"sshd did not start: {(tmp / 'sshd.log').read_text()}")
                time.sleep(0.2)

        cfg = yaml.safe_load((ROOT / "cluster" / "onprem.yaml").read_text())
        cfg["provider"].update(head_ip="127.0.0.1", worker_ips=["127.0.0.2"])
        cfg["auth"] = {"ssh_user": USER, "ssh_private_key": str(key), "ssh_proxy_command": f"nc %h {port}"}
        cluster = tmp / "cluster.yaml"
        cluster.write_text(yaml.safe_dump(cfg, sort_keys=False))

        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env.update(HOME=str(local_home), PATH=f"{BIN}{os.pathsep}{env['PATH']}", RAY_TMPDIR=str(tmp / "cli-ray"),
                   RAY_UP_enable_autoscaler_v2="0", RAY_USAGE_STATS_ENABLED="0")
        yield {"cluster": str(cluster), "env": env, "home": home, "mlflow": f"http://127.0.0.1:{mlflow_port}",
               "tmp": tmp, "log": tmp / "commands.log"}
    finally:
        run(["pkill", "-KILL", "-u", USER], check=False)
        time.sleep(0.5)
        run(["userdel", "-r", USER], check=False)
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        if created_run_sshd:
            shutil.rmtree("/run/sshd", ignore_errors=True)
        for p in left_in_tmp() - tmp_before:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        assert home_state() == before_home, "the running user's ~/.ssh or ~/.bashrc changed"


def wait_for(what: str, fn, timeout: float, every: float = 3.0):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def trial_runs(uri: str) -> list:
    from aot_ray import tracking

    try:
        return tracking.SweepRuns(uri, "cluster-check").trials()
    except Exception:  # the server answers but the experiment is not there yet
        return []


def test_ray_up_submit_report_and_down_on_a_real_cluster(machine, monkeypatch):
    env, cluster, log = machine["env"], machine["cluster"], machine["log"]
    uri = machine["mlflow"]
    storage = f"{machine['home']}/aot_storage"
    sh = lambda *cmd, **kw: run(list(cmd), env=env, log=log, **kw)  # noqa: E731
    try:
        t0 = time.time()
        sh("ray", "up", "-y", "--no-config-cache", cluster, timeout=900)
        up_s = time.time() - t0

        # the head recorded its own Ray and MLflow addresses; MLflow answers, with the head's address allowed
        head_state = as_user("cat ~/.aot_ray/ray_address ~/.aot_ray/mlflow_uri").stdout.split()
        assert head_state[1] == uri and head_state[0].endswith(":6379"), head_state
        # the head's MLflow answers its owner only: no credentials, no runs; the password the head generated is
        # readable by the head's user alone, and the commands run here export it as a user would
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert as_user("stat -c %a ~/mlflow ~/mlflow/credentials.json ~/.aot_ray/mlflow_credentials.json"
                       ).stdout.split() == ["700", "600", "600"]
        creds = json.loads(as_user("cat ~/mlflow/credentials.json").stdout)
        login = {"MLFLOW_TRACKING_USERNAME": creds["username"], "MLFLOW_TRACKING_PASSWORD": creds["password"]}
        env.update(login)
        for k, v in login.items():
            monkeypatch.setenv(k, v)
        from aot_ray.tracking.store import check_reachable

        check_reachable(uri)
        count = ("python -c 'import os, ray; ray.init(address=open(os.path.expanduser(\"~/.aot_ray/ray_address\"))"
                 ".read().strip(), logging_level=\"ERROR\"); print(\"alive:\", sum(n[\"Alive\"] for n in ray.nodes()))'")
        wait_for("the worker to join (2 Ray nodes)",
                 lambda: "alive: 2" in sh("ray", "exec", cluster, count, check=False).stdout, 180)

        # exactly what the design card says: the sweep file itself, run by the head's login python
        t0 = time.time()
        first = sh("ray", "submit", cluster, SWEEP, "--", "--storage", storage, "--shared-storage",
                   "--set", "grid.seed=[0]", timeout=600)
        submit_s = time.time() - t0
        assert f"MLflow UI: {uri}" in first.stdout, first.stdout[-3000:]
        runs = trial_runs(uri)
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
        # two CPUs a trial on two 2-CPU nodes: the pair ran side by side, one trial on each node
        assert len({r.data.tags.get("aot.node") for r in runs}) == 2, [r.data.tags.get("aot.node") for r in runs]

        # the explicit form: validated here, synced, detached in tmux on the head; keeps the finished pair
        second = sh("aot-ray", "submit", cluster, SWEEP, "--", "--storage", storage, "--shared-storage")
        assert "rsync-up" in second.stdout and "detached in tmux" in second.stdout
        done = lambda: [r for r in trial_runs(uri) if r.info.status == "FINISHED"]  # noqa: E731
        wait_for("4 finished trial runs in the head's MLflow", lambda: len(done()) == 4, 420)
        assert sorted(r.data.tags["seed"] for r in done()) == ["0", "0", "1", "1"]
        from aot_ray import tracking

        wait_for("the driver to close its sweep run", lambda: tracking.SweepRuns(uri, "cluster-check").parent().info.status
            == "FINISHED", 120)

        out = machine["tmp"] / "report"
        rep = sh("aot-ray", "report", SWEEP, "--tracking-uri", uri, "--out", str(out))
        assert "2 pairs" in rep.stdout or rep.stdout.count("primes") >= 2, rep.stdout[-3000:]
        assert (out / "aot_pairs.csv").read_text().count("\n") == 3  # header + 2 pairs
        status = sh("aot-ray", "status", SWEEP, "--tracking-uri", uri)
        assert "4" in status.stdout
    finally:
        down = sh("ray", "down", "-y", cluster, check=False, timeout=300)
    assert down.returncode == 0, down.stderr[-3000:]
    # ray down stopped Ray on both "nodes" and, through the head's login `ray`, the MLflow server
    survivors = "pgrep -a -u $(id -u) -f '[r]aylet|[g]cs_server|[m]lflow.server|[u]vicorn|[g]unicorn' || true"
    wait_for("Ray and MLflow to stop", lambda: as_user(survivors).stdout.strip() == "", 60, every=1)
    print(f"ray up {up_s:.0f}s, ray submit of 2 trials {submit_s:.0f}s")
