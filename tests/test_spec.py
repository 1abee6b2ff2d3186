"""Spec loading: malformed specs give one line naming the YAML path; expand() is pure and stable."""

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

from aot_ray.errors import SpecError
from aot_ray.spec import expand, load_sweep, parse_sweep, trial_to_dict

HERE = Path(__file__).parent
GOOD = {
    "name": "t",
    "data": {"p": {"kind": "primes", "digits": 2, "n_samples": 250, "windows": "stream"}, "lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 200, "windows": "stream"}},
    "defaults": {"optim": {"lr": 1e-3, "warmup_steps": 2}, "train": {"steps": 10}},
    "grid": {"dataset": ["p", "lin"], "model": ["tiny"], "context_length": [16, 32], "seed": [0, 1]},
}


def with_change(path, value):
    raw = copy.deepcopy(GOOD)
    node = raw
    *parents, last = path
    for p in parents:
        node = node.setdefault(p, {})
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return raw


MALFORMED = [
    (("grid", "context_length"), [16, 32, -4], "grid.context_length[2]: must be a positive integer, got -4"),
    (("grid", "context_length"), [], "grid.context_length: must be a non-empty list of values, got an empty list"),
    (("grid", "context_length"), 16, "grid.context_length: must be a non-empty list of values, got 16"),
    (("grid", "context_length"), [16, 100000], "grid.context_length[1]: context length 100000 is longer than the validation split"),
    (("grid", "dataset"), ["p", "nope"], "grid.dataset[1]: unknown dataset 'nope' (defined under data: p, lin)"),
    (("grid", "model"), ["tiny", "huge"], "grid.model[1]: unknown model preset 'huge'"),
    (("grid", "direction"), ["forward", "sideways"], "grid.direction[1]: unknown order 'sideways' (named: forward, backward, middle_out"),
    (("grid", "seed"), [0, 0], "grid.seed[1]: duplicate value 0"),
    (("grid", "colour"), ["red"], "grid.colour: unknown axis"),
    (("grid", "optim.lr"), [1e-3, -1.0], "grid.optim.lr[1]: must be a positive number, got -1.0"),
    (("grid", "optim.nope"), [1], "grid.optim.nope: optim has no field 'nope'"),
    (("grid", "data.k"), [1, 2], "grid.data.k: datasets of kind 'primes' have no field 'k'"),
    (("grid", "model.preset"), ["tiny"], "grid.model.preset: cannot be a grid axis"),
    (("grid", "model"), KeyError, "grid.model: is required"),
    (("defaults", "optim", "lr"), -0.001, "defaults.optim.lr: must be a positive number, got -0.001"),
    (("defaults", "optim", "lr"), "fast", "defaults.optim.lr: must be a number, got 'fast'"),
    (("defaults", "optim", "schedule"), "cyclic", "defaults.optim.schedule: must be one of cosine, cosine_restarts"),
    (("defaults", "optim", "warmup_steps"), 10, "defaults.optim.warmup_steps: must be less than train.steps (10), got 10"),
    (("defaults", "train", "batchsize"), 8, "defaults.train.batchsize: unknown key (expected one of: steps, batch_size"),
    (("defaults", "train", "steps"), 1.5, "defaults.train.steps: must be an integer, got 1.5"),
    (("defaults", "model", "tie_embeddings"), "yes", "defaults.model.tie_embeddings: must be true or false, got 'yes'"),
    (("defaults", "model", "n_head"), 5, "defaults.model: n_embd 64 is not divisible by n_head 5"),
    (("grid", "model"), ["tiny", "lstm-tiny", "gru-nope"], "grid.model[2]: unknown model preset 'gru-nope'"),
    (("data", "p", "kind"), "fasta", "data.p.kind: must be one of primes, linear, text, hf; got 'fasta'"),
    (("data", "p", "digits"), 0, "data.p.digits: must be a positive integer, got 0"),
    (("data", "p", "n_samples"), 10**6, "data.p.n_samples: 1000000 exceeds the 300 distinct lines"),
    (("data", "lin", "k"), 57, "data.lin.k: a 8x8 matrix has only 56 off-diagonal entries, got 57"),
    (("data", "lin", "noise"), 0.7, "data.lin.noise: must be at most 0.5, got 0.7"),
    (("data",), {}, "data: must be a non-empty mapping"),
    (("name",), "has space", "name: must be letters, digits"),
    (("name",), KeyError, "name: is required"),
    (("extra",), 1, "extra: unknown key (expected one of: name, description, data, defaults, per_model, grid, run, lr_search, orders, null_controls)"),
    (("run", "max_failures"), -1, "run.max_failures: must be a non-negative integer, got -1"),
    (("run", "stop_on_sign"), 3, "run.stop_on_sign: must be a mapping, got 3"),
    (("run", "stop_on_sign"), {"alpha": 0.7}, "run.stop_on_sign.alpha: must be at most 0.5, got 0.7"),
    (("run", "stop_on_sign"), {"after": 1.5}, "run.stop_on_sign.after: must be at most 1, got 1.5"),
    (("run", "stop_on_sign"), {"looks": 0}, "run.stop_on_sign.looks: must be at least 1, got 0"),
    (("run", "stop_on_sign"), {"alfa": 0.1}, "run.stop_on_sign.alfa: unknown key (expected one of: alpha, after, looks)"),
    (("defaults", "resources", "workers"), 0, "defaults.resources.workers: must be at least 1, got 0"),
    (("defaults", "resources", "workers"), 5, "defaults.resources.workers: 5 data-parallel workers cannot split "
                                              "train.batch_size 32 evenly"),
]


@pytest.mark.parametrize("path,value,message", MALFORMED, ids=[m[2].split(":")[0] for m in MALFORMED])
def test_malformed_spec_names_the_field(path, value, message):
    with pytest.raises(SpecError) as err:
        parse_sweep(with_change(path, value))
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_good_spec_loads_and_accepts_yaml_string_floats(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(GOOD).replace("0.001", "1e-3"))
    assert "1e-3" in f.read_text()
    spec = load_sweep(f)
    assert spec.defaults.optim.lr == 1e-3


def test_file_errors_carry_the_file_name(tmp_path):
    with pytest.raises(SpecError, match=r"^.*missing.yaml: no such sweep file"):
        load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml: line \d+, column \d+: invalid YAML"):
        load_sweep(bad)
    raw = with_change(("grid", "context_length"), [16, -4])
    f = tmp_path / "x.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as err:
        load_sweep(f)
    assert str(err.value) == f"{f}: grid.context_length[1]: must be a positive integer, got -4"


def test_expand_pairs_and_ids():
    trials = expand(parse_sweep(GOOD))
    assert len(trials) == 2 * 2 * 2 * 2  # datasets x contexts x seeds x directions
    assert len({t.trial_id for t in trials}) == len(trials)
    by_pair = {}
    for t in trials:
        by_pair.setdefault(t.pair_key, []).append(t)
    assert len(by_pair) == 8
    for pair in by_pair.values():
        assert sorted(t.direction for t in pair) == ["backward", "forward"]
        fw, bw = sorted(pair, key=lambda t: t.direction != "forward")
        assert (fw.data, fw.model, fw.optim, fw.train, fw.context_length, fw.seed) == (
            bw.data, bw.model, bw.optim, bw.train, bw.context_length, bw.seed)
    # seeds share a cell key, nothing else does
    cells = {t.cell_key for t in trials}
    assert len(cells) == 4


def test_ids_depend_on_content_not_on_logging_settings():
    a = expand(parse_sweep(GOOD))
    raw = copy.deepcopy(GOOD)
    raw["defaults"]["train"]["log_every"] = 3
    raw["defaults"]["train"]["threads"] = 2
    assert [t.trial_id for t in expand(parse_sweep(raw))] == [t.trial_id for t in a]
    raw["defaults"]["optim"]["lr"] = 2e-3
    assert not {t.trial_id for t in expand(parse_sweep(raw))} & {t.trial_id for t in a}


def test_override_axes_apply_to_the_trial():
    raw = copy.deepcopy(GOOD)
    raw["grid"]["dataset"] = ["lin"]
    raw["grid"]["data.k"] = [0, 5]
    raw["grid"]["train.steps"] = [10, 20]
    trials = expand(parse_sweep(raw))
    assert {t.data.k for t in trials} == {0, 5}
    assert {t.train.steps for t in trials} == {10, 20}
    assert any("k5" in t.trial_id for t in trials)


def test_expand_snapshot():
    """The full expansion of tests/sweep_small.yaml; regenerate with UPDATE_SNAPSHOTS=1 when a change is intended."""
    got = [trial_to_dict(t) for t in expand(load_sweep(HERE / "sweep_small.yaml"))]
    snap = HERE / "snapshots" / "sweep_small.json"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        snap.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert json.loads(json.dumps(got, sort_keys=True)) == json.loads(snap.read_text())


def test_repo_sweeps_are_valid():
    for f in sorted((HERE.parent / "sweeps").glob("*.yaml")):
        assert expand(load_sweep(f)), f


def test_per_model_settings_follow_the_preset():
    raw = copy.deepcopy(GOOD)
    raw["grid"]["model"] = ["tiny", "mini"]
    raw["per_model"] = {"mini": {"resources": {"gpu": 0.5}, "train": {"batch_size": 8}}}
    trials = expand(parse_sweep(raw))
    for t in trials:
        if t.model.preset == "mini":
            assert t.resources.gpu == 0.5 and t.train.batch_size == 8
        else:
            assert t.resources.gpu == 0.0 and t.train.batch_size == 32
    raw["per_model"] = {"huge": {}}
    with pytest.raises(SpecError, match=r"^per_model.huge: unknown model preset 'huge'"):
        parse_sweep(raw)
    raw["per_model"] = {"mini": {"train": {"batch_size": -1}}}
    with pytest.raises(SpecError, match=r"^per_model.mini.train.batch_size: must be a positive integer, got -1"):
        parse_sweep(raw)


def test_data_parallel_trials_take_whole_gpus():
    raw = copy.deepcopy(GOOD)
    raw["grid"]["model"] = ["tiny", "mini"]
    raw["per_model"] = {"mini": {"resources": {"workers": 4, "gpu": 1}}}
    trials = expand(parse_sweep(raw))
    assert {(t.model.preset, t.resources.workers) for t in trials} == {("tiny", 1), ("mini", 4)}
    raw["per_model"]["mini"]["resources"]["gpu"] = 0.5
    with pytest.raises(SpecError, match=r"^per_model.mini.resources.gpu: a data-parallel trial \(4 workers\) takes "
                                        r"one whole GPU per worker"):
        parse_sweep(raw)
    raw["per_model"] = {}
    raw["grid"]["resources.workers"] = [1, 3]
    with pytest.raises(SpecError, match=r"^grid.resources.workers: 3 data-parallel workers cannot split"):
        parse_sweep(raw)


def test_attention_overrides_do_not_fit_a_recurrent_preset_of_the_grid():
    raw = copy.deepcopy(GOOD)
    raw["grid"]["model"] = ["tiny", "lstm-tiny", "gru-tiny"]
    assert {t.model.preset for t in expand(parse_sweep(raw))} == {"tiny", "lstm-tiny", "gru-tiny"}
    raw["defaults"]["model"] = {"n_head": 2}
    with pytest.raises(SpecError, match=r"^defaults.model.n_head: n_head does not apply to LSTM preset 'lstm-tiny'"):
        parse_sweep(raw)
    raw["defaults"]["model"] = {"position": "rope"}
    with pytest.raises(SpecError, match=r"^defaults.model.position: position rope does not apply to LSTM preset"):
        parse_sweep(raw)
    raw["defaults"]["model"] = {}
    raw["per_model"] = {"gru-tiny": {"model": {"position": "none"}}}
    with pytest.raises(SpecError, match=r"^per_model.gru-tiny.model.position: position none does not apply to GRU"):
        parse_sweep(raw)
    raw["per_model"] = {}
    raw["grid"]["position"] = ["learned", "rope"]
    with pytest.raises(SpecError, match=r"^grid.model.position: position rope does not apply to LSTM"):
        parse_sweep(raw)


LR = {"trials": 4, "low": 1e-4, "high": 1e-2, "steps": 6, "directions": ["forward", "backward"]}


@pytest.mark.parametrize("change,message", [
    ({"high": 1e-5}, "lr_search.high: must be greater than lr_search.low (0.0001), got 1e-05"),
    ({"trials": 1}, "lr_search.trials: must be at least 2, got 1"),
    ({"directions": ["sideways"]}, "lr_search.directions[0]: must be one of forward, backward"),
    ({"steps": 2}, "lr_search.steps: must be more than optim.warmup_steps (2) of model tiny, got 2"),
    ({"sampler": "grid"}, "lr_search.sampler: unknown key"),
])
def test_lr_search_is_validated(change, message):
    raw = copy.deepcopy(GOOD)
    raw["lr_search"] = {**LR, **change}
    with pytest.raises(SpecError) as err:
        parse_sweep(raw)
    assert str(err.value).startswith(message), str(err.value)


def test_lr_search_conflicts_with_a_learning_rate_set_elsewhere():
    raw = copy.deepcopy(GOOD)
    raw["lr_search"] = LR
    raw["grid"]["optim.lr"] = [1e-3, 1e-2]
    with pytest.raises(SpecError, match=r"^lr_search: the grid already has an optim.lr axis"):
        parse_sweep(raw)
    del raw["grid"]["optim.lr"]
    raw["per_model"] = {"tiny": {"optim": {"lr": 1e-3}}}
    with pytest.raises(SpecError, match=r"^per_model.tiny.optim.lr: lr_search sets the learning rate"):
        parse_sweep(raw)


def test_lr_search_trials_and_the_searched_grid():
    from aot_ray.spec import lr_search_trials, with_learning_rates

    raw = copy.deepcopy(GOOD)
    raw["grid"]["model"] = ["tiny", "mini"]
    raw["lr_search"] = LR
    spec = parse_sweep(raw)
    probe = lr_search_trials(spec, "mini", 3e-3)
    assert [t.direction for t in probe] == ["forward", "backward"]
    assert {(t.dataset, t.model.preset, t.context_length, t.seed, t.optim.lr, t.train.steps) for t in probe} == {
        ("p", "mini", 16, 0, 3e-3, 6)}  # the grid's first dataset, context and seed; the search's steps
    assert probe[0].trial_id != lr_search_trials(spec, "mini", 4e-3)[0].trial_id
    before = expand(spec)
    after = expand(with_learning_rates(spec, {"tiny": 2e-3, "mini": 5e-4}))
    assert len(after) == len(before) and {t.trial_id for t in after}.isdisjoint({t.trial_id for t in before})
    for t in after:  # both directions of a preset get its learning rate; nothing else changes
        assert t.optim.lr == {"tiny": 2e-3, "mini": 5e-4}[t.model.preset] and t.train.steps == 10


def test_stop_on_sign_is_off_unless_asked_and_true_means_the_defaults():
    from aot_ray.spec import SignStopSpec

    assert parse_sweep(GOOD).run.stop_on_sign is None
    assert parse_sweep(with_change(("run", "stop_on_sign"), True)).run.stop_on_sign == SignStopSpec()
    assert parse_sweep(with_change(("run", "stop_on_sign"), False)).run.stop_on_sign is None
    got = parse_sweep(with_change(("run", "stop_on_sign"), {"alpha": 0.01, "looks": 3})).run.stop_on_sign
    assert (got.alpha, got.after, got.looks) == (0.01, 0.25, 3)
    # how a sweep is driven is not what a trial is: the ids do not change
    assert [t.trial_id for t in expand(parse_sweep(with_change(("run", "stop_on_sign"), True)))] == \
        [t.trial_id for t in expand(parse_sweep(GOOD))]


def test_null_controls_add_one_control_cell_per_dataset_on_the_first_model_and_context():
    raw = copy.deepcopy(GOOD)
    raw["grid"]["model"] = ["tiny", "mini"]
    raw["null_controls"] = True
    plain = expand(parse_sweep(copy.deepcopy(GOOD) | {"grid": raw["grid"]}))
    trials = expand(parse_sweep(raw))
    controls = [t for t in trials if dict(t.axes).get("control")]
    assert [t.trial_id for t in trials[: len(plain)]] == [t.trial_id for t in plain]  # the grid's ids unchanged
    assert len(controls) == len(trials) - len(plain)
    assert {t.model.preset for t in controls} == {"tiny"}
    assert {t.context_length for t in controls} == {raw["grid"]["context_length"][0]}
    assert all(t.data.kind == "linear" and t.data.k == 0 for t in controls)
    assert {t.seed for t in controls} == set(raw["grid"].get("seed", [0]))
    with pytest.raises(SpecError, match="null_controls: must be true or false"):
        parse_sweep(raw | {"null_controls": "yes"})


def test_text_control_is_the_reversed_characters_tokenizer():
    from aot_ray.spec.expand import control_data
    from aot_ray.spec.schema import TextData

    suffix, d = control_data(TextData(paths=("/x/{lang}.txt",)))
    assert suffix == "reversed" and d.tokenizer.reverse_chars and d.paths == ("/x/{lang}.txt",)


def test_a_sweep_is_expanded_once_per_state_and_plan_shows_what_run_executes(tmp_path, monkeypatch):
    """The loader's checks, `plan` and the run's SweepPlan share one expansion; a new sweep state (here a new
    seed) is expanded anew. The plan's trials and data versions are the SweepPlan's."""
    import dataclasses
    import sys

    from aot_ray.sweep.plan import plan
    from aot_ray.spec import load_sweep
    from aot_ray.sweep import ResolvedSweep, SweepPlan

    mod = sys.modules["aot_ray.spec.expand"]
    calls = []
    real = mod._expand
    monkeypatch.setattr(mod, "_expand", lambda s: calls.append(s) or real(s))
    spec = load_sweep("sweeps/quickstart.yaml")
    shown = plan(ResolvedSweep.of(spec, uri=f"sqlite:///{tmp_path}/none.db", storage=str(tmp_path / "results")))
    sp = SweepPlan.of(spec)
    assert len(calls) == 1
    assert [r["trial_id"] for r in shown["trials"]] == [t.trial_id for t in sp.trials]
    assert {d["hash"] for d in shown["datasets"]} == set(sp.datasets) == set(sp.versions.values())
    more = dataclasses.replace(spec, grid=dataclasses.replace(spec.grid, seed=spec.grid.seed + (99,)))
    assert len(SweepPlan.of(more).trials) > len(sp.trials) and len(calls) == 2
