"""The AoT arithmetic and pairing on known numbers."""

import csv
import io
import math

import pytest

from aot_ray import signs

from aot_ray.aggregate import PAIR_COLUMNS, delta, pair_rows, summarize, to_csv


def row(tid, pair, cell, direction, loss, seed=0, dataset="d"):
    return {"trial_id": tid, "pair_key": pair, "cell_key": cell, "direction": direction, "dataset": dataset,
            "model": "tiny", "context_length": 16, "seed": seed, "n_params": 100, "val_loss": loss}


def test_delta_known_values():
    assert delta(1.0, 1.0) == 0.0
    assert delta(2.0, 3.0) == pytest.approx(1.0 / 2.5)
    assert delta(3.0, 2.0) == pytest.approx(-0.4)
    assert delta(4.0, 4.04) == pytest.approx(0.04 / 4.02)


def test_pairs_seed_means_and_orphans():
    rows = [
        row("a-fw", "p0", "c", "forward", 2.0, seed=0), row("a-bw", "p0", "c", "backward", 3.0, seed=0),
        row("b-fw", "p1", "c", "forward", 2.0, seed=1), row("b-bw", "p1", "c", "backward", 2.0, seed=1),
        row("c-fw", "p2", "c2", "forward", 1.0, seed=0),  # partner missing
        row("d-fw", "p3", "c3", "forward", float("nan")), row("d-bw", "p3", "c3", "backward", 1.0),
    ]
    pairs, orphans = pair_rows(rows)
    assert [p["pair_key"] for p in pairs] == ["p0", "p1"]
    assert pairs[0]["delta"] == pytest.approx(0.4) and pairs[1]["delta"] == 0.0
    assert orphans == ["c-fw", "d-bw"]
    (cell,) = summarize(pairs)
    assert cell["n_seeds"] == 2
    assert cell["delta_mean"] == pytest.approx(0.2)
    assert cell["delta_std"] == pytest.approx(math.sqrt(0.08))
    assert cell["L_fw_mean"] == 2.0 and cell["L_bw_mean"] == 2.5


def test_csv_has_the_documented_columns():
    pairs, _ = pair_rows([row("a", "p", "c", "forward", 1.0), row("b", "p", "c", "backward", 1.1)])
    rows = list(csv.DictReader(io.StringIO(to_csv(pairs, PAIR_COLUMNS))))
    assert {"pair_key", "L_fw", "L_bw", "delta"} <= set(rows[0])
    assert float(rows[0]["delta"]) == pytest.approx(0.1 / 1.05)


# ---------------------------------------------------------------- the statistical report, on synthetic runs

import numpy as np  # noqa: E402

from aot_ray.aggregate import tables  # noqa: E402
from aot_ray.aggregate.reporting import markdown, render, write_files  # noqa: E402


def trial(tid, pair, cell, direction, loss, **kw):
    return {"trial_id": tid, "pair_key": pair, "cell_key": cell, "direction": direction, "dataset": "d",
            "language": None, "arch": "gpt2", "model": "tiny", "context_length": 16, "seed": 0, "n_params": 100,
            "tokens": 1000, "axes": {}, "val_loss": loss, "finished": True, **kw}


def size_sweep(slopes={"gpt2": 0.01, "lstm": -0.02}, seeds=(0, 1)):
    """Cells over 4 sizes per architecture with delta = 0.005 + slope * log10(n) exactly (both seeds equal)."""
    rows = []
    for arch, slope in slopes.items():
        for n in (1e6, 1e7, 1e8, 1e9):
            d = 0.005 + slope * np.log10(n)
            lf = 2.0
            lb = lf * (1 + d / 2) / (1 - d / 2)  # solves delta(lf, lb) == d
            for s in seeds:
                key = f"{arch}-{n:g}"
                kw = {"arch": arch, "model": f"{arch}-{n:g}", "n_params": int(n), "seed": s}
                rows += [trial(f"{key}-s{s}-fw", f"{key}-s{s}", key, "forward", lf, **kw),
                         trial(f"{key}-s{s}-bw", f"{key}-s{s}", key, "backward", lb, **kw)]
    return rows


def test_trends_recover_slopes_per_architecture():
    pairs, _ = tables.pair_rows(size_sweep())
    cells = tables.summarize(pairs)
    got = {t["group"]: t for t in tables.trends(cells) if t["x"] == "n_params"}
    assert set(got) == {"dataset=d arch=gpt2 context_length=16", "dataset=d arch=lstm context_length=16"}
    assert got["dataset=d arch=gpt2 context_length=16"]["slope"] == pytest.approx(0.01)
    assert got["dataset=d arch=lstm context_length=16"]["slope"] == pytest.approx(-0.02)
    assert all(t["scale"] == "log10" and t["n"] == 4 for t in got.values())


def test_trend_over_an_override_axis_with_zero_is_linear_and_pools_matrices():
    rows = []
    for k in (0, 3, 6, 12):
        for m in (0, 1):  # two matrices per k: a replicate axis, not a condition
            d = 0.002 * k + (0.001 if m else -0.001)
            lb = 1.0 * (1 + d / 2) / (1 - d / 2)
            key = f"k{k}-m{m}"
            kw = {"axes": {"data.k": k, "data.seed": m}}
            rows += [trial(f"{key}-fw", key, key, "forward", 1.0, **kw),
                     trial(f"{key}-bw", key, key, "backward", lb, **kw)]
    cells = tables.summarize(tables.pair_rows(rows)[0])
    (t,) = [t for t in tables.trends(cells) if t["x"] == "data.k"]
    assert t["scale"] == "linear" and t["n"] == 8 and t["slope"] == pytest.approx(0.002, rel=1e-6)
    assert t["slope_lo"] < 0.002 < t["slope_hi"]
    assert "data.seed" not in tables.trend_axes(cells)


def test_pair_interval_from_windows_and_sign_tests_per_language():
    rng = np.random.default_rng(0)
    rows, windows = [], {}
    for lang, gap in (("en", 0.02), ("fr", 0.03)):
        for s in range(3):
            fw = 2.0 + 0.3 * rng.standard_normal(300)
            bw = fw + gap + 0.05 * rng.standard_normal(300)
            key = f"{lang}-s{s}"
            rows += [trial(f"{key}-fw", key, lang, "forward", fw.mean(), language=lang, seed=s),
                     trial(f"{key}-bw", key, lang, "backward", bw.mean(), language=lang, seed=s)]
            windows[f"{key}-fw"], windows[f"{key}-bw"] = fw, bw
    pairs, _ = tables.pair_rows(rows, windows, n_boot=500)
    for p in pairs:
        assert p["n_windows"] == 300 and p["delta_lo"] < p["delta"] < p["delta_hi"] and p["delta_lo"] > 0
    signs = {s["group"]: s for s in tables.sign_tests(pairs)}
    assert signs["en"]["positive"] == 3 and signs["en"]["p_value"] == pytest.approx(0.25)
    cells = tables.summarize(pairs)
    assert all(c["n_seeds"] == 3 and c["delta_lo"] < c["delta_mean"] < c["delta_hi"] for c in cells)


def test_sequences_and_position_gaps_and_written_report(tmp_path):
    rows = size_sweep({"gpt2": 0.01}, seeds=(0,))
    pairs, _ = tables.pair_rows(rows)
    positions = {r["trial_id"]: np.linspace(2, 1, 16) + (0.1 if r["direction"] == "backward" else 0) for r in rows}
    gaps = tables.position_gaps(pairs, positions)
    assert all(np.allclose(g, 0.1) for g in gaps.values()) and len(gaps) == 4
    curves = {p["pair_key"]: (p["cell_key"], {10: 2.0, 20: 1.5}, {10: 2.0 + 0.001 * i, 20: 1.6 + 0.001 * i})
              for i, p in enumerate(pairs)}
    seqs = signs.sequences(curves, alpha=0.05)
    assert len(seqs) == 4 and all(ss[-1].n == 1 and ss[-1].sign == 0 for ss in seqs.values())  # one seed each
    cells = tables.summarize(pairs)
    result = {"rows": rows, "running": [], "pairs": pairs, "orphans": [], "summary": cells,
              "trends": tables.trends(cells), "token_trends": [], "signs": tables.sign_tests(pairs),
              "position_gaps": gaps, "sequences": seqs,
              "sequence_rows": [{"cell_key": k, **s.__dict__} for k, ss in seqs.items() for s in ss],
              "curves": {r["trial_id"]: [(10, 2.0), (20, 1.5)] for r in rows}, "conf": 0.95, "alpha": 0.05}
    files = write_files(result, tmp_path, "sizes")
    names = {f.name for f in files}
    assert {"aot_pairs.csv", "aot_summary.csv", "aot_trends.csv", "aot_sign_tests.csv", "aot_sequential.csv",
            "aot_position_gap.csv", "report.md", "fig_delta_vs_size.png", "fig_delta_vs_size.svg",
            "curves_1.png", "position_gap.svg"} <= names
    md = (tmp_path / "report.md").read_text()
    assert "## Trends" in md and "![fig_delta_vs_size](fig_delta_vs_size.png)" in md
    assert "undetermined (1 seed)" in md and "forward easier" not in md.split("## Replication")[1].split("##")[0]
    assert md.index("## Replication") < md.index("How to read it:")  # what the sweep states comes first
    assert "report.html" in names and "data:image/png;base64," in (tmp_path / "report.html").read_text()
    text = render(result)
    assert "Trends" in text and "0 of 4 cells have a stated sign" in text and "How to read it:" in text
    assert markdown(result, "sizes", []).startswith("# Arrow of Time report: sizes")


# ---------------------------------------------------------------- a stopped pair is compared at its stop step


class FakeClient:
    def __init__(self):
        self.tags = {}

    def set_tag(self, run_id, key, value):
        self.tags[(run_id, key)] = value


class FakeReader:
    """What the report reads of a pair: per-evaluation window losses and curves, by trial id."""

    def __init__(self, windows, curves):
        self.windows_, self.curves = windows, curves
        self.client = FakeClient()

    def window_history(self, rec):
        return self.windows_[rec["trial_id"]]

    def curve(self, rec, metric="val_loss"):
        return self.curves[rec["trial_id"], metric]


def test_a_stopped_pair_is_compared_at_its_stop_step_not_at_its_final_losses():
    """Forward stopped at step 300, backward ran on to 400 before it saw the request: the pair's delta and
    interval come from both sides' evaluation at 300 (the step the sign test settled), not from 300 vs 400."""
    from aot_ray.aggregate.assemble import at_stop_steps

    rng = np.random.default_rng(1)
    base = 2 + 0.1 * rng.standard_normal(200)
    hist = {"fw": {s: base - s / 1e4 for s in (100, 200, 300)},
            "bw": {s: base + 0.05 - s / 1e4 for s in (100, 200, 300, 400)}}
    curves = {(t, m): [(s, float(w.mean()) if m == "val_loss" else s * 10.0) for s, w in h.items()]
              for t, h in hist.items() for m in ("val_loss", "tokens")}
    recs = [trial("fw", "p", "c", "forward", float(hist["fw"][300].mean()), stop_at=300, tokens=3000),
            trial("bw", "p", "c", "backward", float(hist["bw"][400].mean()), stop_at=300, tokens=4000),
            trial("x-fw", "q", "c2", "forward", 1.0), trial("x-bw", "q", "c2", "backward", 1.1)]
    windows = {"fw": hist["fw"][300], "bw": hist["bw"][400]}
    assert at_stop_steps(FakeReader(hist, curves), recs, windows) == {"p": 300}
    pairs, _ = tables.pair_rows(recs, windows)
    (p,) = [p for p in pairs if p["pair_key"] == "p"]
    want = delta(float(hist["fw"][300].mean()), float(hist["bw"][300].mean()))
    assert p["delta"] == pytest.approx(want) and p["stopped_at"] == 300 and p["tokens"] == 3000
    assert p["delta_lo"] < want < p["delta_hi"] and p["n_windows"] == 200
    (q,) = [p for p in pairs if p["pair_key"] == "q"]
    assert q["stopped_at"] is None and q["delta"] == pytest.approx(delta(1.0, 1.1))
    # a stopped side whose partner is still running: not a stopped pair yet
    half = [trial("fw", "p", "c", "forward", 1.0, stop_at=300)]
    assert at_stop_steps(FakeReader(hist, curves), half, {}) == {}


# ---------------------------------------------------------------- directions from seeds, overfitting, controls


def test_a_cell_states_a_direction_only_from_its_seeds():
    one = [row("a", "p", "c", "forward", 1.0), row("b", "p", "c", "backward", 1.2)]
    pairs, _ = pair_rows(one, {"a": np.full(50, 1.0), "b": np.full(50, 1.2) + np.linspace(-0.01, 0.01, 50)})
    assert pairs[0]["delta_lo"] > 0  # the windows are precise...
    (cell,) = summarize(pairs)
    assert cell["direction"] == "undetermined (1 seed)" and math.isnan(cell["delta_lo"])  # ...but one seed
    agree = [row(f"{s}{d}", f"p{s}", "c", d, 1.0 if d == "forward" else 1.1 + 0.001 * s, seed=s)
             for s in range(3) for d in ("forward", "backward")]
    (cell,) = summarize(pair_rows(agree)[0])
    assert cell["direction"] == "forward easier" and cell["delta_lo"] > 0
    split = [row(f"{s}{d}", f"p{s}", "c", d, 1.0 if d == "forward" else (1.1 if s else 0.9), seed=s)
             for s in range(3) for d in ("forward", "backward")]
    (cell,) = summarize(pair_rows(split)[0])
    assert cell["direction"] == "undetermined" and cell["delta_lo"] < 0 < cell["delta_hi"]


def test_overfit_is_flagged_from_the_validation_curve_and_the_epochs():
    curve = [(100, 2.0), (200, 1.5), (300, 1.6), (400, 1.7)]
    assert tables.overfit_note(curve, None, 3.0) == "val +13% from best"
    assert tables.overfit_note(curve, 200, 3.0) == ""  # compared at step 200, its best
    assert tables.overfit_note(curve, 300, 50.0) == "val +7% from best, 50 epochs"
    assert tables.overfit_note(curve, None, 50.0, rise=0.5, max_epochs=100) == ""
    pairs = [{"fw_trial": "f", "bw_trial": "b", "stopped_at": None}]
    tables.flag_overfit(pairs, {"f": [(1, 1.0), (2, 1.0)], "b": curve}, {"f": 1.0, "b": 30.0})
    assert pairs[0]["overfit"] == "bw: val +13% from best, 30 epochs"


def test_each_group_gets_its_null_control_beside_it():
    rows = []
    for ds, gap in (("lin", 0.1), ("lin:null", 0.001)):
        for s in range(3):
            for d in ("forward", "backward"):
                r = row(f"{ds}{s}{d}", f"{ds}p{s}", f"{ds}c", d, 1.0 if d == "forward" else 1.0 + gap + 0.002 * s,
                        seed=s, dataset=ds)
                r["axes"] = {"control": "A=I"} if ds.endswith(":null") else {}
                rows.append(r)
    cells = summarize(pair_rows(rows)[0])
    (ctrl,) = tables.attach_controls(cells)
    (main,) = [c for c in cells if c["dataset"] == "lin"]
    assert main["null_delta"] == pytest.approx(ctrl["delta_mean"]) and main["null_control"] == "A=I"
    assert main["null_lo"] == ctrl["delta_lo"] and "null_delta" not in ctrl
    text = render({"pairs": pair_rows(rows)[0], "summary": cells, "trends": [], "signs": [], "orphans": [],
                   "conf": 0.95, "alpha": 0.05, "sequences": {}})
    assert "null_delta" in text and "How to read it:" in text
