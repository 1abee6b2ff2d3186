"""A sweep inside a Slurm job: `sbatch [options] cluster/slurm.sbatch SWEEP.yaml [-- aot-ray run options]`.

The batch step (`python -m aot_ray.cluster.slurm_job ...`, on the job's first node) checks everything it can before
anything starts (the sweep, the tracking server, a storage every node sees, trials that fit the allocation),
then starts a Ray head on its node and a Ray worker on every other node (one `srun` step each, `node` below),
each on the address Slurm reaches that node at, with ports and a short temp folder of the job's own (derived
from the job id: two jobs on one node never collide) and the CPUs and GPUs Slurm gave the job there. Once every
node has joined, it runs `aot-ray run` against this Ray. Tracking is the lab's server (`--tracking-uri`,
`$MLFLOW_TRACKING_URI`) or an MLflow server the job starts on its first node, whose database and artifacts live
in the shared storage, so the next job of the sweep continues the same runs and `report`/`status` work from a
login node on the database file. At the end it stops only this job's Ray (its own steps) and server.

Time limits: `#SBATCH --signal=B:TERM@300` warns the batch step 5 minutes before the limit; the driver stops
gracefully (Tune's state saved, runs marked interrupted, exit 130), and the job requeues itself (`scontrol
requeue`). A job requeued from outside gets the same SIGTERM and resumes the same way; a finished sweep, a
failed trial, bad input or a person's stop (SIGINT: `scancel --batch --signal=INT`) does not requeue.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import AotError

PORT_BLOCK = 200  # ports per job: head services, 10 per node (nodes of one job may share a host), workers


class SlurmError(AotError):
    """What stops a sweep from running in this job, in one line."""


@dataclass(frozen=True)
class Ports:
    """The job's own ports, a block derived from the job id."""
    base: int

    @classmethod
    def of_job(cls, job_id: int) -> "Ports":
        return cls(20000 + (job_id % 200) * PORT_BLOCK)

    @classmethod
    def free_for_job(cls, job_id: int, host: str) -> "Ports":
        """The job's block, else (job ids 200 apart, another user's job or a service holds it) the first free one
        in an order of the job's own: two jobs that both move never move to the same next block."""
        import random

        others = [k for k in range(200) if k != job_id % 200]
        random.Random(job_id).shuffle(others)
        for k in [job_id % 200, *others]:
            ports = cls.of_job(k)
            if all(_free(host, p) for p in ports.head_ports()):
                return ports
        raise SlurmError(f"no free block of {PORT_BLOCK} ports in 20000-59999 on {host}")

    def head_ports(self) -> list[int]:
        return [self.gcs, self.dashboard, self.client_server, self.mlflow, *self.node(0).values()]

    @property
    def gcs(self) -> int:
        return self.base

    @property
    def dashboard(self) -> int:
        return self.base + 1

    @property
    def client_server(self) -> int:
        return self.base + 2

    @property
    def mlflow(self) -> int:
        return self.base + 3

    def node(self, index: int) -> dict[str, int]:
        """The ports of the job's `index`-th node (distinct for nodes of one job that share a host)."""
        b = self.base + 10 + (index % 9) * 10
        return {"node-manager-port": b, "object-manager-port": b + 1, "dashboard-agent-listen-port": b + 2,
                "dashboard-agent-grpc-port": b + 3, "metrics-export-port": b + 4, "runtime-env-agent-port": b + 5}

    @property
    def workers(self) -> tuple[int, int]:
        return self.base + 100, self.base + PORT_BLOCK - 1


def _free(host: str, port: int) -> bool:
    """Nothing listens there (a port in TIME_WAIT after an earlier run of the job counts as free, as it does for
    Ray's own servers, which bind with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def expand_counts(text: str) -> list[int]:
    """Slurm's per-node counts ("4(x2),2" -> [4, 4, 2])."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if not m:
            raise SlurmError(f"cannot read the per-node count {text!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _run(cmd: list[str], timeout: float = 60) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmError(f"{' '.join(cmd[:3])}: {e}") from None
    if p.returncode != 0:
        raise SlurmError(f"{' '.join(cmd[:3])} failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    return p.stdout


@dataclass(frozen=True)
class Allocation:
    """The job as Slurm describes it to its batch step."""
    job_id: int
    nodes: tuple[str, ...]
    addresses: tuple[str, ...]  # the address Slurm reaches each node at (NodeAddr), as an IP
    cpus: tuple[int, ...]
    gpus: int  # per node

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Allocation":
        env = dict(os.environ if env is None else env)
        if "SLURM_JOB_ID" not in env:
            raise SlurmError("not inside a Slurm job (no SLURM_JOB_ID): submit it with sbatch cluster/slurm.sbatch")
        nodes = tuple(_run(["scontrol", "show", "hostnames", env.get("SLURM_JOB_NODELIST", "")]).split())
        addresses = tuple(node_address(n) for n in nodes)
        cpus = expand_counts(env.get("SLURM_JOB_CPUS_PER_NODE", "")) or [int(env.get("SLURM_CPUS_ON_NODE", "1"))]
        if len(cpus) != len(nodes):
            cpus = [cpus[0]] * len(nodes)
        return cls(int(env["SLURM_JOB_ID"]), nodes, addresses, tuple(cpus), gpus_per_node(env))


def gpus_per_node(env: dict[str, str]) -> int:
    """GPUs Slurm gave the job on each node: --gpus-per-node, else --gres=gpu:N, else the step's GPU list."""
    for key in ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE"):
        if env.get(key):
            return int(env[key].split(":")[-1].split("(")[0])
    gres = re.search(r"gpu(?::[^:,]+)?:(\d+)", env.get("SLURM_JOB_GRES", "") or env.get("SLURM_GRES", ""))
    if gres:
        return int(gres.group(1))
    return len([g for g in env.get("SLURM_JOB_GPUS", "").split(",") if g])


def node_address(node: str) -> str:
    """The IP address Slurm reaches `node` at (its NodeAddr), which is the one Ray must advertise."""
    out = _run(["scontrol", "show", "node", node])
    m = re.search(r"NodeAddr=(\S+)", out)
    addr = m.group(1) if m else node
    try:
        return socket.gethostbyname(addr)
    except OSError:
        raise SlurmError(f"node {node}: cannot resolve its address {addr}") from None


def node_main(argv: list[str]) -> int:
    """`python -m aot_ray.cluster.slurm node INDEX ADDRESS HEAD_ADDRESS TEMP_DIR PORT_BASE CPUS` in one srun step per
    node: `ray start --block` with this node's address, the job's ports and temp folder, and the CPUs and GPUs
    of this step's allocation."""
    index, address, head, temp = int(argv[0]), argv[1], argv[2], argv[3]
    ports = Ports(int(argv[4]))
    cpus = argv[5]
    env = dict(os.environ)
    gpus = gpus_per_node(env)
    if gpus and not env.get("CUDA_VISIBLE_DEVICES") and env.get("SLURM_JOB_GPUS"):
        env["CUDA_VISIBLE_DEVICES"] = env["SLURM_JOB_GPUS"]  # the job's GPUs, not the node's first ones
    ray = Path(sys.executable).with_name("ray")  # this environment's Ray, whatever the step's PATH holds
    cmd = [str(ray) if ray.exists() else "ray", "start", "--block", f"--node-ip-address={address}",
           f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--temp-dir={temp}",
           f"--min-worker-port={ports.workers[0]}", f"--max-worker-port={ports.workers[1]}",
           *(f"--{k}={v}" for k, v in ports.node(index).items())]
    if index == 0:
        cmd += ["--head", f"--port={ports.gcs}", f"--dashboard-port={ports.dashboard}", "--dashboard-host=127.0.0.1",
                f"--ray-client-server-port={ports.client_server}"]
    else:
        cmd += [f"--address={head}:{ports.gcs}"]
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached


def temp_dir(job_id: int, index: int) -> str:
    return f"/tmp/aot-{job_id}-{index}"  # short: Unix socket paths are limited to 107 bytes


def clean_main(argv: list[str]) -> int:
    """`python -m aot_ray.cluster.slurm clean JOB_ID LOGS_DIR`, one task per node once the job's Ray is stopped: Ray's
    logs of each of the job's temp folders on this node are kept under LOGS_DIR (in the job's folder in storage)
    and the folders removed, so that the job leaves nothing in /tmp."""
    import shutil

    job_id, logs = argv[0], Path(argv[1])
    for temp in Path("/tmp").glob(f"aot-{job_id}-*"):
        if not re.fullmatch(rf"aot-{re.escape(job_id)}-\d+", temp.name):
            continue
        latest = temp / "session_latest" / "logs"
        if latest.is_dir():
            with contextlib.suppress(OSError):
                shutil.copytree(latest, logs / f"{socket.gethostname()}-{temp.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                dirs_exist_ok=True, ignore_dangling_symlinks=True)
        shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["node"] and len(sys.argv) == 8:
        sys.exit(node_main(sys.argv[2:]))
    if sys.argv[1:2] == ["clean"] and len(sys.argv) == 4:
        sys.exit(clean_main(sys.argv[2:]))
    print("usage: python -m aot_ray.cluster.slurm node INDEX ADDRESS HEAD_ADDRESS TEMP_DIR PORT_BASE CPUS | "
          "clean JOB_ID LOGS_DIR (srun steps that aot_ray.cluster.slurm_job starts)", file=sys.stderr)
    sys.exit(2)
