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
