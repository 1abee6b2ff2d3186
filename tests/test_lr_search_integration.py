"""The Optuna learning-rate phase through Ray Tune's OptunaSearch: its runs are MLflow child runs of their own role,
the best rate feeds both directions of the main grid, and a resumed sweep keeps it (and so its trial ids)."""

import pytest
import yaml

from aot_ray import sweep, tracking
from aot_ray.spec import parse_sweep

pytestmark = pytest.mark.integration

RAW = {
    "name": "lrs",
    "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256}},
    "defaults": {"optim": {"warmup_steps": 2},
                 "train": {"steps": 40, "batch_size": 16, "eval_every": 20, "log_every": 10, "checkpoint_every": 20,
                           "eval_windows": 16}},
    "grid": {"dataset": ["lin"], "model": ["micro"], "context_length": [32]},
    "lr_search": {"trials": 3, "low": 1e-4, "high": 3e-2, "steps": 20, "directions": ["forward"]},
    "run": {"max_concurrent_trials": 2},
}


def test_searched_rate_feeds_both_directions_and_is_kept_on_resume(tmp_path, ray_local):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    said = []
    run = lambda: sweep.run(parse_sweep(RAW), yaml.safe_dump(RAW), uri=uri,  # noqa: E731
                            storage=str(tmp_path / "r"), verbose=0, say=said.append)
    out = run()
    assert len(out.ran) == 2 and not out.failed
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("lrs")
    runs = c.search_runs([exp.experiment_id])
    search = [r for r in runs if r.data.tags.get("aot.role") == "lr-search"]
    assert len(search) == 3 and {r.data.tags["direction"] for r in search} == {"forward"}
    losses = {float(r.data.params["optim.lr"]): r.data.metrics["final_val_loss"] for r in search}
    assert all(1e-4 <= lr <= 3e-2 for lr in losses) and len(losses) == 3  # Optuna proposed 3 distinct rates
    best = min(losses, key=losses.get)

    assert tracking.searched_lrs(uri, "lrs") == {"micro": pytest.approx(best)}
    trials = tracking.trial_runs(uri, "lrs")
    assert len(trials) == 2 and {r.data.tags["direction"] for r in trials} == {"forward", "backward"}
    assert all(float(r.data.params["optim.lr"]) == pytest.approx(best) for r in trials)
    assert all(int(r.data.params["train.steps"]) == 40 for r in trials)
    assert len(out.report["pairs"]) == 1  # the search's runs are never paired
    assert any("best of 3 Optuna trials" in line for line in said)

    said.clear()
    again = run()
    assert any("searched earlier, kept" in line for line in said)
    assert again.skipped and sorted(again.skipped) == sorted(r.data.tags["trial_id"] for r in trials)
    assert len([r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("aot.role") == "lr-search"]) == 3
