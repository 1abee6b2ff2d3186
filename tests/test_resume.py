"""Exact resume against a real MLflow store: N steps == k steps + crash + resume; one run, no duplicate step."""

import json
import shutil
import warnings

import pytest
import torch

from aot_ray import tracking
from aot_ray.data.prepare import prepare
from aot_ray.spec import expand, parse_sweep
from aot_ray.train import train
from aot_ray.train import checkpoint as ckpt

from specs import tiny_sweep

pytestmark = pytest.mark.slow  # trains for real, twice per case: kept out of the fast loop

SPEC = tiny_sweep("resume", data={"val_fraction": 0.25},
                  optim={"schedule": "cosine_restarts", "restarts": 2, "restart_decay": 0.85},
                  model={"dropout": 0.1},  # exercises the RNG state
                  train={"eval_every": 5}, grid={"direction": ["backward"]})


class Crash(Exception):
    pass


def persist_into(folder, crash_at=None):
    """An on_report like Tune's: copy each checkpoint folder away; optionally crash after a report."""
    saved = []

    def on_report(metrics, path):
        if path is not None:
            dest = folder / f"checkpoint_{len(saved):06d}"
            shutil.copytree(path, dest)
            saved.append(dest)
        if crash_at is not None and metrics["step"] == crash_at:
            raise Crash

    return on_report, saved


def model_state(path):
    state, meta = ckpt.read(path)
    return state["model"], meta


def test_k_steps_crash_resume_equals_n_steps(tmp_path):
    (trial,) = expand(parse_sweep(SPEC))
    data = prepare(trial.data, tmp_path / "store")[0]
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    ctx_a = tracking.SweepRuns(uri, "straight").start("x")
    report_a, saved_a = persist_into(tmp_path / "a")
    tr = tracking.TrialTracker(ctx_a, trial)
    straight = train(trial, tr, data=data, on_report=report_a)
    tr.finish()

    ctx_b = tracking.SweepRuns(uri, "resumed").start("x")
    report_b, saved_b = persist_into(tmp_path / "b", crash_at=15)  # metrics up to 15 logged, checkpoint at 10
    tr1 = tracking.TrialTracker(ctx_b, trial)
    with pytest.raises(Crash):
        train(trial, tr1, data=data, on_report=report_b)
    report_c, saved_c = persist_into(tmp_path / "c")
    tr2 = tracking.TrialTracker(ctx_b, trial)
    resumed = train(trial, tr2, [saved_b[-1]], data=data, on_report=report_c)
    tr2.finish()

    assert resumed.steps == straight.steps == 40
    assert abs(resumed.val_loss - straight.val_loss) < 1e-6
    sa, _ = model_state(saved_a[-1])
    sc, meta = model_state(saved_c[-1])
    for k in sa:
        torch.testing.assert_close(sa[k], sc[k], rtol=0, atol=1e-6)
    assert meta["run_id"] == tr1.run_id == tr2.run_id

    c = tracking.client(uri)
    runs = tracking.SweepRuns(uri, "resumed").trials()
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key, every in (("train_loss", 5), ("val_loss", 5)):
        steps = [m.step for m in c.get_metric_history(tr2.run_id, key)]
        assert sorted(steps) == list(range(every, 41, every)), (key, steps)  # no gap, no duplicate
    straight_curve = [m.value for m in sorted(c.get_metric_history(tr.run_id, "val_loss"), key=lambda m: m.step)]
    resumed_curve = [m.value for m in sorted(c.get_metric_history(tr2.run_id, "val_loss"), key=lambda m: m.step)]
    assert resumed_curve == pytest.approx(straight_curve, abs=1e-6)
    assert [m.value for m in c.get_metric_history(tr2.run_id, "resumed_from_step")] == [10.0]


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path):
    (trial,) = expand(parse_sweep(SPEC))
    data = prepare(trial.data, tmp_path / "store")[0]
    from aot_ray.train import RecordingTracker

    straight = train(trial, RecordingTracker(), data=data, workdir=tmp_path / "a")
    train(trial, RecordingTracker(), data=data, workdir=tmp_path / "b")
    kept = sorted((tmp_path / "b").glob("step-*"))
    assert [p.name for p in kept] == ["step-00000030", "step-00000040"]  # keep_checkpoints: 2
    latest, previous = kept[-1], kept[-2]
    with open(latest / "state.pt", "r+b") as f:
        f.truncate(1000)  # a partial write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = RecordingTracker()
        resumed = train(trial, tracker, [latest, previous], data=data, workdir=tmp_path / "c")
    assert any("falling back to the previous one" in str(w.message) for w in caught)
    assert tracker.resumed_from == 30
    assert abs(resumed.val_loss - straight.val_loss) < 1e-6


@pytest.mark.parametrize("carried", [True, False], ids=["carried", "older-checkpoint"])
def test_a_checkpoint_past_what_the_run_holds_resumes_without_a_gap(tmp_path, carried):
    """The tracking server died with the trainer (a Slurm requeue kills both): the checkpoint at step 20 was
    written, but the points after step 10 never reached MLflow. The checkpoint carries them: the trainer resumes
    from 20 and writes them first, and the curve is whole. A checkpoint of an earlier version, which carries
    nothing, would leave a gap: the trainer falls back to the checkpoint at 10, and the curve is whole too."""
    (trial,) = expand(parse_sweep(SPEC))
    data = prepare(trial.data, tmp_path / "store")[0]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = tracking.SweepRuns(uri, "lost").start("x")
    report_b, saved = persist_into(tmp_path / "b", crash_at=25)
    tr1 = tracking.TrialTracker(ctx, trial)
    real = tr1.client.log_batch

    def dying(run_id, metrics=(), **kw):
        if any(m.step > 10 for m in metrics):
            raise ConnectionError("the server is gone")
        return real(run_id, metrics=metrics, **kw)

    tr1.client.log_batch = dying
    with pytest.raises(Crash), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(trial, tr1, data=data, on_report=report_b)
    assert [ckpt.read(p)[1]["step"] for p in saved] == [10, 20]
    assert ckpt.read(saved[1])[1]["confirmed"] == 10
    if not carried:  # as an earlier version wrote it: no record of what the store confirmed
        meta = json.loads((saved[1] / "meta.json").read_text())
        del meta["confirmed"]
        (saved[1] / "meta.json").write_text(json.dumps(meta))
    tr2 = tracking.TrialTracker(ctx, trial)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(trial, tr2, list(reversed(saved)), data=data, on_report=persist_into(tmp_path / "c")[0])
    tr2.finish()
    skipped = any("skipped checkpoint at step 20" in str(w.message) for w in caught)
    assert skipped != carried
    c = tracking.client(uri)
    assert tr2.run_id == tr1.run_id
    assert [m.value for m in c.get_metric_history(tr2.run_id, "resumed_from_step")] == [20.0 if carried else 10.0]
    for key in ("train_loss", "val_loss"):
        assert sorted(m.step for m in c.get_metric_history(tr2.run_id, key)) == list(range(5, 41, 5)), key


def test_a_stop_notice_between_logged_steps_checkpoints_there_and_the_resume_trains_no_step_twice(tmp_path):
    """The driver's stop notice comes at step 13 (log_every 5, checkpoint_every 10): the trial logs the loss of
    steps 11-13, checkpoints at 13 and stops; the resume starts at 13, so no step is trained twice, and it ends
    where the uninterrupted run ends."""
    from aot_ray.errors import StopRequested
    from aot_ray.train.tracker_api import STOPPED_AT

    (trial,) = expand(parse_sweep(SPEC))
    data = prepare(trial.data, tmp_path / "store")[0]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx_a = tracking.SweepRuns(uri, "straight").start("x")
    tr = tracking.TrialTracker(ctx_a, trial)
    straight = train(trial, tr, data=data, on_report=persist_into(tmp_path / "a")[0])
    tr.finish()

    ctx_b = tracking.SweepRuns(uri, "stopped").start("x")
    calls = {"n": 0}

    def notice() -> bool:  # asked after every step: posted once step 13 is done
        calls["n"] += 1
        return calls["n"] >= 13

    reports = []
    report_b, saved_b = persist_into(tmp_path / "b")
    tr1 = tracking.TrialTracker(ctx_b, trial)
    with pytest.raises(StopRequested):
        train(trial, tr1, data=data, on_report=lambda m, p: (reports.append(m), report_b(m, p)), stop_notice=notice)
    assert reports[-1][STOPPED_AT] == 13 and model_state(saved_b[-1])[1]["step"] == 13
    tr2 = tracking.TrialTracker(ctx_b, trial)
    resumed = train(trial, tr2, [saved_b[-1]], data=data, on_report=persist_into(tmp_path / "c")[0])
    tr2.finish()
    assert abs(resumed.val_loss - straight.val_loss) < 1e-6
    c = tracking.client(uri)
    (run,) = tracking.SweepRuns(uri, "stopped").trials()
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == sorted(set(steps)) and 13 in steps  # every step's loss once: 11-13 logged at the stop
    assert [m.value for m in c.get_metric_history(run.info.run_id, "resumed_from_step")] == [13.0]
