"""The driver process killed mid-sweep, then `aot-ray run` again: finished trials are not re-run, the rest
resume, and MLflow holds exactly one run per trial plus the parent."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from aot_ray import tracking

from test_faults_integration import spec_dict

pytestmark = pytest.mark.integration


def driver_command(tmp_path, raw):
    """(tracking URI, the `aot-ray run` command line, its environment) for a sweep dict written to tmp_path."""
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "aot_ray.cli", "run", str(sweep_file), "--tracking-uri", uri,
           "--storage", str(tmp_path / "r"), "--num-cpus", "2", "--quiet"]
    return uri, cmd, {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def start_loud_and_wait(tmp_path, cmd, env, ready, timeout=240):
    """Start the driver `cmd` with --verbose instead of --quiet (its output, Tune's tables included, in first.log)
    and return its process once `ready()` holds (a failing read of the store, as it is being created, counts as
    not yet)."""
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([a if a != "--quiet" else "--verbose" for a in cmd], stdout=log,
                                 stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.3)
        with contextlib.suppress(Exception):
            if ready():
                return first
    raise AssertionError((tmp_path / "first.log").read_text()[-3000:])


def test_killed_driver_resumes_without_rerunning_finished_trials(tmp_path):
    raw = spec_dict("driverkill", steps=250, seed=[0, 1])  # 2 seeds x 2 directions = 4 trials
    raw["run"]["max_concurrent_trials"] = 1
    uri, cmd, env = driver_command(tmp_path, raw)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    c = tracking.client(uri)
    deadline = time.time() + 240
    victim = None
    while time.time() < deadline and victim is None:
        time.sleep(0.3)
        try:
            runs = tracking.SweepRuns(uri, "driverkill").trials()
        except Exception:
            continue
        finished = [r for r in runs if r.info.status == "FINISHED"]
        for r in runs:
            steps = [m.step for m in c.get_metric_history(r.info.run_id, "val_loss")]
            if finished and r.info.status == "RUNNING" and steps and max(steps) >= 50:
                victim = r
    assert victim is not None, (tmp_path / "first.log").read_text()[-3000:]
    done_before = {r.data.tags["trial_id"]: r.info.run_id for r in tracking.SweepRuns(uri, "driverkill").trials()
                   if r.info.status == "FINISHED"}
    from aot_ray.execution import own_ray

    notes = [json.loads(f.read_text()) for f in own_ray._state_dir().glob("own-ray-*.json")]
    recorded = next(n["procs"] for n in notes if n["driver"]["pid"] == first.pid)
    os.kill(first.pid, signal.SIGKILL)  # the driver alone, as the OOM killer would: its Ray is left behind
    first.wait(30)

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming {4 - len(done_before)} unfinished trial(s)" in second.stdout, second.stdout[-3000:]
    # the Ray the killed driver started for itself is gone (its agents outlive a SIGKILL otherwise)
    assert recorded and not [p for p in recorded if own_ray._start_time(p["pid"]) == p["start"]]

    exp = c.get_experiment_by_name("driverkill")
    runs = c.search_runs([exp.experiment_id])  # active runs only
    assert sum(r.data.tags.get("aot.role") == "sweep" for r in runs) == 1
    trials = [r for r in runs if r.data.tags.get("aot.role") == "trial"]
    assert len(trials) == 4 and {r.info.status for r in trials} == {"FINISHED"}
    assert len({r.data.tags["trial_id"] for r in trials}) == 4
    for r in trials:
        tid = r.data.tags["trial_id"]
        if tid in done_before:
            assert r.info.run_id == done_before[tid] and r.data.tags["aot.attempt"] == "1"  # not re-run
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "train_loss"))
        assert steps == list(range(5, 251, 5)), tid
    interrupted = c.get_run(victim.info.run_id)
    resumed = [m.value for m in c.get_metric_history(victim.info.run_id, "resumed_from_step")]
    assert interrupted.info.status == "FINISHED" and resumed and resumed[0] >= 50 - 25 and resumed[0] % 25 == 0


def test_interrupted_sweep_exits_130_marks_runs_interrupted_and_resumes(tmp_path):
    """SIGTERM while trials train (Ctrl-C takes the same path: `interrupt`'s tests, and Slurm's `scancel
    --signal=INT` in test_slurm_integration): every running trial checkpoints at the step it reached, Tune saves
    its state, the driver exits 130 saying how to resume, the parent and the unfinished trial runs are KILLED with
    tag aot.interrupted (not FAILED or FINISHED, no aot.error); the same command then finishes them, from the
    step each stopped at (even with Tune's newest state file cut off), and a finished run carries no error tag."""
    sig = signal.SIGTERM
    raw = spec_dict("intr", steps=1200)  # long enough to be running when the signal comes on a quiet machine
    uri, cmd, env = driver_command(tmp_path, raw)
    c = tracking.client(uri)
    # not quiet: the resumed run below is, and must stay so
    first = start_loud_and_wait(tmp_path, cmd, env, lambda: any(
        c.get_metric_history(r.info.run_id, "val_loss") for r in tracking.SweepRuns(uri, "intr").trials()))
    # while it runs: a second driver is refused in one line, status names the first
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 2 and "is already being run by aot-ray run on" in again.stderr, again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    st = subprocess.run([*cmd[:3], "status", *cmd[4:7]], capture_output=True, text=True, timeout=120, env=env)
    assert st.returncode == 0 and f"(pid {first.pid})" in st.stdout, st.stdout + st.stderr
    first.send_signal(sig)
    rc = first.wait(180)
    log = (tmp_path / "first.log").read_text()
    assert rc == 130, log[-3000:]
    assert "run the same command again to resume" in log and "Traceback" not in log[-2000:]
    exp = c.get_experiment_by_name("intr")
    runs = c.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("aot.role") == "sweep")
    assert parent.info.status == "KILLED" and parent.data.tags.get("aot.interrupted") == "1"
    trials = [r for r in runs if r.data.tags.get("aot.role") == "trial"]
    assert trials and all(r.info.status == "KILLED" and r.data.tags.get("aot.interrupted") == "1"
                          and "aot.error" not in r.data.tags for r in trials if r.info.status != "FINISHED")
    assert any(r.info.status == "KILLED" for r in trials)
    # what each stopped trial had trained when the signal came: its last logged step
    last = {r.info.run_id: max(m.step for m in c.get_metric_history(r.info.run_id, "train_loss"))
            for r in trials if r.info.status == "KILLED"}
    assert "running trial(s) checkpointed" in log and "at each trial's current step" in log, log[-3000:]

    # Tune's state is a cache: cut its newest file off (as a full disk does) and the sweep still resumes
    exp_dir = next(p for p in (tmp_path / "r").iterdir() if p.name.startswith("intr-"))
    newest = max(exp_dir.glob("experiment_state-*.json"))
    newest.write_bytes(newest.read_bytes()[:100])
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Trial status" in log and "Trial status" not in second.stdout + second.stderr  # --quiet kept on resume
    said = [ln for ln in second.stdout.splitlines() if "is unreadable" in ln]
    assert len(said) == 1 and newest.name in said[0] and "set aside" in said[0]
    runs = c.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("aot.role") == "trial"]
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    assert all("aot.error" not in r.data.tags and "aot.interrupted" not in r.data.tags for r in trials)
    for r in trials:
        resumed = [m.value for m in c.get_metric_history(r.info.run_id, "resumed_from_step")]
        assert resumed and resumed[0] > 0  # from its newest checkpoint, not from scratch
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "train_loss"))
        assert set(range(5, 1201, 5)) <= set(steps) and len(steps) == len(set(steps))  # + the stop's own step
    # steps each stopped trial trains twice: from the checkpoint it resumed at to the last it had trained
    twice = {run_id: step - int(c.get_metric_history(run_id, "resumed_from_step")[0].value)
             for run_id, step in last.items()}
    print(f"steps trained twice per stopped trial ({signal.Signals(sig).name}): {sorted(twice.values())}")
    assert all(n <= 1 for n in twice.values())  # checkpointed at the step it reached
    parent = next(r for r in runs if r.data.tags.get("aot.role") == "sweep")
    assert parent.info.status == "FINISHED" and "aot.interrupted" not in parent.data.tags


def test_a_resumed_sweep_takes_stop_on_sign_added_on_its_command_line(tmp_path):
    """A sweep started without the live stop, interrupted (Ctrl-C) after its first evaluations, then resumed with
    `--stop-on-sign` and `--quiet`: the resumed run is this command's, not the first one's (Tune's saved state
    is a cache, never restored with its old callbacks): the unfinished trials resume from their checkpoints in
    the same runs, the cell stops at one step well before train.steps, the parent run records this run's rule,
    and nothing of Tune's progress tables is printed. The level comes from `--set` (alpha 0.5, as in
    test_report_integration's stop test: three seeds of this cell do not reach alpha 0.05 in a test's time);
    the flag alone takes the defaults (tests/test_cli.py)."""
    from test_report_integration import STOP_SWEEP

    raw = {k: v for k, v in STOP_SWEEP.items() if k != "run"}
    raw["name"] = "addstop"
    raw["defaults"] = {**raw["defaults"], "train": {**raw["defaults"]["train"], "checkpoint_every": 250}}
    raw["run"] = {"max_concurrent_trials": 6, "sign_interval_s": 0}
    uri, cmd, env = driver_command(tmp_path, raw)
    c = tracking.client(uri)

    def evaluated() -> bool:  # every trial has its first evaluation
        runs = tracking.SweepRuns(uri, "addstop").trials()
        return len(runs) == 6 and all(any(m.step >= 250 for m in c.get_metric_history(r.info.run_id, "val_loss"))
                                      for r in runs)

    first = start_loud_and_wait(tmp_path, cmd, env, evaluated, timeout=300)
    first.send_signal(signal.SIGINT)
    assert first.wait(180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    before = {r.data.tags["trial_id"]: r.info.run_id for r in tracking.SweepRuns(uri, "addstop").trials()}
    assert all(r.data.tags.get("aot.stop_at") is None for r in tracking.SweepRuns(uri, "addstop").trials())

    sets = ["--set", "run.stop_on_sign.alpha=0.5", "--set", "run.stop_on_sign.after=0.1",
            "--set", "run.stop_on_sign.looks=1"]
    second = subprocess.run([*cmd, "--stop-on-sign", *sets], capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout and "unfinished trial(s)" in second.stdout, second.stdout[-3000:]
    # --quiet of this run, not the first's verbosity
    assert "Trial status" in (tmp_path / "first.log").read_text() and "Trial status" not in second.stdout + second.stderr
    runs = tracking.SweepRuns(uri, "addstop").trials()
    assert len(runs) == 6 and {r.data.tags["trial_id"]: r.info.run_id for r in runs} == before  # the same runs
    at = {r.data.tags.get("aot.stop_at") for r in runs}
    assert len(at) == 1 and None not in at, at
    (at,) = at
    assert 300 <= int(at) < 3000 and int(at) % 250 == 0
    for r in runs:
        assert r.info.status == "FINISHED"
        stopped = int(r.data.metrics["stopped_at_step"])
        assert int(at) <= stopped < 3000
        resumed = [m.value for m in c.get_metric_history(r.info.run_id, "resumed_from_step")]
        assert resumed and resumed[0] >= 250  # from its checkpoint, not from scratch
    parent = tracking.SweepRuns(uri, "addstop").parent()
    assert tracking.sign_rule(parent) == (0.5, 0.1)  # the rule of the resumed run
