"""Synthetic sets as the authors trained them (windows: line): one line per example, BOS first, no window across
two lines, the context the line's; stream windows only when asked for, and the design part of a trial's identity."""

from pathlib import Path

import numpy as np
import pytest

from aot_ray.data.prepare import data_hash, prepare
from aot_ray.data.windows import Windows, with_bos
from aot_ray.errors import SpecError
from aot_ray.spec import expand, load_sweep, parse_sweep

ROOT = Path(__file__).resolve().parent.parent


def sweep(data: dict, **grid) -> dict:
    return {"name": "w", "data": {"d": data}, "defaults": {"optim": {"warmup_steps": 2}, "train": {"steps": 10}},
            "grid": {"dataset": ["d"], "model": ["micro"], **grid}}


PRIMES = {"kind": "primes", "digits": 3, "n_samples": 2000}
LINEAR = {"kind": "linear", "bits": 10, "k": 3, "n_samples": 500}


def test_quickstart_trains_each_synthetic_set_one_line_per_window():
    trials = expand(load_sweep(ROOT / "sweeps" / "quickstart.yaml"))
    ctx = {t.dataset: t.context_length for t in trials}
    assert ctx == {"primes": 19, "linear": 28}  # "023 * 047 = 180100\n"; 12 bits, " : ", 12 bits, newline
    assert {t.windows for t in trials} == {"line"} and all(t.stride == t.context_length for t in trials)


@pytest.mark.parametrize("data", [PRIMES, LINEAR])
def test_a_line_window_is_exactly_one_line_with_bos_first(tmp_path, data):
    (trial, _) = expand(parse_sweep(sweep(data)))[:2]
    prepared = prepare(trial.data, tmp_path)[0]
    w = Windows(prepared.train, trial.context_length, trial.stride)
    lines = int(round(len(prepared.train) / trial.context_length))
    assert len(w) == lines == len(prepared.train) // trial.context_length  # every line, once
    newline = prepared.manifest["tokenizer"]["alphabet"].index("\n") + 1  # the char tokenizer's ids: BOS is 0
    windows = w.get(np.arange(len(w)))
    assert (windows[:, -1] == newline).all() and not (windows[:, :-1] == newline).any()  # no window spans two
    inputs, targets = with_bos(windows, prepared.bos_id)
    assert (inputs[:, 0] == prepared.bos_id).all() and (targets == windows).all()  # BOS, then every token scored


def test_a_context_that_is_not_the_line_is_named_with_the_line_it_must_be():
    with pytest.raises(SpecError, match=r"grid.context_length: has no 19: the line of dataset 'd'"):
        parse_sweep(sweep(PRIMES, context_length=[64]))
    with pytest.raises(SpecError, match=r"grid.context_length\[1\]: 64 is used by no dataset"):
        parse_sweep(sweep(PRIMES, context_length=[19, 64]))
    assert expand(parse_sweep(sweep(PRIMES, context_length=[19])))[0].context_length == 19  # given, and right


def test_one_sweep_compares_the_designs():
    raw = sweep(PRIMES, context_length=[19, 64])
    raw["data"]["s"] = {**PRIMES, "windows": "stream"}
    raw["grid"]["dataset"] = ["d", "s"]
    got = sorted({(t.dataset, t.windows, t.context_length) for t in expand(parse_sweep(raw))})
    assert got == [("d", "line", 19), ("s", "stream", 19), ("s", "stream", 64)]


def test_a_stride_other_than_the_line_is_refused():
    raw = sweep(PRIMES)
    raw["defaults"]["train"]["stride"] = 5
    with pytest.raises(SpecError, match=r"defaults.train.stride: 5 is not the line of dataset 'd'"):
        parse_sweep(raw)


def test_stream_windows_are_an_explicit_choice_and_need_a_context():
    with pytest.raises(SpecError, match=r"grid.context_length: is required: dataset 'd' is not windowed by line"):
        parse_sweep(sweep({**PRIMES, "windows": "stream"}))
    (t, _) = expand(parse_sweep(sweep({**PRIMES, "windows": "stream"}, context_length=[64])))[:2]
    assert t.windows == "stream" and t.context_length == 64 and t.stride == 64


def test_the_design_is_part_of_the_identity_not_of_the_prepared_data():
    line = expand(parse_sweep(sweep(PRIMES, context_length=[19])))
    stream = expand(parse_sweep(sweep({**PRIMES, "windows": "stream"}, context_length=[19])))
    assert {t.trial_id for t in line}.isdisjoint(t.trial_id for t in stream)  # same context, other design
    assert data_hash(line[0].data) == data_hash(stream[0].data)  # the same token files serve both


def test_the_digits_axis_changes_the_line_and_so_the_context():
    trials = expand(parse_sweep(sweep(PRIMES, **{"data.digits": [2, 3]})))
    assert sorted({(t.data.digits, t.context_length) for t in trials}) == [(2, 15), (3, 19)]
    assert len({t.cell_key for t in trials}) == 2


def test_null_controls_of_a_line_dataset_are_lines_too():
    raw = {**sweep(PRIMES), "null_controls": True}
    controls = [t for t in expand(parse_sweep(raw)) if dict(t.axes).get("control")]
    assert controls and all(t.windows == "line" and t.context_length == t.data.line_tokens() for t in controls)


def test_plan_shows_the_design(tmp_path):
    from aot_ray.sweep import ResolvedSweep
    from aot_ray.sweep.plan import plan
    from aot_ray.sweep.plan_text import plan_text

    spec = parse_sweep(sweep(PRIMES))
    shown = plan(ResolvedSweep.of(spec, uri=f"sqlite:///{tmp_path}/none.db", storage=str(tmp_path / "r")))
    assert {r["windows"] for r in shown["trials"]} == {"line"}
    header = plan_text(shown, spec).splitlines()[0].split()
    assert header[header.index("dataset") + 1] == "windows"


def test_the_report_names_the_design_of_each_pair():
    from aot_ray.aggregate import pair_rows
    from aot_ray.aggregate.text import _cell_columns, _pair_columns

    def rec(direction: str, loss: float, windows: str | None) -> dict:
        r = {"trial_id": f"t-{direction}", "pair_key": "p", "cell_key": "c", "direction": direction,
             "dataset": "primes", "language": None, "arch": "gpt2", "model": "micro", "context_length": 19,
             "seed": 0, "axes": {}, "val_loss": loss, "finished": True, "n_params": 1, "tokens": 1}
        return {**r, **({"windows": windows} if windows else {})}

    pairs, _ = pair_rows([rec("forward", 1.0, "line"), rec("backward", 1.1, "line")])
    assert pairs[0]["windows"] == "line"
    result = {"pairs": pairs, "summary": []}
    for columns in (_pair_columns(result), _cell_columns(result)):
        assert columns[columns.index("dataset") + 1] == "windows"
    pairs[0]["windows"] = "stream"
    assert "windows" not in _pair_columns(result)  # a sweep of streams alone reads as before
