"""Ray Tune + MLflow end to end on one forward/backward pair, asserted through MLflow's own client."""

import csv
import json

import pytest
import yaml

from aot_ray import sweep, tracking
from aot_ray.cli import main
from aot_ray.spec import parse_sweep

pytestmark = pytest.mark.integration

SPEC = {
    "name": "itest",
    "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 200, "windows": "stream"}},
    "defaults": {
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"steps": 20, "batch_size": 8, "eval_every": 10, "log_every": 5, "checkpoint_every": 10},
        "resources": {"cpu": 1},
    },
    "grid": {"dataset": ["lin"], "model": ["tiny"], "context_length": [16], "seed": [0]},
    "run": {"max_concurrent_trials": 2, "progress_every_s": 1},
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("itest")
    uri = f"sqlite:///{tmp}/mlflow.db"
    spec = parse_sweep(SPEC)
    first = sweep.run(sweep.ResolvedSweep.of(spec, yaml.safe_dump(SPEC), uri=uri, storage=str(tmp / "results")), verbose=0)
    second = sweep.run(sweep.ResolvedSweep.of(spec, yaml.safe_dump(SPEC), uri=uri, storage=str(tmp / "results")), verbose=0)
    return {"uri": uri, "tmp": tmp, "first": first, "second": second, "spec": spec}


def test_one_parent_two_children_with_tags_and_metrics(ran):
    c = tracking.client(ran["uri"])
    exp = c.get_experiment_by_name("itest")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("aot.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("aot.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.data.tags["sweep"] == "itest" and parent.info.status == "FINISHED"
    assert {r.data.tags["direction"] for r in children} == {"forward", "backward"}
    assert len({r.data.tags["pair_key"] for r in children}) == 1
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for tag in ("sweep", "trial_id", "dataset", "model", "context_length", "seed"):
            assert r.data.tags[tag]
        assert r.data.tags["model"] == "tiny" and r.data.tags["context_length"] == "16"
        assert r.data.params["optim.lr"] == "0.003"
        assert r.data.metrics["n_params"] > 0
        val = c.get_metric_history(r.info.run_id, "val_loss")
        assert [m.step for m in val] == [10, 20]
        train = c.get_metric_history(r.info.run_id, "train_loss")
        assert [m.step for m in train] == [5, 10, 15, 20]
        arts = {a.path for a in c.list_artifacts(r.info.run_id, "eval")}
        assert arts == {"eval/per_window.json", "eval/per_position.json", "eval/windows"}
        windows = {a.path for a in c.list_artifacts(r.info.run_id, "eval/windows")}
        assert windows == {"eval/windows/step-00000010.json", "eval/windows/step-00000020.json"}
        assert json.loads(r.data.tags["aot.axes"]) == {"dataset": "lin", "model": "tiny", "context_length": 16}
        assert r.data.tags["arch"] == "gpt2"
        assert [m.step for m in c.get_metric_history(r.info.run_id, "tokens_per_s")] == [10, 20]
        assert [m.value for m in c.get_metric_history(r.info.run_id, "eval_step")] == [10, 20]
        assert "mfu" not in r.data.metrics  # on the CPU there is no peak to measure against
    # the sweep's progress, charted on the parent run: the last point has both trials finished
    done = sorted(c.get_metric_history(parent.info.run_id, "sweep_trials_finished"), key=lambda m: m.step)
    assert done and done[-1].value == 2
    assert c.get_run(parent.info.run_id).data.metrics["sweep_tokens_fraction"] == 1.0
    reports = {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    assert {"report/aot_pairs.csv", "report/aot_summary.csv"} <= reports


def test_tune_ran_both_and_second_run_reran_nothing(ran):
    first, second = ran["first"], ran["second"]
    assert len(first.ran) == 2 and not first.failed
    assert second.ran == [] and len(second.skipped) == 2
    (pair,) = second.report["pairs"]
    assert pair["L_fw"] > 0 and pair["L_bw"] > 0
    assert pair["delta"] == pytest.approx((pair["L_bw"] - pair["L_fw"]) / (0.5 * (pair["L_bw"] + pair["L_fw"])))


def test_report_command_reads_mlflow_and_writes_csv(ran, capsys):
    out = ran["tmp"] / "rep"
    assert main(["report", "itest", "--tracking-uri", ran["uri"], "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Arrow of Time per pair" in text
    rows = list(csv.DictReader((out / "aot_pairs.csv").open()))
    assert len(rows) == 1 and {"pair_key", "L_fw", "L_bw", "delta"} <= set(rows[0])
    assert main(["report", "itest", "--tracking-uri", ran["uri"], "--out", str(out), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["pairs"]) == 1


def test_plan_shows_done_after_run(ran, capsys, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(SPEC))
    assert main(["plan", str(f), "--json", "--tracking-uri", ran["uri"], "--storage", str(ran["tmp"] / "results")]) == 0
    assert {t["status"] for t in json.loads(capsys.readouterr().out)} == {"done"}
