"""CLI: plan works offline and prints JSON; bad input is one line on stderr and exit code 2."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from aot_ray.cli import main

ROOT = Path(__file__).parent.parent


def test_plan_json_fields(capsys, tmp_path):
    rc = main(["plan", str(ROOT / "sweeps" / "quickstart.yaml"), "--json",
               "--tracking-uri", f"sqlite:///{tmp_path}/none.db", "--storage", str(tmp_path)])
    assert rc == 0
    trials = json.loads(capsys.readouterr().out)
    assert len(trials) == 12
    for t in trials:
        assert {"trial_id", "pair_key", "direction", "dataset", "model", "context_length", "seed",
                "resources", "n_params", "tokens", "status"} <= set(t)
        assert t["status"] == "pending"
    assert not (tmp_path / "none.db").exists()  # planning creates no tracking store


def test_plan_table(capsys, tmp_path):
    assert main(["plan", str(ROOT / "sweeps" / "quickstart.yaml"), "--storage", str(tmp_path),
                 "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 0
    out = capsys.readouterr().out
    assert "12 trials (6 forward/backward pairs): 0 done, 12 to run" in out


def test_bad_spec_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text((ROOT / "sweeps" / "quickstart.yaml").read_text().replace("  seed: [0, 1, 2]", "  seed: [0, 1, 2]\n  context_length: [64, -4]"))
    p = subprocess.run([sys.executable, "-m", "aot_ray.cli", "plan", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == f"aot-ray: error: {bad}: grid.context_length[1]: must be a positive integer, got -4"
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args,needle", [
    (["run", "nope.yaml"], "nope.yaml: no such sweep file"),
    (["report", "nosuchsweep"], "no MLflow database at"),
])
def test_missing_inputs(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_unreachable_tracking_server_fails_before_anything_starts(capsys, tmp_path):
    rc = main(["run", str(ROOT / "sweeps" / "quickstart.yaml"), "--tracking-uri", "http://127.0.0.1:9",
               "--storage", str(tmp_path / "s")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cannot reach the MLflow tracking server at http://127.0.0.1:9" in err
    assert not (tmp_path / "s").exists()  # nothing half-started


def test_plan_shows_data_parallel_workers(capsys, tmp_path):
    args = ["plan", str(ROOT / "sweeps" / "quickstart.yaml"), "--storage", str(tmp_path),
            "--tracking-uri", f"sqlite:///{tmp_path}/none.db", "--set", "defaults.resources.workers=4"]
    assert main([*args, "--json"]) == 0
    trials = json.loads(capsys.readouterr().out)
    assert {json.dumps(t["resources"], sort_keys=True) for t in trials} == {'{"cpu": 1.0, "workers": 4}'}
    assert main(args) == 0
    assert " 4x(cpu=1) " in capsys.readouterr().out
    assert main([*args[:-1], "defaults.resources.workers=3"]) == 2  # 32 is not divisible by 3
    assert "defaults.resources.workers: 3 data-parallel workers cannot split train.batch_size 32" in capsys.readouterr().err


# ---------------------------------------------------------------- one line for every bad input (issue 13, item 9)

QUICK = (ROOT / "sweeps" / "quickstart.yaml").read_text()


def _one_line(capsys, rc_want=2):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("change,needle", [
    (lambda t: t.replace("lr: 3e-3", "lr: .nan"), "defaults.optim.lr: must be a finite number, got nan"),
    (lambda t: t.replace("lr: 3e-3", "lr: .inf"), "defaults.optim.lr: must be a finite number, got inf"),
    (lambda t: t.replace("lr: 3e-3", "lr: 'nan'"), "defaults.optim.lr: must be a finite number"),
    (lambda t: t.replace("name: quickstart", "name: '..'"), "name: must be letters, digits"),
    (lambda t: t.replace("name: quickstart", "name: quickstart\nname: other"), "duplicate key 'name' (first at line"),
])
def test_bad_values_are_refused_with_the_field(capsys, tmp_path, change, needle):
    f = tmp_path / "s.yaml"
    f.write_text(change(QUICK))
    assert main(["plan", str(f), "--storage", str(tmp_path)]) == 2
    assert needle in _one_line(capsys)


def test_binary_sweep_file_is_one_line(capsys, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_bytes(bytes(range(256)) * 4)
    assert main(["plan", str(f)]) == 2
    assert "is not a text file" in _one_line(capsys)


@pytest.mark.parametrize("flag,value", [("--num-cpus", "-1"), ("--num-cpus", "0"), ("--max-concurrent-trials", "-3"),
                                        ("--num-gpus", "-1")])
def test_bad_counts_are_refused_by_the_parser(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["run", str(ROOT / "sweeps" / "quickstart.yaml"), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: must be at least" in capsys.readouterr().err


@pytest.mark.parametrize("content,what", [(b"", "an empty file"), (b"this is not a database at all", "not an SQLite")])
def test_a_tracking_store_that_is_not_mlflow_is_refused_and_left_alone(capsys, tmp_path, content, what):
    import os

    db = tmp_path / "m.db"
    db.write_bytes(content)
    os.utime(db, (1e9, 1e9))  # a file left there long ago, not one being created right now
    for cmd in (["report", "quickstart"], ["status", str(ROOT / "sweeps" / "quickstart.yaml")]):
        assert main([*cmd, "--tracking-uri", f"sqlite:///{db}"]) == 2
        assert what in _one_line(capsys)
    assert db.read_bytes() == content  # no MLflow schema written into it


@pytest.mark.parametrize("uri,needle", [("http://127.0.0.1:1", "cannot reach the MLflow tracking server"),
                                        ("foo://bar", "cannot use MLflow tracking URI foo://bar")])
def test_status_fails_on_a_store_it_cannot_read(capsys, uri, needle):
    assert main(["status", str(ROOT / "sweeps" / "quickstart.yaml"), "--tracking-uri", uri]) == 2
    assert needle in _one_line(capsys)


def test_unwritable_paths_are_one_line(capsys, tmp_path):
    assert main(["prepare", str(ROOT / "sweeps" / "quickstart.yaml"), "--storage", "/proc/aot"]) == 2
    assert "cannot use storage /proc/aot: " in _one_line(capsys)


def _finished_sweep(tmp_path):
    """A sweep's runs written as trainers write them (no Ray): one seed, so cell intervals are NaN."""
    from aot_ray.spec import expand, parse_sweep
    from aot_ray.tracking import SweepRuns, TrialTracker, end_sweep

    raw = {"name": "tiny-done", "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256, "windows": "stream"}},
           "defaults": {"optim": {"warmup_steps": 2}, "train": {"steps": 20, "eval_every": 10}},
           "grid": {"dataset": ["lin"], "model": ["micro"], "context_length": [32]}}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = SweepRuns(uri, "tiny-done").start("name: tiny-done")
    for t in expand(parse_sweep(raw)):
        tr = TrialTracker(ctx, t)
        tr.begin(None)
        tr.log_params({"train.steps": 20, "train.eval_every": 10})
        for step in (10, 20):
            tr.log_metrics({"val_loss": 1.0 + (0.1 if t.direction == "backward" else 0) - step / 100}, step=step)
        tr.finish("FINISHED")
    end_sweep(ctx)
    return uri


def test_report_json_is_strict_json_and_bad_out_is_one_line(capsys, tmp_path):
    uri = _finished_sweep(tmp_path)
    assert main(["report", "tiny-done", "--tracking-uri", uri, "--json", "--out", str(tmp_path / "rep")]) == 0

    def no_nan(word):
        raise AssertionError(f"{word} in JSON")

    out = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    (cell,) = out["summary"]
    assert cell["delta_lo"] is None and cell["direction"] == "undetermined (1 seed)"
    assert main(["report", "tiny-done", "--tracking-uri", uri, "--out", "/proc/aot-report"]) == 2
    assert "cannot use /proc/aot-report" in _one_line(capsys)


def test_run_flags_override_the_yaml_run_section_only_when_given():
    from aot_ray.spec import SignStopSpec, load_sweep
    from aot_ray.sweep import RunOptions

    run = load_sweep(ROOT / "sweeps" / "quickstart.yaml").run
    assert RunOptions().run_spec(run) == run  # nothing given: the YAML's values
    given = RunOptions(max_concurrent_trials=7, stop_on_sign=True, shared_storage=True).run_spec(run)
    assert (given.max_concurrent_trials, given.stop_on_sign, given.shared_storage) == (7, SignStopSpec(), True)
    custom = replace(run, stop_on_sign=SignStopSpec(alpha=0.01))
    assert RunOptions(stop_on_sign=True).run_spec(custom).stop_on_sign.alpha == 0.01  # the YAML's own settings kept
