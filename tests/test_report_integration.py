"""sweeps/linear-tiny.yaml end to end: Ray Tune trains 8 trials, and the report's delta-vs-k trend is the fit of
the deltas of those runs; its files are attached to the sweep's parent run and the sequential sign test is logged
on the trial runs."""

from pathlib import Path

import numpy as np
import pytest

from aot_ray import sweep, tracking
from aot_ray.cli import main
from aot_ray.spec import load_sweep_text

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parent.parent


def test_linear_tiny_end_to_end_trend_and_artifacts(tmp_path, ray_local, capsys):
    spec, text = load_sweep_text(ROOT / "sweeps" / "linear-tiny.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = sweep.run(spec, text, uri=uri, storage=str(tmp_path / "r"), verbose=0, say=lambda _: None)
    assert len(out.ran) == 8 and not out.failed

    # independently of the report: delta per k from the runs' final validation losses, and its least squares line
    c = tracking.client(uri)
    loss: dict[tuple[int, str], float] = {}
    for run in tracking.trial_runs(uri, "linear-tiny"):
        k = int(run.data.params["data.k"])
        loss[(k, run.data.tags["direction"])] = run.data.metrics["final_val_loss"]
    ks = sorted({k for k, _ in loss})
    assert ks == [0, 3, 6, 12]
    deltas = [(loss[k, "backward"] - loss[k, "forward"]) / (0.5 * (loss[k, "backward"] + loss[k, "forward"]))
              for k in ks]
    slope, intercept = np.polyfit(ks, deltas, 1)

    (trend,) = [t for t in out.report["trends"] if t["x"] == "data.k"]
    assert trend["scale"] == "linear" and trend["n"] == 4  # k = 0 is on the axis: not a log scale
    assert trend["slope"] == pytest.approx(slope, rel=1e-6, abs=1e-9)
    assert trend["intercept"] == pytest.approx(intercept, rel=1e-6, abs=1e-9)
    assert trend["slope_lo"] <= trend["slope"] <= trend["slope_hi"]
    for p in out.report["pairs"]:  # each pair has a bootstrap interval over its 100 validation windows
        assert p["n_windows"] == 100 and p["delta_lo"] <= p["delta"] <= p["delta_hi"]

    parent = tracking.find_parent(uri, tracking.experiment_id(uri, "linear-tiny", create=False), "linear-tiny")
    attached = {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/aot_trends.csv", "report/aot_pairs.csv", "report/aot_sequential.csv",
            "report/delta_vs_data_k.png", "report/delta_vs_data_k.svg", "report/curves_1.png"} <= attached
    md = (tmp_path / "r" / "reports" / "linear-tiny" / "report.md").read_text()
    assert "data.k" in md and "## Early sign detection" in md

    run = tracking.trial_runs(uri, "linear-tiny")[0]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "aot_sign")] == [100, 200, 300, 400]

    # `aot-ray report` again: the same trend, and no sign looks logged twice
    capsys.readouterr()
    assert main(["report", "linear-tiny", "--tracking-uri", uri, "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "Trends" in printed and "data.k" in printed
    assert [m.step for m in c.get_metric_history(run.info.run_id, "aot_sign")] == [100, 200, 300, 400]
    assert (tmp_path / "again" / "aot_trends.csv").read_text() == \
        (tmp_path / "r" / "reports" / "linear-tiny" / "aot_trends.csv").read_text()


def test_running_pairs_get_the_sign_test_logged_as_they_evaluate(tmp_path):
    """What the sweep's Tune callback does between reports: both sides of a pair still RUNNING, evaluations
    arriving; each update logs only the new looks."""
    from aot_ray.aggregate.read import Reader
    from aot_ray.aggregate.write import update_signs
    from aot_ray.spec import expand, parse_sweep
    from aot_ray.tracking import TrialTracker, start_sweep

    raw = {"name": "live", "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256}},
           "defaults": {"optim": {"warmup_steps": 2}, "train": {"steps": 30}},
           "grid": {"dataset": ["lin"], "model": ["micro"], "context_length": [32]}}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = start_sweep(uri, "live", "name: live")
    fw_trial, bw_trial = expand(parse_sweep(raw))
    trackers = {t.direction: TrialTracker(ctx, t) for t in (fw_trial, bw_trial)}
    for t in trackers.values():
        t.begin(None)
    rng = np.random.default_rng(0)
    base = 1 + 0.1 * rng.standard_normal(300)

    def evaluate(step, gap):
        for direction, tr in trackers.items():
            loss = base + (gap + 0.02 * rng.standard_normal(300) if direction == "backward" else 0)
            tr.log_metrics({"val_loss": float(loss.mean())}, step=step)
            tr.log_dict({"step": step, "loss": loss.tolist()}, f"eval/windows/step-{step:08d}.json")
            tr.flush()

    reader = Reader(uri, "live")
    c = tracking.client(uri)
    evaluate(10, 0.0)
    assert update_signs(reader) == 2  # one look, on both runs
    evaluate(20, 0.05)
    assert update_signs(reader) == 2  # only the new look
    assert update_signs(reader) == 0
    for tr in trackers.values():
        signs = sorted((m.step, m.value) for m in c.get_metric_history(tr.run_id, "aot_sign"))
        assert signs == [(10, 0.0), (20, 1.0)]  # no gap yet, then a forward arrow established
        assert c.get_run(tr.run_id).info.status == "RUNNING"
    reader.close()


STOP_SWEEP = {
    "name": "stop-on-sign",
    "data": {"primes": {"kind": "primes", "digits": 3, "n_samples": 12000, "val_fraction": 0.1}},
    "defaults": {"model": {"dropout": 0.0}, "optim": {"lr": 3e-3, "warmup_steps": 30},
                 "train": {"steps": 3000, "batch_size": 32, "eval_every": 50, "eval_windows": 256, "log_every": 10,
                           "checkpoint_every": 500}},
    "grid": {"dataset": ["primes"], "model": ["micro"], "context_length": [64]},
    "run": {"max_concurrent_trials": 2, "sign_interval_s": 0, "stop_on_sign": {"after": 0.05, "looks": 2}},
}


def test_stop_on_sign_ends_the_pair_early_and_the_report_compares_it_at_the_stop_step(tmp_path, ray_local):
    """3000 steps asked for; on this pair (3-digit primes, micro GPT) the sign settles within a few hundred. Both
    runs carry the step the sign test settled at, end at an evaluation at or after it (each sees the request at
    its next evaluation), and the report's delta is that of both sides' window losses at that step."""
    import json
    import yaml

    from aot_ray.spec import parse_sweep

    spec = parse_sweep(STOP_SWEEP)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = sweep.run(spec, yaml.safe_dump(STOP_SWEEP), uri=uri, storage=str(tmp_path / "r"), verbose=0,
                    say=lambda _: None)
    assert len(out.ran) == 2 and not out.failed
    c = tracking.client(uri)
    runs = {r.data.tags["direction"]: r for r in tracking.trial_runs(uri, "stop-on-sign")}
    at = {int(r.data.tags["aot.stop_at"]) for r in runs.values()}
    assert len(at) == 1
    (at,) = at
    assert 150 <= at < 3000 and at % 50 == 0  # not before `after` (5% of 3000 steps), at an evaluation
    mean_at = {}
    for d, r in runs.items():
        assert r.info.status == "FINISHED"
        stopped = int(r.data.metrics["stopped_at_step"])
        assert at <= stopped < 3000
        assert max(m.step for m in c.get_metric_history(r.info.run_id, "val_loss")) == stopped
        local = c.download_artifacts(r.info.run_id, f"eval/windows/step-{at:08d}.json", str(tmp_path / d))
        mean_at[d] = float(np.mean(json.loads(Path(local).read_text())["loss"]))
    (p,) = out.report["pairs"]
    assert p["stopped_at"] == at and out.report["stopped"] == {p["pair_key"]: at}
    want = (mean_at["backward"] - mean_at["forward"]) / (0.5 * (mean_at["backward"] + mean_at["forward"]))
    assert p["delta"] == pytest.approx(want, rel=1e-6)
    assert (p["delta_lo"] > 0) == (p["delta_hi"] > 0)  # a settled sign: the interval excludes 0
    assert not out.report["position_gaps"]  # final per-position losses of a stopped pair are from other steps
