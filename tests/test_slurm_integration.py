"""`sbatch cluster/slurm.sbatch SWEEP.yaml` on a real Slurm (a private slurmctld and two slurmd "nodes" on this
machine, tests/slurm_util.py): a sweep on both nodes through a requeue from outside, Slurm's time-limit warning
in mid-sweep (the job requeues itself, its next run finishes), two jobs on one node, bad input refused in one line, and a graceful stop then a resubmission.
No mock of Slurm or Ray.

Root only (slurmd runs jobs as root here); AOT_SLURM_TEST=require (set by .ci/run) turns a skip into a failure.
A requeued job waits for its BeginTime (Slurm holds it about two minutes); the tests move that to now."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aot_ray import tracking

from slurm_util import available, job_state, private_slurm

pytestmark = [pytest.mark.integration, pytest.mark.slurm]
ROOT = Path(__file__).resolve().parents[1]
AOT_RAY = [sys.executable, "-m", "aot_ray.cli"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = available()
    if why:
        if os.environ.get("AOT_SLURM_TEST") == "require":
            pytest.fail(f"the Slurm test cannot run: {why} (AOT_SLURM_TEST=require)")
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm")
    started = time.time()
    with private_slurm(root / "slurm", cpus=2, unshared=root / "node-local") as env:
        # where the jobs record their MLflow servers' credentials (a user's ~/.aot_ray otherwise)
        env["AOT_MLFLOW_CREDENTIALS"] = str(root / "mlflow_credentials.json")
        yield env, root
    left = subprocess.run(["pgrep", "-af", f"slurmctld -f {root}|slurmd -f {root}|/tmp/aot-|{root}"],
                          capture_output=True, text=True).stdout
    assert not left.strip(), f"left running: {left}"
    # the jobs' Ray temp folders (/tmp/aot-JOB-NODE) are gone; Ray's logs were kept in the jobs' folders
    stale = [p for p in Path("/tmp").glob("aot-*-*") if re.fullmatch(r"aot-\d+-\d+", p.name)
             and p.stat().st_mtime >= started - 1]
    assert not stale, f"left in /tmp: {stale}"
    if (root / "two").exists():  # the two-node sweep ran: the second node's Ray logs were kept
        assert list(root.glob("two/.aot_ray/slurm/*/ray-logs/*-aot-*-1-*/raylet.out"))


def sbatch(env, args: list[str], out: Path) -> str:
    p = subprocess.run(["sbatch", "--parsable", f"--output={out}", *args], env=env, capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def wait_job(env, job: str, until: tuple[str, ...], timeout: float = 420, out: Path | None = None) -> dict:
    """Wait for one of the states `until`; a job held by its requeue BeginTime is let go at once."""
    deadline = time.time() + timeout
    seen: list[str] = []  # the job's states in order, for the failure message
    while time.time() < deadline:
        s = job_state(env, job)
        now = f"{s.get('JobState')}/{s.get('Reason')}/{s.get('Restarts')}"
        if not seen or seen[-1] != now:
            seen.append(now)
        s["seen"] = " -> ".join(seen)
        if s.get("JobState") in until:
            return s
        if s.get("JobState") == "PENDING" and s.get("Reason") == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, capture_output=True)
        time.sleep(1)
    raise AssertionError(f"job {job} never reached {until} ({' -> '.join(seen)}): {job_state(env, job)}\n"
                         + (out.read_text()[-4000:] if out and out.exists() else ""))


def trial_runs(db: Path, sweep: str):
    return tracking.SweepRuns(f"sqlite:///{db}", sweep).trials()


def wait_evaluated(db: Path, sweep: str, step: int, out: Path, timeout: float = 300) -> None:
    """Wait until a trial of the sweep has evaluated at `step` or later (the sweep is under way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = tracking.client(f"sqlite:///{db}")
            if any(max((m.step for m in c.get_metric_history(r.info.run_id, "val_loss")), default=0) >= step
                   for r in trial_runs(db, sweep)):
                return
        except Exception:  # the job's database is not there yet
            pass
        time.sleep(0.5)
    raise AssertionError(out.read_text()[-4000:] if out.exists() else "no job output")


def assert_one_curve_each(db: Path, sweep: str, steps: int, n: int, log_every: int = 10):
    c = tracking.client(f"sqlite:///{db}")
    runs = trial_runs(db, sweep)
    assert len(runs) == n and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["trial_id"] for r in runs}) == n
    for r in runs:
        got = sorted(m.step for m in c.get_metric_history(r.info.run_id, "train_loss"))
        # every logged step once; a stop with notice also logs the steps since the last log at the step it reached
        assert set(range(log_every, steps + 1, log_every)) <= set(got) and len(got) == len(set(got)), \
            r.data.tags["trial_id"]
    return runs


def test_a_sweep_on_two_nodes_resumes_after_a_requeue(slurm):
    env, root = slurm
    storage, out = root / "two", root / "two.out"
    job = sbatch(env, ["-N2", "--cpus-per-task=2", "cluster/slurm.sbatch", "sweeps/cluster-check.yaml", "--",
                       "--storage", str(storage), "--quiet", "--set", "grid.seed=[0]",
                       "--set", "defaults.train.steps=300", "--set", "defaults.train.checkpoint_every=50",
                       "--set", "defaults.train.eval_every=50"], out)
    db = storage / "mlflow" / "mlflow.db"
    wait_evaluated(db, "cluster-check", 100, out)  # mid-sweep
    # the job's MLflow server, on the node's address, answers the job's owner only (trainers on both nodes log in)
    uri = (storage / ".aot_ray" / "slurm" / job / "mlflow_uri").read_text().strip()
    creds = json.loads((storage / "mlflow" / "credentials.json").read_text())
    api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
    assert subprocess.run([*curl, api], capture_output=True, text=True).stdout == "401"
    assert subprocess.run([*curl, "-u", f"aot:{creds['password']}", api], capture_output=True,
                          text=True).stdout == "200"
    assert oct((storage / "mlflow").stat().st_mode & 0o777) == "0o700"
    assert oct((storage / "mlflow" / "credentials.json").stat().st_mode & 0o777) == "0o600"
    assert uri in json.loads((root / "mlflow_credentials.json").read_text())
    subprocess.run(["scontrol", "requeue", job], env=env, check=True)  # what a preemption does
    state = wait_job(env, job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), out=out)
    log = out.read_text()
    assert state["JobState"] == "COMPLETED" and int(state["Restarts"]) >= 1, log[-4000:]
    assert "resuming 2 unfinished trial(s)" in log or "already finished in MLflow" in log, log[-4000:]
    runs = assert_one_curve_each(db, "cluster-check", 300, 2)
    assert len({r.data.tags["aot.node"] for r in runs}) == 2  # one trial per node: both Ray nodes ran one
    # from a login node, after the job: the database file in the storage
    for cmd in (["report", "sweeps/cluster-check.yaml", "--no-plots", "--out", str(root / "rep")],
                ["status", "sweeps/cluster-check.yaml"]):
        p = subprocess.run([*AOT_RAY, *cmd, "--tracking-uri", f"sqlite:///{db}", "--set", "grid.seed=[0]",
                            "--set", "defaults.train.steps=300", "--set", "defaults.train.checkpoint_every=50",
                            "--set", "defaults.train.eval_every=50"], capture_output=True, text=True, cwd=ROOT,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]


def test_a_time_limit_requeues_the_job_and_the_requeued_job_finishes_the_sweep(slurm):
    """Slurm's own time-limit warning (`--signal=B:TERM@300`) on a job in mid-sweep: the driver stops
    gracefully, the job requeues itself, and its next run resumes and finishes. The limit is lowered to 5 minutes
    once training is under way, so the warning is due at once (Slurm's timer sends it within a minute, and may
    send it up to 60 s early: a fixed short limit would race the sweep), and raised again for the next run."""
    env, root = slurm
    storage, out = root / "limit", root / "limit.out"
    sets = ["--set", "name=limit", "--set", "grid.seed=[0]", "--set", "defaults.resources.cpu=1",
            "--set", "defaults.train.steps=12000", "--set", "defaults.train.checkpoint_every=500",
            "--set", "defaults.train.eval_every=500"]  # 75 s of training here: the warning comes well before the end
    job = sbatch(env, ["-N1", "-w", "n1", "--cpus-per-task=2", "--time=10", "--signal=B:TERM@300",
                       "cluster/slurm.sbatch", "sweeps/cluster-check.yaml", "--", "--storage", str(storage),
                       "--quiet", *sets], out)
    db = storage / "mlflow" / "mlflow.db"
    wait_evaluated(db, "limit", 1, out)  # training under way: an evaluation is in
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=5"], env=env, check=True)
    deadline = time.time() + 240
    while time.time() < deadline and int(job_state(env, job).get("Restarts", 0)) < 1:
        time.sleep(1)
    assert int(job_state(env, job).get("Restarts", 0)) >= 1, out.read_text()[-3000:]
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], env=env, check=True)
    state = wait_job(env, job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=600, out=out)
    log = out.read_text()
    assert state["JobState"] == "COMPLETED" and int(state["Restarts"]) == 1, state["seen"] + "\n" + log[-4000:]
    assert log.count("requeued: the next run of it resumes the sweep") == 1
    assert "resuming 2 unfinished trial(s)" in log and "Traceback" not in log
    assert_one_curve_each(db, "limit", 12000, 2)
    # at the warning each trial checkpointed at the step it had reached, and the requeued job resumed it there:
    # no step trained twice (before: from the last due checkpoint, up to checkpoint_every 500 steps back)
    said = re.search(r"stopping the sweep at each trial's current step; 2 of 2 running trial\(s\) checkpointed "
                     r"\((.*?)\)", log)
    assert said, log[-4000:]
    stopped = {t: int(s) for t, s in re.findall(r"(\S+) at step (\d+)", said.group(1))}
    c = tracking.client(f"sqlite:///{db}")
    resumed = {r.data.tags["trial_id"]: int(c.get_metric_history(r.info.run_id, "resumed_from_step")[0].value)
               for r in trial_runs(db, "limit")}
    twice = {t: stopped[t] - resumed[t] for t in stopped}
    print(f"steps trained twice per trial after the Slurm time limit: {sorted(twice.values())}")
    assert set(stopped) == set(resumed) and all(0 <= n <= 1 for n in twice.values()), (stopped, resumed)


def test_two_jobs_share_a_node_and_bad_input_is_one_line(slurm):
    """The `aot-ray slurm` wrapper refuses a bad sweep before anything is queued; two jobs, one queued by plain
    sbatch and one by the wrapper, run side by side on n1 and finish; then bad input inside a job (a trial larger
    than the allocation, an unreachable tracking server, a storage one node does not see) is one line, exit 2."""
    env, root = slurm
    # the wrapper refuses a bad sweep before anything is queued
    bad = root / "bad.yaml"
    bad.write_text("name: bad\ndata: {}\n")
    before = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout
    p = subprocess.run([*AOT_RAY, "slurm", str(bad), "--nodes", "2"], env=env, capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "grid: is required" in p.stderr
    p = subprocess.run([*AOT_RAY, "slurm", "sweeps/cluster-check.yaml", "--nodes", "2", "--cpus-per-task", "1"],
                       env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 2 and "asks for 2 CPU" in p.stderr
    assert subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout == before

    jobs = {}
    sets = {name: ["--storage", str(root / name), "--quiet", "--set", f"name={name}", "--set", "grid.seed=[0]",
                   "--set", "defaults.train.steps=200", "--set", "defaults.resources.cpu=1"]
            for name in ("share-a", "share-b")}
    jobs["share-a"] = sbatch(env, ["-N1", "-w", "n1", "--cpus-per-task=2", "cluster/slurm.sbatch",
                                   "sweeps/cluster-check.yaml", "--", *sets["share-a"]], root / "share-a.out")
    # and queues a good one: the same job through the wrapper
    p = subprocess.run([*AOT_RAY, "slurm", "sweeps/cluster-check.yaml", "--nodes", "1", "--cpus-per-task", "2",
                        "--sbatch=--nodelist=n1", "--sbatch=--output=" + str(root / "share-b.out"), "--",
                        *sets["share-b"]], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0 and "queued Slurm job" in p.stdout, p.stderr
    jobs["share-b"] = p.stdout.split("queued Slurm job ")[1].split(":")[0]
    both = False
    deadline = time.time() + 300
    while time.time() < deadline and not both:
        both = all(job_state(env, j).get("JobState") == "RUNNING" for j in jobs.values())
        time.sleep(0.5)
    assert both, "the two jobs never ran at the same time on n1"
    for name, job in jobs.items():
        state = wait_job(env, job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), out=root / f"{name}.out")
        assert state["JobState"] == "COMPLETED", (root / f"{name}.out").read_text()[-4000:]
        assert_one_curve_each(root / name / "mlflow" / "mlflow.db", name, 200, 2)

    # a trial larger than the allocation: one line, exit 2, no trial starts
    out = root / "big.out"
    job = sbatch(env, ["-N1", "cluster/slurm.sbatch", "sweeps/cluster-check.yaml", "--", "--storage",
                       str(root / "big")], out)
    state = wait_job(env, job, ("COMPLETED", "FAILED"), out=out)
    errors = [ln for ln in out.read_text().splitlines() if ln.startswith("aot-ray: error:")]
    assert state["JobState"] == "FAILED" and state["ExitCode"].startswith("2:")
    assert len(errors) == 1 and "asks for 2 CPU" in errors[0] and "--cpus-per-task" in errors[0]
    assert not (root / "big" / "mlflow").exists()
    # an unreachable tracking server: the same
    out = root / "unreachable.out"
    job = sbatch(env, ["-N1", "--cpus-per-task=2", "cluster/slurm.sbatch", "sweeps/cluster-check.yaml", "--",
                       "--storage", str(root / "u"), "--tracking-uri", "http://127.0.0.1:9"], out)
    state = wait_job(env, job, ("COMPLETED", "FAILED"), out=out)
    errors = [ln for ln in out.read_text().splitlines() if ln.startswith("aot-ray: error:")]
    assert state["JobState"] == "FAILED" and len(errors) == 1 and "cannot reach the MLflow" in errors[0]
    # a storage that n2 does not see (its own folder there): the same, and nothing left in it
    out = root / "unshared.out"
    job = sbatch(env, ["-N2", "--cpus-per-task=2", "cluster/slurm.sbatch", "sweeps/cluster-check.yaml", "--",
                       "--storage", str(root / "node-local" / "s")], out)
    state = wait_job(env, job, ("COMPLETED", "FAILED"), out=out)
    errors = [ln for ln in out.read_text().splitlines() if ln.startswith("aot-ray: error:")]
    assert state["JobState"] == "FAILED" and state["ExitCode"].startswith("2:"), out.read_text()[-3000:]
    assert len(errors) == 1 and "is not shared: node n2" in errors[0], out.read_text()[-3000:]
    assert not (root / "node-local" / "s").exists()


def test_a_stop_by_sigint_is_graceful_without_a_requeue_and_the_same_sbatch_resumes_it(slurm):
    """`scancel --batch --signal=INT`: the driver stops gracefully (Ray stays up meanwhile, unlike a plain
    scancel, which ends every step of the job at once), marks its runs interrupted and does not requeue."""
    env, root = slurm
    storage = root / "cancel"
    args = ["-N1", "-w", "n2", "--cpus-per-task=2", "cluster/slurm.sbatch", "sweeps/cluster-check.yaml", "--",
            "--storage", str(storage), "--quiet", "--set", "name=cancel", "--set", "grid.seed=[0]",
            "--set", "defaults.resources.cpu=1", "--set", "defaults.train.steps=600",
            "--set", "defaults.train.checkpoint_every=50", "--set", "defaults.train.eval_every=50"]
    out = root / "cancel.out"
    job = sbatch(env, args, out)
    db = storage / "mlflow" / "mlflow.db"
    wait_evaluated(db, "cancel", 100, out)
    subprocess.run(["scancel", "--batch", "--signal=INT", job], env=env, check=True)
    state = wait_job(env, job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=180, out=out)
    log = out.read_text()
    assert state["Restarts"] == "0" and state["ExitCode"].startswith("130:"), state["seen"] + log[-3000:]
    assert "stopped by SIGINT: not requeued" in log and "requeued: the next run" not in log, log[-3000:]
    # the driver's own lines only: no Tune account with its Tuner.restore advice, no MLflow "View run" per run
    assert "Tuner.restore" not in log and "View run" not in log, log[-3000:]
    assert {r.info.status for r in trial_runs(db, "cancel")} <= {"KILLED", "FINISHED"}  # marked, not left RUNNING
    out2 = root / "cancel2.out"
    job2 = sbatch(env, args, out2)
    state = wait_job(env, job2, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), out=out2)
    log2 = out2.read_text()
    assert state["JobState"] == "COMPLETED", log2[-3000:]
    assert "resuming" in log2 and "unfinished trial(s)" in log2, log2[-3000:]
    assert_one_curve_each(db, "cancel", 600, 2)
