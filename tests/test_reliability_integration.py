"""Reliability round 3 against the real thing: a storage that fills up (a 6 MB tmpfs: root), a tracking store
deleted under a running driver, and a learning-rate search whose driver was SIGKILLed; each through
`aot-ray run` as a user types it, then the same command again."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time


import pytest

from aot_ray import tracking

from test_driver_integration import driver_command
from test_faults_integration import spec_dict

pytestmark = pytest.mark.integration


def wait_for(check, timeout=240, what="the condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            got = check()
        except Exception:
            got = None
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def skip_unless_root_allowed(why: str) -> None:
    """Skip where root is missing; .ci/run sets AOT_ROOT_TESTS=require, and there it is a failure."""
    if os.environ.get("AOT_ROOT_TESTS") == "require":
        pytest.fail(f"{why}, and AOT_ROOT_TESTS=require")
    pytest.skip(why)


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        skip_unless_root_allowed("mounting a tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(where)]).returncode != 0:
        skip_unless_root_allowed("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)])


def test_a_full_disk_fails_in_one_line_and_the_next_run_resumes(tmp_path, small_disk):
    raw = spec_dict("full", steps=150, seed=[0, 1])
    raw["grid"]["model"] = ["micro"]
    raw["defaults"]["train"].update(eval_every=10, checkpoint_every=10)
    raw["run"]["max_failures"] = 1
    uri, cmd, env = driver_command(tmp_path, raw)
    cmd[cmd.index("--storage") + 1] = str(small_disk / "r")
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_for(lambda: any(small_disk.rglob("checkpoint_*")), what="a first checkpoint")
    with open(small_disk / "fill", "wb") as f:  # everything that is left
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    rc = first.wait(300)
    log = (tmp_path / "first.log").read_text()
    assert rc == 1, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    failed = [ln for ln in log.splitlines() if ln.startswith("trial ") and " failed: " in ln]
    assert failed and all("no space left on device at " + str(small_disk / "r") in ln and "MB to write" in ln
                          for ln in failed), failed

    (small_disk / "fill").unlink()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    c = tracking.client(uri)
    trials = tracking.SweepRuns(uri, "full").trials()
    assert len(trials) == 4 and {r.info.status for r in trials} == {"FINISHED"}
    for r in trials:
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "train_loss"))
        assert steps == list(range(5, 151, 5)), r.data.tags["trial_id"]  # one continuous curve


def test_a_deleted_store_stops_the_driver_in_one_line_and_signals_always_work(tmp_path):
    raw = spec_dict("gone", steps=3000)
    uri, cmd, env = driver_command(tmp_path, raw)
    db = tmp_path / "mlflow.db"
    c = tracking.client(uri)

    def evaluated():
        return any(c.get_metric_history(r.info.run_id, "val_loss") for r in tracking.SweepRuns(uri, "gone").trials())

    # 1. no signal: the driver notices by itself, within its store watch's period
    with open(tmp_path / "a.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_for(evaluated, what="a first evaluation")
    db.unlink()
    gone_at = time.monotonic()
    rc = first.wait(120)
    took = time.monotonic() - gone_at
    err = [ln for ln in (tmp_path / "a.log").read_text().splitlines() if ln.startswith("aot-ray: error:")]
    assert rc == 2 and len(err) == 1 and "is lost: database file" in err[0] and "was deleted" in err[0], err
    assert took < 60

    # 2. SIGTERM while every tracking call fails: the driver still ends at once
    raw["name"] = "gone2"
    (tmp_path / "b").mkdir()  # a store of its own (this process's MLflow keeps the first one's engine)
    uri, cmd, env = driver_command(tmp_path / "b", raw)
    c = tracking.client(uri)
    with open(tmp_path / "b.log", "w") as log:
        second = subprocess.Popen([*cmd, "--set", "run.tracking_patience_s=65"], stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
    wait_for(lambda: any(c.get_metric_history(r.info.run_id, "val_loss") for r in tracking.SweepRuns(uri, "gone2").trials()),
             what="a first evaluation")
    os.replace(tmp_path / "b" / "mlflow.db", tmp_path / "b" / "moved.db")  # every tracking call now fails
    second.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = second.wait(90)
    assert rc in (2, 130) and time.monotonic() - t0 < 60, (tmp_path / "b.log").read_text()[-3000:]


def test_a_killed_lr_search_resumes_from_its_finished_candidates(tmp_path):
    """SIGKILL once the search's first candidate is FINISHED (no lr recorded yet): the next run counts it as one
    of the search's 2 trials (never trained or reopened again), runs only the other, and goes on to the grid."""
    raw = spec_dict("lrkill", steps=40, seed=[0])
    raw["lr_search"] = {"trials": 2, "steps": 60, "low": 1e-3, "high": 1e-2}
    raw["run"]["max_concurrent_trials"] = 1  # candidates one after the other
    uri, cmd, env = driver_command(tmp_path, raw)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    c = tracking.client(uri)

    def one_finished():
        exp = c.get_experiment_by_name("lrkill")
        runs = c.search_runs([exp.experiment_id], filter_string="tags.`aot.role` = 'lr-search' and "
                                                                "attributes.status = 'FINISHED'")
        return runs

    (done,) = wait_for(one_finished, what="a finished lr candidate")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    parent = tracking.SweepRuns(uri, "lrkill").parent()
    assert not any(k.startswith("aot.lr.") for k in c.get_run(parent.info.run_id).data.tags)

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "best of 2 Optuna trials" in second.stdout
    exp = c.get_experiment_by_name("lrkill")
    lr_runs = c.search_runs([exp.experiment_id], filter_string="tags.`aot.role` = 'lr-search'")
    assert len(lr_runs) == 2 and {r.info.status for r in lr_runs} == {"FINISHED"}
    kept = c.get_run(done.info.run_id)
    assert kept.info.status == "FINISHED" and kept.info.end_time == done.info.end_time  # counted, not rerun
    tags = c.get_run(parent.info.run_id).data.tags
    trials = tracking.SweepRuns(uri, "lrkill").trials()
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    assert all(float(r.data.params["optim.lr"]) == float(tags["aot.lr.tiny"]) for r in trials)


def test_sigterm_around_ray_init_and_shutdown_stays_ours(tmp_path):
    """Ray's init puts in a SIGTERM handler of its own (sys.exit(15)) and its shutdown leaves the process-level
    one at the default: a SIGTERM while data is prepared, or while the report is written, must still be the
    driver's graceful Interrupted (exit 130, a resume hint, a Slurm requeue), not exit 15 or death."""
    script = tmp_path / "sig.py"
    script.write_text(textwrap.dedent('''
        import os, signal, time
        import ray
        from aot_ray.execution.interrupt import Interrupted, terminable
        from aot_ray.execution.session import ray_session
        with terminable():
            with ray_session(num_cpus=1, num_gpus=0):
                for _ in range(2):
                    try:
                        os.kill(os.getpid(), signal.SIGTERM); time.sleep(2)
                    except Interrupted:
                        print("interrupted with Ray up", flush=True)
            try:
                os.kill(os.getpid(), signal.SIGTERM); time.sleep(2)
            except Interrupted:
                print("interrupted after Ray stopped", flush=True)
    '''))
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split("\n")[:3] == ["interrupted with Ray up"] * 2 + ["interrupted after Ray stopped"]
