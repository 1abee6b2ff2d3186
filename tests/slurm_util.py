"""A real Slurm on this machine for the tests: munged, a private slurmctld and two slurmd "nodes" n1 (127.0.0.1)
and n2 (127.0.0.2), all under one temporary folder with their own ports; stopped and removed afterwards
(../shared/CLUSTER-NOTES.md has the facts this rests on). Root only."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from ports import free_port


def available() -> str | None:
    """Why a private Slurm cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for exe in ("slurmctld", "slurmd", "sbatch", "munged"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed (apt-get install slurm-wlm munge)"
    if not Path("/etc/munge/munge.key").exists():
        return "no /etc/munge/munge.key"
    return None


CONF = """ClusterName=aottest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=30
MinJobAge=600
NodeName=n1 NodeHostname={host} NodeAddr=127.0.0.1 Port={n1_port} CPUs={cpus}
NodeName=n2 NodeHostname={host} NodeAddr=127.0.0.2 Port={n2_port} CPUs={cpus}
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""


@contextlib.contextmanager
def private_slurm(root: Path, cpus: int = 1, unshared: Path | None = None) -> Iterator[dict[str, str]]:
    """Yields the environment (SLURM_CONF) under which sbatch, squeue and scontrol use this Slurm. With
    `unshared`, n2's slurmd (and so its job steps) runs in a mount namespace of its own where that folder is an
    empty tmpfs: a folder that n1 and n2 do not share, as on two machines without a shared file system."""
    root.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool"):
        (root / d).mkdir(exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(host=socket.gethostname(), root=root, ctld_port=free_port(), n1_port=free_port(),
                                n2_port=free_port(), cpus=cpus))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started_munge = False
    if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["su", "munge", "-s", "/bin/sh", "-c", "munged"], check=True)
        started_munge = True
    procs = []
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True)
        for node in ("n1", "n2"):
            cmd = ["slurmd", "-f", str(conf), "-N", node]
            if node == "n2" and unshared is not None:
                unshared.mkdir(parents=True, exist_ok=True)
                cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f'mount -t tmpfs -o size=16m aot-unshared "{unshared}" && exec "$@"', "sh", *cmd]
            subprocess.run(cmd, env=env, check=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            out = subprocess.run(["sinfo", "-N", "-h", "-o", "%N %t"], env=env, capture_output=True, text=True).stdout
            if sorted(ln.split()[1] for ln in out.splitlines() if ln.strip()) == ["idle", "idle"]:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the private Slurm did not come up: {out}\n"
                               + (root / "slurmctld.log").read_text()[-2000:])
        yield env
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True)
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
        for pidfile in [root / "slurmctld.pid", root / "slurmd-n1.pid", root / "slurmd-n2.pid"]:
            _wait_gone(pidfile)
        for p in procs:
            p.kill()
        if started_munge:
            pid = Path("/run/munge/munged.pid")
            if pid.exists():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid.read_text()), 15)


def _wait_gone(pidfile: Path, timeout: float = 30) -> None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
    with contextlib.suppress(OSError):
        os.kill(pid, 9)


def job_state(env: dict[str, str], job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)
