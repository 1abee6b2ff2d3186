"""Faults under Ray Tune: a SIGKILLed trial process resumes from its checkpoint; an injected NaN fails only its
trials and the report still pairs the others."""

import os
import signal
import threading
import time

import pytest
import yaml

from aot_ray import sweep, tracking
from aot_ray.cli import main
from aot_ray.spec import parse_sweep

pytestmark = pytest.mark.integration


def spec_dict(name, steps=300, **grid):
    return {
        "name": name,
        "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256, "windows": "stream"}},
        "defaults": {
            "optim": {"lr": 3e-3, "warmup_steps": 2},
            "train": {"steps": steps, "batch_size": 16, "eval_every": 25, "log_every": 5, "checkpoint_every": 25,
                      "eval_windows": 16},
            "resources": {"cpu": 1},
        },
        "grid": {"dataset": ["lin"], "model": ["tiny"], "context_length": [32], **grid},
        "run": {"max_failures": 2, "max_concurrent_trials": 2},
    }


def kill_when(uri, sweep_name, min_step, killer, timeout=120):
    """Poll MLflow until a trial run has a val_loss at >= min_step, then call killer(run)."""
    c = tracking.client(uri)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for run in tracking.SweepRuns(uri, sweep_name).trials():
                steps = [m.step for m in c.get_metric_history(run.info.run_id, "val_loss")]
                if steps and max(steps) >= min_step and "aot.pid" in run.data.tags:
                    killer(run)
                    return run
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError("the trial never reached the step to kill it at")


def test_sigkilled_trial_resumes_from_checkpoint(tmp_path, ray_local):
    raw = spec_dict("sigkill", direction=["forward"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_sweep(raw)
    killed = {}

    def killer(run):
        killed["pid"] = int(run.data.tags["aot.pid"])
        os.kill(killed["pid"], signal.SIGKILL)  # the process dies: no exception handler runs

    t = threading.Thread(target=kill_when, args=(uri, "sigkill", 100, killer), daemon=True)
    t.start()
    out = sweep.run(sweep.ResolvedSweep.of(spec, yaml.safe_dump(raw), uri=uri, storage=str(tmp_path / "r")), verbose=0, say=lambda _: None)
    t.join(5)
    assert "pid" in killed and not out.failed
    c = tracking.client(uri)
    (run,) = tracking.SweepRuns(uri, "sigkill").trials()
    assert run.info.status == "FINISHED" and int(run.data.tags["aot.attempt"]) == 2
    resumed = [m.value for m in c.get_metric_history(run.info.run_id, "resumed_from_step")]
    # from a checkpoint, not from step 0; MLflow sees val_loss at a step just before that step's checkpoint is
    # persisted, so the kill can land one checkpoint earlier
    assert resumed and resumed[0] >= 100 - 25 and resumed[0] % 25 == 0
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(5, 301, 5))  # one continuous curve: no gap, no duplicate


def test_nan_fails_only_its_trials_and_the_report_pairs_the_rest(tmp_path, ray_local, capsys):
    raw = spec_dict("nan", steps=40, **{"train.debug_nan_at_step": [None, 12]})
    raw["run"]["max_failures"] = 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=uri, storage=str(tmp_path / "r")), verbose=0,
                    say=lambda _: None)
    assert len(out.failed) == 2 and len(out.ran) == 4
    for o in out.failed:
        assert "debug_nan_at_step12" in o.trial_id
        assert "training loss became nan at steps 11-15" in o.error
    assert len(out.report["pairs"]) == 1 and "nan_at_stepNone" in out.report["pairs"][0]["pair_key"]

    f = tmp_path / "nan.yaml"
    f.write_text(yaml.safe_dump(raw))
    capsys.readouterr()  # drop what Tune printed during the run
    assert main(["status", str(f), "--json", "--tracking-uri", uri]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    states = {r["trial_id"]: r for r in rows}
    assert sorted(r["state"] for r in rows) == ["ERROR", "ERROR", "TERMINATED", "TERMINATED"]
    for r in rows:
        if r["state"] == "ERROR":
            assert "at steps 11-15" in r["error"] and r["step"] == 10
        else:
            assert r["step"] == 40 and r["val_loss"] > 0 and r["error"] is None
    assert len(states) == 4

    before = {r.data.tags["trial_id"]: r.info.run_id for r in tracking.SweepRuns(uri, "nan").trials()}
    again = sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=uri, storage=str(tmp_path / "r")), verbose=0,
                      say=lambda _: None, restart_errored=True)
    assert sorted(o.trial_id for o in again.failed) == sorted(o.trial_id for o in out.failed)
    after = {r.data.tags["trial_id"]: r for r in tracking.SweepRuns(uri, "nan").trials()}
    assert len(after) == 4
    c = tracking.client(uri)
    for tid, run in after.items():
        if "step12" in tid:  # started from scratch: a new run replaces the stale one, no resume
            assert run.info.run_id != before[tid]
            assert c.get_metric_history(run.info.run_id, "resumed_from_step") == []
        else:  # finished trials were not touched
            assert run.info.run_id == before[tid] and run.data.tags["aot.attempt"] == "1"

    fresh = sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=uri, storage=str(tmp_path / "r")), verbose=0,
                      say=lambda _: None, fresh=True)
    assert len(fresh.ran) == 4 and fresh.skipped == []
    exp = c.get_experiment_by_name("nan")
    parents = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("aot.role") == "sweep"]
    assert len(parents) == 2
    old_parent = c.get_run(next(iter(before.values()))).data.tags["mlflow.parentRunId"]
    new_parent = tracking.SweepRuns(uri, "nan").parent().info.run_id
    assert old_parent != new_parent and {p.info.run_id for p in parents} == {old_parent, new_parent}
    assert len(tracking.SweepRuns(uri, "nan", old_parent).trials()) == 4  # kept as they were
    assert len(tracking.SweepRuns(uri, "nan").trials()) == 4  # the new sweep's own runs


def test_a_finished_trial_is_never_rerun_or_reopened(tmp_path, ray_local):
    """A driver killed between a trial's FINISHED in MLflow and Tune's record of it: on resume Tune launches the
    trial again; it sees its finished run and reports it, without training or reopening the run."""
    import dataclasses

    from aot_ray import sweep
    from aot_ray.data.prepare import prepare
    from aot_ray.spec import expand, parse_sweep
    from aot_ray.execution.tune import TuneJob, run_trials
    from aot_ray.storage import Storage

    raw = spec_dict("final", steps=30)
    spec = parse_sweep(raw)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = sweep.run(sweep.ResolvedSweep.of(spec, yaml.safe_dump(raw), uri=uri, storage=str(tmp_path / "r")), verbose=0, say=lambda _: None)
    assert len(out.ran) == 2 and not out.failed
    c = tracking.client(uri)
    before = {r.info.run_id: (r.info.status, r.info.end_time, len(c.get_metric_history(r.info.run_id, "train_loss")))
              for r in tracking.SweepRuns(uri, "final").trials()}
    ctx = tracking.SweepRuns(uri, "final").start(yaml.safe_dump(raw))  # the same parent run, as a resumed driver has
    trials = expand(spec)
    data = {t.trial_id: prepare(t.data, tmp_path / "r")[0].location for t in trials}
    outcomes, _ = run_trials(TuneJob(pending=trials, all_trials=trials, ctx=ctx, data=data,
                                     storage=Storage.of(tmp_path / "r"), experiment="lost-state",
                                     run=dataclasses.replace(spec.run, max_failures=0), verbose=0))
    assert all(o.ok for o in outcomes) and len(outcomes) == 2
    after = {r.info.run_id: (r.info.status, r.info.end_time, len(c.get_metric_history(r.info.run_id, "train_loss")))
             for r in tracking.SweepRuns(uri, "final").trials()}
    assert after == before  # same runs, still FINISHED, not reopened, no new points
