"""Token orders through Ray Tune and MLflow: a sweep of forward, backward, a named order, a random one and the joint
model on a synthetic set windowed by line; each order's run, its comparison with forward in the report (the joint
model's own row), and `status`."""

import json

import pytest
import yaml

from aot_ray import sweep, tracking
from aot_ray.cli import main

pytestmark = pytest.mark.integration

RAW = {
    "name": "orders-it",
    "data": {"lin": {"kind": "linear", "bits": 6, "k": 2, "n_samples": 60}},  # lines of 16 tokens, one a window
    "defaults": {"optim": {"lr": 3e-3, "warmup_steps": 2},
                 "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "log_every": 5, "checkpoint_every": 10},
                 "resources": {"cpu": 1}},
    "grid": {"dataset": ["lin"], "model": ["micro"], "order": ["forward", "backward", "even_odd", "uniform_random",
                                                           "joint"],
             "seed": [0]},
    "run": {"max_concurrent_trials": 2},
}


def test_every_order_trains_and_is_compared_with_forward(tmp_path, ray_local, capsys):
    f = tmp_path / "o.yaml"
    f.write_text(yaml.safe_dump(RAW))
    uri, storage = f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "r")
    out = sweep.run(sweep.resolve(str(f), tracking_uri=uri, storage=storage), verbose=0, say=lambda _: None)
    assert len(out.ran) == 5 and not out.failed
    runs = {r.data.tags["direction"]: r for r in tracking.SweepRuns(uri, "orders-it").trials()}
    assert set(runs) == {"forward", "backward", "even_odd", "uniform_random", "joint"}
    assert runs["uniform_random"].data.params["order_seed"] == "0" and runs["even_odd"].data.tags["windows"] == "line"
    pairs = {p["order"]: p for p in out.report["pairs"]}
    assert set(pairs) == {"backward", "even_odd", "uniform_random"}
    assert pairs["backward"]["pair_key"] == runs["forward"].data.tags["pair_key"]  # backward's keys as before
    assert pairs["even_odd"]["fw_trial"] == pairs["backward"]["fw_trial"]  # one forward trial serves every order
    assert all(p["n_windows"] > 0 for p in pairs.values())  # compared on the same validation windows
    (joint,) = out.report["joint"]  # one model, both directions: its own row, never a pair
    assert joint["n_windows"] > 0 and joint["fw_trial"] == runs["joint"].data.tags["trial_id"]
    assert {"val_loss_forward", "val_loss_backward"} <= set(runs["joint"].data.metrics)
    capsys.readouterr()
    assert main(["status", str(f), "--tracking-uri", uri, "--json"]) == 0
    assert {r["state"] for r in json.loads(capsys.readouterr().out)} == {"TERMINATED"}
    assert main(["report", str(f), "--tracking-uri", uri, "--storage", storage, "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "order" in text and "even_odd" in text and "uniform_random" in text
    assert "One model, both directions" in text


def test_the_joint_model_on_the_identity_null_states_no_direction(tmp_path, ray_local):
    """Known answer: with A = I a line is `x : x`, and its reversal is the same copying task, so no direction is
    easier. One model on both directions states none over seeds, as the two-model pairs of the same null do."""
    raw = {**RAW, "name": "joint-null",
           "data": {"lin": {"kind": "linear", "bits": 6, "k": 0, "n_samples": 60}},
           "defaults": {**RAW["defaults"], "train": {**RAW["defaults"]["train"], "steps": 150, "eval_every": 50,
                                                     "checkpoint_every": 150}},
           "grid": {"dataset": ["lin"], "model": ["micro"], "order": ["forward", "backward", "joint"],
                    "seed": [0, 1, 2]}}
    f = tmp_path / "null.yaml"
    f.write_text(yaml.safe_dump(raw))
    out = sweep.run(sweep.resolve(str(f), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", storage=str(tmp_path / "r")),
                    verbose=0, say=lambda _: None)
    assert len(out.ran) == 9 and not out.failed
    (joint,) = out.report["joint_summary"]
    (pairs,) = [c for c in out.report["summary"] if c.get("order", "backward") == "backward"]
    assert joint["n_seeds"] == 3 and pairs["n_seeds"] == 3
    assert joint["direction"] == "undetermined" and pairs["direction"] == "undetermined", (joint, pairs)
    assert joint["delta_lo"] < 0 < joint["delta_hi"]
    print(f"null: joint {joint['delta_mean']:+.4f} [{joint['delta_lo']:+.4f}, {joint['delta_hi']:+.4f}], "
          f"pairs {pairs['delta_mean']:+.4f} [{pairs['delta_lo']:+.4f}, {pairs['delta_hi']:+.4f}]")


def test_mlflow_shows_training_runs_and_the_reports_headline(tmp_path, ray_local):
    """The sweep's experiment opens as training runs in MLflow 3's UI, the parent run's description is the
    report's headline (levels named), and report.html is attached beside report.md, its figures inline."""
    raw = {**RAW, "name": "ui-tags", "grid": {**RAW["grid"], "order": ["forward", "backward"], "seed": [0, 1]}}
    f = tmp_path / "ui.yaml"
    f.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep.run(sweep.resolve(str(f), tracking_uri=uri, storage=str(tmp_path / "r")), verbose=0, say=lambda _: None)
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("ui-tags")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = tracking.SweepRuns(uri, "ui-tags").parent()
    note = parent.data.tags["mlflow.note.content"]
    assert "What each claim rests on" in note and "within a cell, over 2 seeds" in note and "report.html" in note
    names = {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/report.md"} <= names
    page = open(c.download_artifacts(parent.info.run_id, "report/report.html", str(tmp_path))).read()
    assert "data:image/png;base64," in page and 'src="http' not in page and "<link" not in page
    trial_run = tracking.SweepRuns(uri, "ui-tags").trials()[0]
    for key in ("direction", "dataset", "model", "context_length", "seed", "position", "windows"):
        assert key in trial_run.data.tags, key
    assert "final_val_loss" in trial_run.data.metrics
