"""The Optuna learning-rate phase through Ray Tune's OptunaSearch: its runs are MLflow child runs of their own role,
the best rate feeds both directions of the main grid, and a resumed sweep keeps it (and so its trial ids)."""

import pytest
import yaml

from aot_ray import sweep, tracking
from aot_ray.spec import parse_sweep

pytestmark = pytest.mark.integration

RAW = {
    "name": "lrs",
    "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256, "windows": "stream"}},
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
    run = lambda: sweep.run(sweep.ResolvedSweep.of(parse_sweep(RAW), yaml.safe_dump(RAW), uri=uri,  # noqa: E731
                                                   storage=str(tmp_path / "r")), verbose=0, say=said.append)
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

    assert tracking.SweepRuns(uri, "lrs").searched_lrs() == {"micro": pytest.approx(best)}
    trials = tracking.SweepRuns(uri, "lrs").trials()
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


def test_plan_is_the_dry_run_of_run_and_status_finds_the_searched_trials(tmp_path, ray_local, capsys):
    """A sweep with an lr search, one finished dataset and one whose corpus changed since: `plan` says done and
    stale for exactly the trials that `run` then skips and trains again, and `status` finds the trials that ran
    (their ids carry the searched rate) as TERMINATED."""
    import json

    from aot_ray.cli import main
    from corpus_util import docs, write_text

    corpus = write_text(tmp_path / "en.txt", docs("en", 120))
    raw = {**RAW, "name": "dry",
           "data": {"lin": RAW["data"]["lin"],
                    "txt": {"kind": "text", "paths": [str(corpus)], "val_fraction": 0.1,
                            "tokenizer": {"kind": "bpe", "vocab_size": 300}}},
           "grid": {**RAW["grid"], "dataset": ["lin", "txt"]},
           "lr_search": {**RAW["lr_search"], "trials": 2}}
    f = tmp_path / "dry.yaml"
    f.write_text(yaml.safe_dump(raw))
    common = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", str(tmp_path / "r")]
    assert main(["run", str(f), *common, "--quiet"]) == 0
    capsys.readouterr()

    assert main(["status", str(f), *common, "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)
    assert len(ran) == 4 and {r["state"] for r in ran} == {"TERMINATED"}  # PENDING, step 0 before the fix

    write_text(corpus, docs("en", 120, seed=1))  # the text trials are now stale
    assert main(["plan", str(f), *common, "--json"]) == 0
    planned = {r["trial_id"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert sorted(planned.values()) == ["done", "done", "stale", "stale"]
    assert set(planned) == {r["trial_id"] for r in ran}  # the same ids: the searched rate applied

    again = sweep.run(sweep.resolve(str(f), tracking_uri=common[1], storage=common[3]), verbose=0,
                      say=lambda _: None)
    assert sorted(again.skipped) == sorted(t for t, s in planned.items() if s == "done")
    assert sorted(o.trial_id for o in again.ran) == sorted(t for t, s in planned.items() if s == "stale")
