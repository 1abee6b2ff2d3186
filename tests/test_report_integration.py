"""sweeps/linear-tiny.yaml end to end (shortened to 160 steps): Ray Tune trains 8 trials, and the report's delta-vs-k trend is the fit of
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
    # the sweep as shipped, trained for 160 steps instead of 400: what is checked is the pipeline, not the arrow
    spec, text = load_sweep_text(ROOT / "sweeps" / "linear-tiny.yaml", [
        "defaults.train.steps=160", "defaults.train.eval_every=40", "defaults.train.checkpoint_every=80"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = sweep.run(sweep.ResolvedSweep.of(spec, text, uri=uri, storage=str(tmp_path / "r")), verbose=0, say=lambda _: None)
    assert len(out.ran) == 8 and not out.failed

    # independently of the report: delta per k from the runs' final validation losses, and its least squares line
    c = tracking.client(uri)
    loss: dict[tuple[int, str], float] = {}
    for run in tracking.SweepRuns(uri, "linear-tiny").trials():
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

    parent = tracking.SweepRuns(uri, "linear-tiny").parent()
    attached = {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/aot_trends.csv", "report/aot_pairs.csv", "report/aot_sequential.csv",
            "report/delta_vs_data_k.png", "report/delta_vs_data_k.svg", "report/curves_1.png"} <= attached
    md = (tmp_path / "r" / "reports" / "linear-tiny" / "report.md").read_text()
    assert "data.k" in md and "## Sign during training (sequential test over seeds)" in md
    assert "undetermined (1 seed)" in md  # linear-tiny has one seed per cell: no direction is stated

    run = tracking.SweepRuns(uri, "linear-tiny").trials()[0]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "aot_sign")] == [40, 80, 120, 160]

    # `aot-ray report` again: the same trend, and no sign looks logged twice
    capsys.readouterr()
    assert main(["report", "linear-tiny", "--tracking-uri", uri, "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "Trends" in printed and "data.k" in printed
    assert [m.step for m in c.get_metric_history(run.info.run_id, "aot_sign")] == [40, 80, 120, 160]
    assert (tmp_path / "again" / "aot_trends.csv").read_text() == \
        (tmp_path / "r" / "reports" / "linear-tiny" / "aot_trends.csv").read_text()


def test_running_pairs_get_the_sign_test_logged_as_they_evaluate(tmp_path):
    """What the sweep's Tune callback does between reports: a cell of three seeds, every run still RUNNING,
    evaluations arriving; each update logs the cell's state on all six runs, only for the new looks."""
    from aot_ray import signs
    from aot_ray.aggregate.read import Reader
    from aot_ray.spec import expand, parse_sweep
    from aot_ray.tracking import TrialTracker, SweepRuns

    raw = {"name": "live", "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256, "windows": "stream"}},
           "defaults": {"optim": {"warmup_steps": 2}, "train": {"steps": 30, "eval_every": 10}},
           "grid": {"dataset": ["lin"], "model": ["micro"], "context_length": [32], "seed": [0, 1, 2]}}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = SweepRuns(uri, "live").start("name: live")
    trials = expand(parse_sweep(raw))
    trackers = [(t, TrialTracker(ctx, t)) for t in trials]
    for _, tr in trackers:
        tr.begin(None)
    rng = np.random.default_rng(0)

    def evaluate(step, gap):
        for t, tr in trackers:
            shift = (gap + 0.002 * rng.standard_normal()) if t.direction == "backward" else 0.0
            tr.log_metrics({"val_loss": 1.0 + 0.01 * t.seed + shift}, step=step)
            tr.flush()

    reader = Reader(uri, "live")
    c = tracking.client(uri)
    evaluate(10, 0.0)
    assert signs.update(reader) == 6  # one look, on all six runs of the cell
    evaluate(20, 0.05)
    assert signs.update(reader) == 6  # only the new look
    assert signs.update(reader) == 0
    for _, tr in trackers:
        got = sorted((m.step, m.value) for m in c.get_metric_history(tr.run_id, "aot_sign"))
        assert got == [(10, 0.0), (20, 1.0)]  # no gap yet, then a forward arrow on all three seeds
        assert [m.value for m in c.get_metric_history(tr.run_id, "aot_sign_seeds")] == [3.0, 3.0]
        assert c.get_run(tr.run_id).info.status == "RUNNING"
    reader.close()


STOP_SWEEP = {
    "name": "stop-on-sign",
    "data": {"primes": {"kind": "primes", "digits": 3, "n_samples": 12000, "val_fraction": 0.1, "windows": "stream"}},
    "defaults": {"model": {"dropout": 0.0}, "optim": {"lr": 3e-3, "warmup_steps": 30},
                 "train": {"steps": 3000, "batch_size": 32, "eval_every": 250, "eval_windows": 256, "log_every": 10,
                           "checkpoint_every": 500, "threads": 1},
                 "resources": {"cpu": 0.3}},  # the three seeds of the cell run together
    "grid": {"dataset": ["primes"], "model": ["micro"], "context_length": [64], "seed": [0, 1, 2]},
    # alpha 0.5: this test is about the mechanics of a stop (its guarantee is proved by simulation in
    # test_signs.py); at 0.05 these three seeds never agree enough to stop (their sign flips at ~1600 steps)
    "run": {"max_concurrent_trials": 6, "sign_interval_s": 0,
            "stop_on_sign": {"alpha": 0.5, "after": 0.1, "looks": 1}},
}


def test_stop_on_sign_with_orders_stops_the_cell_once_every_order_is_settled(tmp_path, ray_local):
    """2000 steps asked for; forward, backward and even_odd over three seeds of one cell (3-digit primes, micro
    GPT), all nine running together. One forward trial serves both comparisons, so once the sequential test over
    seeds (each look waiting for all three) holds a sign for both, the cell stops as a whole: all nine runs carry
    that step and end at an evaluation at or after it (each sees the request at its next evaluation), and the
    report compares every pair of both orders at that step. (The same stop through the CLI, added when a sweep is
    resumed: test_driver_integration.)"""
    import copy
    import json

    import yaml

    from aot_ray.spec import parse_sweep

    raw = copy.deepcopy(STOP_SWEEP)
    raw["name"] = "stop-on-sign-orders"
    raw["defaults"]["train"].update(steps=2000, eval_every=200)
    raw["defaults"]["resources"] = {"cpu": 0.2}
    raw["grid"]["order"] = ["forward", "backward", "even_odd"]
    raw["run"]["max_concurrent_trials"] = 9
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), yaml.safe_dump(raw), uri=uri,
                                           storage=str(tmp_path / "r")), verbose=0, say=lambda _: None)
    assert len(out.ran) == 9 and not out.failed
    c = tracking.client(uri)
    runs = tracking.SweepRuns(uri, raw["name"]).trials()
    (at,) = {int(r.data.tags["aot.stop_at"]) for r in runs}
    assert len(runs) == 9 and 200 <= at < 2000 and at % 200 == 0
    seqs = out.report["sequences"]
    assert set(seqs) == {p["cell_key"] for p in out.report["pairs"]} and len(seqs) == 2
    for states in seqs.values():  # each comparison settled at or before the cell's step: the latest of the two
        assert any(s.sign != 0 and s.step <= at for s in states)
    assert max(min(s.step for s in states if s.sign != 0) for states in seqs.values()) <= at
    for states in seqs.values():  # the look that settled it had all three seeds
        assert next(s for s in states if s.sign != 0).n == 3
    mean_at = {}
    for r in runs:
        stopped = int(r.data.metrics["stopped_at_step"])
        assert r.info.status == "FINISHED" and at <= stopped < 2000
        assert max(m.step for m in c.get_metric_history(r.info.run_id, "val_loss")) == stopped
        local = c.download_artifacts(r.info.run_id, f"eval/windows/step-{at:08d}.json", str(tmp_path / r.info.run_id))
        mean_at[r.data.tags["trial_id"]] = float(np.mean(json.loads(Path(local).read_text())["loss"]))
    pairs = out.report["pairs"]
    assert sorted(p["order"] for p in pairs) == ["backward"] * 3 + ["even_odd"] * 3
    for p in pairs:
        fw, other = mean_at[p["fw_trial"]], mean_at[p["bw_trial"]]
        assert p["stopped_at"] == at and p["delta"] == pytest.approx((other - fw) / (0.5 * (other + fw)), rel=1e-6)
    assert out.report["stopped"] == {p["pair_key"]: at for p in pairs}
    assert all(cell["n_seeds"] == 3 for cell in out.report["summary"])
    assert not out.report["position_gaps"]  # final per-position losses of a stopped pair are from other steps
