"""signs.Watcher against a real MLflow store (SQLite): what a refresh reads follows what changed. After the
first refresh it searches only the runs evaluated since (the trainers' `eval_time`) and those that ended since; a
running run with a new evaluation and one that finished in between are picked up, one killed drops out, and a run
without a new evaluation is neither searched nor read again."""

from __future__ import annotations

import time

import numpy as np

from aot_ray import signs, tracking
from aot_ray.aggregate.read import Reader
from aot_ray.spec import expand, parse_sweep
from aot_ray.tracking import TrialTracker, SweepRuns


def test_a_watcher_reads_what_changed(tmp_path):
    raw = {"name": "watch", "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256, "windows": "stream"}},
           "defaults": {"optim": {"warmup_steps": 2}, "train": {"steps": 30, "eval_every": 10}},
           "grid": {"dataset": ["lin"], "model": ["micro"], "context_length": [32], "seed": [0, 1, 2]}}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = SweepRuns(uri, "watch").start("name: watch")
    trials = expand(parse_sweep(raw))
    trackers = {t.trial_id: TrialTracker(ctx, t) for t in trials}
    rng = np.random.default_rng(0)

    def evaluate(ids, step):
        for t in trials:
            if t.trial_id in ids:
                tr = trackers[t.trial_id]
                tr.log_metrics({"val_loss": 1.0 + 0.01 * rng.standard_normal(), "eval_step": step,
                                "eval_time": time.time()}, step=step)
                tr.flush()

    for tr in trackers.values():
        tr.begin(None)
    everyone = set(trackers)
    evaluate(everyone, 10)
    w = signs.Watcher(Reader(uri, "watch"), expected={trials[0].cell_key: {t.pair_key for t in trials}})
    w.refresh()
    assert w.last["runs"] == 6 and w.last["read"] == 6 and w.last["looks"] == 6  # one look on all six runs
    w.refresh()
    assert w.last["read"] == 0 and w.last["looks"] == 0  # nothing changed: nothing read, nothing written
    w.margin_s = 0.0  # clocks that agree (one machine): the evaluations at step 10 are before the last refresh
    assert w._search_changed() == []  # no run evaluated or ended since: the searches return nothing
    evaluate({trials[2].trial_id}, 20)  # running, with a new evaluation
    assert [r.data.tags["trial_id"] for r in w._search_changed()] == [trials[2].trial_id]
    w.refresh()
    assert w.last["runs"] == 6 and w.last["read"] == 1
    first = trials[0].trial_id
    evaluate({first}, 20)
    time.sleep(0.05)
    trackers[first].finish("FINISHED")  # ends between two refreshes
    w.refresh()
    assert w.last["runs"] == 6 and w.last["read"] == 1  # found by the search of runs ended since
    trackers[trials[1].trial_id].finish("KILLED")
    w.refresh()
    assert w.last["runs"] == 5 and trials[1].trial_id not in {r["trial_id"] for r in w._records()}
    c = tracking.client(uri)
    assert [m.step for m in c.get_metric_history(trackers[first].run_id, "aot_sign")] == [10]
