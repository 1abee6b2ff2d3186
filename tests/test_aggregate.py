"""The AoT arithmetic and pairing on known numbers."""

import csv
import io
import math

import pytest

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
from aot_ray.aggregate.write import markdown, render, write_files  # noqa: E402


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
    rng = np.random.default_rng(1)
    rows = size_sweep({"gpt2": 0.01}, seeds=(0,))
    pairs, _ = tables.pair_rows(rows)
    positions = {r["trial_id"]: np.linspace(2, 1, 16) + (0.1 if r["direction"] == "backward" else 0) for r in rows}
    gaps = tables.position_gaps(pairs, positions)
    assert all(np.allclose(g, 0.1) for g in gaps.values()) and len(gaps) == 4
    base = 1 + 0.1 * rng.standard_normal(400)
    noise = 0.05 * rng.standard_normal((2, 400))
    hist = {pairs[0]["pair_key"]: ({s: base for s in (10, 20)}, {10: base + 0.001 + noise[0], 20: base + 0.2 + noise[1]})}
    seqs = tables.sign_sequences(hist, alpha=0.05)
    (states,) = seqs.values()
    assert [s.step for s in states] == [10, 20] and states[-1].sign == 1 and states[-1].established_at == 20
    cells = tables.summarize(pairs)
    result = {"rows": rows, "running": [], "pairs": pairs, "orphans": [], "summary": cells,
              "trends": tables.trends(cells), "token_trends": [], "signs": tables.sign_tests(pairs),
              "position_gaps": gaps, "sequences": seqs,
              "sequence_rows": [{"pair_key": k, **s.__dict__} for k, ss in seqs.items() for s in ss],
              "curves": {r["trial_id"]: [(10, 2.0), (20, 1.5)] for r in rows}, "conf": 0.95, "alpha": 0.05}
    files = write_files(result, tmp_path, "sizes")
    names = {f.name for f in files}
    assert {"aot_pairs.csv", "aot_summary.csv", "aot_trends.csv", "aot_sign_tests.csv", "aot_sequential.csv",
            "aot_position_gap.csv", "report.md", "delta_vs_n_params.png", "delta_vs_n_params.svg",
            "curves_1.png", "position_gap.svg"} <= names
    md = (tmp_path / "report.md").read_text()
    assert "## Trends" in md and "![delta_vs_n_params](delta_vs_n_params.png)" in md and "forward easier" in md
    text = render(result)
    assert "Trends" in text and "1 of 1 pairs have an established sign" in text
    assert markdown(result, "sizes", []).startswith("# Arrow of Time report: sizes")


# ---------------------------------------------------------------- stopping a pair once its sign is settled


def states(*signs, every=100):
    from aot_ray.stats import SignState

    return [SignState(k, k * every, 0.0, 0.0, 0.0, s, None) for k, s in enumerate(signs, start=1)]


def test_stop_step_needs_consecutive_looks_of_one_sign_after_the_minimum_step():
    assert tables.stop_step(states(0, 1, 1, 1), looks=2, min_step=0) == 300
    assert tables.stop_step(states(0, 1, 1, 1), looks=1, min_step=0) == 200
    assert tables.stop_step(states(1, -1, 1, 0), looks=2, min_step=0) is None  # the sign never held twice
    assert tables.stop_step(states(-1, -1, -1, -1), looks=2, min_step=350) == 400  # not before 350
    assert tables.stop_step(states(1, 1, 0, 0), looks=2, min_step=250) is None  # settled too early, then lost
    assert tables.stop_step([], looks=1, min_step=0) is None


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


def test_request_stops_tags_both_runs_once_and_completes_a_half_written_request():
    from aot_ray.aggregate.write import request_stops
    from aot_ray.spec import SignStopSpec

    def side(d, finished=False, stop_at=None):
        return {"run_id": f"r-{d}", "trial_id": d, "finished": finished, "steps": 1000, "stop_at": stop_at}

    reader = FakeReader({}, {})
    seq = {"p": states(0, 1, 1, 1)}
    sides = {"p": {"forward": side("fw"), "backward": side("bw")}}
    assert request_stops(reader, seq, sides, SignStopSpec(after=0.25, looks=2)) == {"p": 300}
    assert reader.client.tags == {("r-fw", "aot.stop_at"): "300", ("r-bw", "aot.stop_at"): "300"}
    assert request_stops(reader, seq, sides, SignStopSpec(after=0.25, looks=2)) == {}  # already asked
    # min_step = 0.5 * 1000: the sign held at 200..400 is not enough
    fresh = {"p": {"forward": side("fw"), "backward": side("bw")}}
    assert request_stops(FakeReader({}, {}), seq, fresh, SignStopSpec(after=0.5, looks=2)) == {}
    # a pair whose runs both finished is left alone; a request written on one side only is completed
    done = {"p": {"forward": side("fw", True), "backward": side("bw", True)}}
    assert request_stops(FakeReader({}, {}), seq, done, SignStopSpec(after=0, looks=1)) == {}
    half = {"p": {"forward": side("fw", stop_at=200), "backward": side("bw")}}
    r = FakeReader({}, {})
    assert request_stops(r, seq, half, SignStopSpec()) == {"p": 200}
    assert r.client.tags == {("r-bw", "aot.stop_at"): "200"}


def test_a_stopped_pair_is_compared_at_its_stop_step_not_at_its_final_losses():
    """Forward stopped at step 300, backward ran on to 400 before it saw the request: the pair's delta and
    interval come from both sides' evaluation at 300 (the step the sign test settled), not from 300 vs 400."""
    from aot_ray.aggregate.write import at_stop_steps

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
