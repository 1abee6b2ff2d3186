"""The batch step of a Slurm job (`python -m aot_ray.cluster.slurm_job SWEEP.yaml [-- run options]`, what
cluster/slurm.sbatch runs) and `aot-ray slurm`, which checks a sweep before `sbatch` queues it. The facts of the
allocation, the job's ports and each node's `ray start` are `aot_ray.cluster.slurm`."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..execution.interrupt import keep_sigterm, last_signal, terminable
from ..spec import expand
from ..storage import Storage
from ..sweep import ResolvedSweep, RunOptions, resolve, run_command
from ..sweep.commands import guarded
from ..sweep.options import parse_run
from ..tracking import credentials
from ..tracking.store import check_reachable, given_uri, wait_for_server
from .slurm import Allocation, Ports, SlurmError, temp_dir

USAGE = "usage: sbatch [sbatch options] cluster/slurm.sbatch SWEEP.yaml [-- aot-ray run options]"
JOIN_S = float(os.environ.get("AOT_SLURM_JOIN_S", "300"))  # how long the nodes get to join the job's Ray
MLFLOW_WAIT_S = float(os.environ.get("AOT_MLFLOW_WAIT", "300"))
REQUEUE_WAIT_S = 120.0  # longer than Slurm's KillWait (30 s by default): the requeue ends this process first
SBATCH = Path(__file__).resolve().parents[2] / "cluster" / "slurm.sbatch"  # the checkout's cluster/


def split_args(argv: list[str]) -> tuple[str, list[str]]:
    if not argv or argv[0].startswith("-"):
        raise SlurmError(USAGE)
    rest = argv[1:]
    return argv[0], rest[1:] if rest[:1] == ["--"] else rest


def check_allocation_fits(spec: Any, alloc_cpus: list[int], alloc_gpus: int, nodes: int) -> None:
    """Every trial must fit what the job was given: one node's CPUs and GPUs per process, the whole job for a
    data-parallel trial's workers (Slurm adds no nodes, so a trial that does not fit would wait forever)."""
    for t in expand(spec):
        r = t.resources
        if r.cpu > max(alloc_cpus) or r.gpu > alloc_gpus:
            raise SlurmError(f"trial {t.trial_id} asks for {r.cpu:g} CPU and {r.gpu:g} GPU per process; the job "
                             f"has {max(alloc_cpus)} CPU and {alloc_gpus} GPU per node: ask sbatch for more "
                             f"(--cpus-per-task, --gpus-per-node) or lower resources.cpu/gpu")
        if r.workers > 1 and (r.workers * r.cpu > sum(alloc_cpus) or r.workers * r.gpu > alloc_gpus * nodes):
            raise SlurmError(f"trial {t.trial_id} runs {r.workers} workers of {r.cpu:g} CPU and {r.gpu:g} GPU; the "
                             f"job has {sum(alloc_cpus)} CPU and {alloc_gpus * nodes} GPU in all")


def check_shared(storage: Storage, alloc: Allocation, job_dir: Path) -> None:
    """A local storage path must be the same folder on every node of the job (a shared file system)."""
    if storage.remote or len(alloc.nodes) == 1:
        return
    marker = job_dir / f"shared-{secrets.token_hex(4)}"
    marker.write_text("aot_ray")
    try:
        for node in alloc.nodes[1:]:
            p = subprocess.run(["srun", "--overlap", "-N1", "-n1", "-w", node, "test", "-f", str(marker)],
                               capture_output=True, text=True, timeout=120)
            if p.returncode != 0:
                raise SlurmError(f"storage {storage} is not shared: node {node} does not see {marker}; pass "
                                 f"--storage on a file system every node mounts, or s3://... / gs://...")
    finally:
        marker.unlink(missing_ok=True)


def mlflow_folder(storage: Storage) -> Path:
    """Where the job's tracking server keeps its databases, artifacts and credentials (its owner's only)."""
    return Path(storage.root) / "mlflow"


class MlflowServer:
    """The job's tracking server on its first node: database and artifacts in the shared storage (artifacts
    written straight to that folder by every node, so the files outlive the server), behind MLflow's own
    authentication with the credentials of that folder (`tracking.credentials`): on a shared cluster, the node's
    address is reachable by every user, and only the job's owner may read or change its runs."""

    def __init__(self, storage: Storage, host: str, port: int, log: Path) -> None:
        root = mlflow_folder(storage)
        env = {**os.environ, **credentials.server_env(root)}  # (makes the folder private first)
        self.db = root / "mlflow.db"
        self.uri = f"http://{host}:{port}"
        self.credentials = root / credentials.CREDENTIALS
        allowed = ",".join(f"{h}{p}" for h in (host, "localhost", "127.0.0.1") for p in ("", f":{port}"))
        mlflow = Path(sys.executable).parent / "mlflow"
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--app-name", "basic-auth", "--host", host, "--port", str(port), "--workers",
             "1", "--backend-store-uri", f"sqlite:///{self.db}", "--default-artifact-root", str(root / "artifacts"),
             "--no-serve-artifacts", "--allowed-hosts", allowed],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=env)
        why = wait_for_server(self.uri, MLFLOW_WAIT_S, self.proc, poll_s=1)
        if why is None:
            credentials.register(self.uri, root)  # the owner's `aot-ray report --tracking-uri URI` finds them
            return
        self.stop()
        raise SlurmError(f"the job's MLflow server at {self.uri} {why} (log: {log})")

    def how_to_reach(self, sweep: str, host: str, port: int) -> str:
        return (f"aot-ray: MLflow UI at {self.uri} (user aot, password in {self.credentials}, readable by you "
                f"only); from your machine: ssh -L 5000:{host}:{port} <login node>, then http://localhost:5000. "
                f"After the job: aot-ray report {sweep} --tracking-uri sqlite:///{self.db}")

    def stop(self) -> None:
        _stop_group(self.proc, 30)


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace_s)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(10)


class JobRay:
    """This job's Ray: one `srun` step per node running `ray start --block`; stopping the steps stops it (and
    no other Ray: never a bare `ray stop`)."""

    def __init__(self, alloc: Allocation, ports: Ports, job_dir: Path, env: dict[str, str]) -> None:
        self.alloc, self.ports, self.job_dir = alloc, ports, job_dir
        self.address = f"{alloc.addresses[0]}:{ports.gcs}"
        self.steps: list[subprocess.Popen] = []
        for i, (node, addr) in enumerate(zip(alloc.nodes, alloc.addresses)):
            gpus = [f"--gres=gpu:{alloc.gpus}"] if alloc.gpus else []
            cmd = ["srun", "--overlap", "-N1", "-n1", "-w", node, "--kill-on-bad-exit=0", *gpus, sys.executable,
                   "-m", "aot_ray.cluster.slurm", "node", str(i), addr, alloc.addresses[0], temp_dir(alloc.job_id, i),
                   str(ports.base), str(alloc.cpus[i])]
            self.steps.append(subprocess.Popen(cmd, env=env, stdout=(job_dir / f"ray-{node}.log").open("ab"),
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True))

    def wait_joined(self) -> None:
        """ray.init on the head's address once it answers, then every node alive, within JOIN_S."""
        import ray

        deadline = time.monotonic() + JOIN_S
        while True:
            dead = [n for n, s in zip(self.alloc.nodes, self.steps) if s.poll() is not None]
            if dead:
                raise SlurmError(f"Ray did not start on node(s) {', '.join(dead)} (see ray-<node>.log in the job "
                                 f"folder)")
            try:
                if not ray.is_initialized():
                    with keep_sigterm():
                        ray.init(address=self.address, logging_level="WARNING", configure_logging=True)
                alive = [n for n in ray.nodes() if n.get("Alive")]
                if len(alive) >= len(self.alloc.nodes):
                    with keep_sigterm():  # the sweep's driver connects with its own settings (--quiet's logs)
                        ray.shutdown()
                    return
            except Exception:  # the head's GCS is not up yet
                pass
            if time.monotonic() > deadline:
                raise SlurmError(f"only part of the job's {len(self.alloc.nodes)} nodes joined its Ray at "
                                 f"{self.address} within {JOIN_S:.0f} s (AOT_SLURM_JOIN_S)")
            time.sleep(1)

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            with keep_sigterm():
                ray.shutdown()
        for s in reversed(self.steps):  # workers first, the head last
            _stop_group(s, 60)
        # then one task per node keeps Ray's logs in the job's folder and removes the job's temp folders there
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["srun", "--overlap", f"-N{len(self.alloc.nodes)}", "--ntasks-per-node=1",
                            sys.executable, "-m", "aot_ray.cluster.slurm", "clean", str(self.alloc.job_id),
                            str(self.job_dir / "ray-logs")], capture_output=True, timeout=120)


def slurm_state(job_id: int) -> str | None:
    """The job's JobState as the controller has it now (None when it cannot say)."""
    p = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=60)
    fields = dict(kv.split("=", 1) for kv in p.stdout.split() if "=" in kv)
    return fields.get("JobState") if p.returncode == 0 else None


def requeue(job_id: int) -> None:
    """Put this job back in the queue (it resumes the sweep); quiet when Slurm already requeues it, and never
    for a job its user cancelled (scancel also sends SIGTERM, which stopped the sweep the same way)."""
    state = slurm_state(job_id)
    if state == "CANCELLED":
        print(f"aot-ray: job {job_id} cancelled: not requeued; the same sbatch command resumes the sweep", flush=True)
        return
    p = subprocess.run(["scontrol", "requeue", str(job_id)], capture_output=True, text=True, timeout=60)
    if p.returncode == 0:
        print(f"aot-ray: job {job_id} requeued: the next run of it resumes the sweep", flush=True)
        # Slurm now ends this run of the job and queues it again; exiting first would record this run as FAILED
        # (exit 130) on the way
        time.sleep(REQUEUE_WAIT_S)
    else:
        print(f"aot-ray: job {job_id} not requeued here ({p.stderr.strip() or p.stdout.strip()})", flush=True)


def job(argv: list[str]) -> int:
    """The batch step; its exit code is the sweep's driver's (130 when stopped by a signal, then requeued)."""
    path, rest = split_args(argv)
    os.chdir(os.environ.get("SLURM_SUBMIT_DIR", os.getcwd()))  # a sweep's relative paths mean what they meant
    flags = parse_run(path, rest)  # where it was submitted
    sweep = resolve(path, sets=flags.sets, tracking_uri=flags.tracking_uri, storage=flags.storage)
    alloc = Allocation.from_env()
    check_allocation_fits(sweep.spec, list(alloc.cpus), alloc.gpus, len(alloc.nodes))
    own_server = given_uri(flags.tracking_uri, sweep.spec.run.tracking_uri) is None
    if not own_server:
        check_reachable(sweep.uri)
    job_dir = _job_dir(sweep.storage, alloc)
    ports = Ports.free_for_job(alloc.job_id, alloc.addresses[0])
    _ray_token(job_dir)
    if own_server:  # the driver and every node's trainers log in with the job's server's credentials
        os.environ.update(credentials.client_env(mlflow_folder(sweep.storage)))
    env = {**os.environ}
    print(f"aot-ray: job {alloc.job_id} on {len(alloc.nodes)} node(s) {','.join(alloc.nodes)} "
          f"({', '.join(map(str, alloc.cpus))} CPU, {alloc.gpus} GPU per node); Ray at {alloc.addresses[0]}:"
          f"{ports.gcs}; files in {job_dir}", flush=True)
    server = ray_ = None
    rc = 1
    try:
        if own_server:
            server = MlflowServer(sweep.storage, alloc.addresses[0], ports.mlflow, job_dir / "mlflow.log")
            sweep = sweep.at(server.uri)
            (job_dir / "mlflow_uri").write_text(server.uri)
            print(server.how_to_reach(path, alloc.addresses[0], ports.mlflow), flush=True)
        ray_ = JobRay(alloc, ports, job_dir, env)
        ray_.wait_joined()
        options = replace(RunOptions.of(flags), address=ray_.address, shared_storage=True, fixed_cluster=True)
        rc = guarded(lambda: run_command(sweep, options))
    except KeyboardInterrupt:  # stopped while its servers started: requeued like a stop of the sweep
        rc = 130
    finally:
        if ray_ is not None:
            ray_.stop()
        if server is not None:
            server.stop()
    _after(rc, alloc.job_id)
    return rc


def _job_dir(storage: Storage, alloc: Allocation) -> Path:
    """The job's own folder (its logs, ports, Ray token), in the storage when it is a shared path; checked to be
    shared across the job's nodes. A refused job leaves nothing in the storage."""
    if storage.remote:
        job_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"aot-ray-slurm-{alloc.job_id}"
    else:
        job_dir = Path(storage.root) / ".aot_ray" / "slurm" / str(alloc.job_id)
    made = next((d for d in reversed([job_dir, *job_dir.parents]) if not d.exists()), None)  # topmost new folder
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        check_shared(storage, alloc, job_dir)
    except SlurmError:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    return job_dir


def _ray_token(job_dir: Path) -> None:
    """The job's Ray runs with token authentication; the token is its owner's only."""
    token = job_dir / "ray_auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))


def _after(rc: int, job_id: int) -> None:
    """A job stopped by a signal is requeued (it resumes the sweep), unless a person stopped it."""
    if rc == 130 and last_signal() == signal.SIGINT:  # a person's stop: scancel --batch --signal=INT
        print(f"aot-ray: job {job_id} stopped by SIGINT: not requeued; the same sbatch command resumes the sweep",
              flush=True)
    elif rc == 130 and os.environ.get("AOT_SLURM_REQUEUE", "1") != "0":
        requeue(job_id)


def submit(sweep: ResolvedSweep, rest: list[str], *, nodes: int = 1, gpus_per_node: int = 0,
           cpus_per_task: int | None = None, time_limit: str | None = None, partition: str | None = None,
           account: str | None = None, sbatch_args: list[str] = ()) -> str:
    """`aot-ray slurm`: with the sweep resolved and its run options (`rest`) checked here, queue
    cluster/slurm.sbatch; returns the job id. Nothing is queued for trials that cannot fit the allocation."""
    check_allocation_fits(sweep.spec, [cpus_per_task or 1] * nodes, gpus_per_node, nodes)
    if not SBATCH.is_file():
        raise SlurmError(f"{SBATCH} is missing: aot-ray slurm runs from a checkout of the project")
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch is not on PATH: run this on a login node of the cluster")
    cmd = ["sbatch", "--parsable", f"--nodes={nodes}"]
    cmd += [f"--gpus-per-node={gpus_per_node}"] if gpus_per_node else []
    cmd += [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []
    cmd += [f"--time={time_limit}"] if time_limit else []
    cmd += [f"--partition={partition}"] if partition else []
    cmd += [f"--account={account}"] if account else []
    cmd += [*sbatch_args, str(SBATCH), sweep.source, *(["--", *rest] if rest else [])]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise SlurmError(f"sbatch refused the job: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    return p.stdout.strip().split(";")[0]


def main(argv: list[str] | None = None) -> int:
    with terminable():
        return guarded(lambda: job(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
