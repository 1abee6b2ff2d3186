"""The report's replication levels, the paper's figures and its numbers beside ours, on synthetic numbers with
known answers: pure tables first, then MLflow runs (a real SQLite store, written through the real TrialTracker)
with chosen deltas read back by the real report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aot_ray import stats
from aot_ray.aggregate import levels, reference, tables
from aot_ray.aggregate.text import render

LANGS = ["en", "fr", "de", "fi", "tr", "el", "id", "vi", "ar", "he", "tl"]


def cell(key, delta, **kw):
    c = {"cell_key": key, "dataset": "cc100", "language": None, "arch": "gpt2", "model": "gpt-405m",
         "context_length": 256, "n_params": 405_000_000, "axes": {}, "n_seeds": 1, "delta_mean": delta,
         "delta_lo": float("nan"), "delta_hi": float("nan"), "L_fw_mean": 3.0, "L_bw_mean": 3.0 * (1 + delta)}
    c.update(kw)
    return c


def test_eleven_languages_one_seed_each_are_eleven_of_eleven():
    cells = [cell(f"c-{lang}", 0.005 + 0.001 * i, language=lang) for i, lang in enumerate(LANGS)]
    [row] = levels.across(cells)
    assert (row["axis"], row["n"], row["positive"], row["negative"]) == ("language", 11, 11, 0)
    assert row["p_value"] == pytest.approx(2.0 ** -10)
    ds = [c["delta_mean"] for c in cells]
    ci = stats.mean_interval(ds)
    assert row["delta_mean"] == pytest.approx(0.01) and row["delta_lo"] == pytest.approx(ci.lo)
    assert row["statement"].startswith("over 11 languages [dataset=cc100 arch=gpt2 model=gpt-405m context_length=256]: "
                                       "11 positive, 0 negative, p = 0.00098; mean delta +1.00% [")
    assert "one seed per language" in row["statement"]
    assert row["verdict"] == "consistent: forward easier in 11 of 11 languages"
    assert "no cell states a direction of its own" in levels.within_statement(cells)


def test_mixed_languages_are_not_consistent_and_few_are_not_significant():
    mixed = [cell(f"c-{lang}", d, language=lang) for lang, d in zip(LANGS, [0.01, 0.02, -0.01, 0.03, 0.01, -0.02])]
    [row] = levels.across(mixed)
    assert row["verdict"] == "not consistent: 4 of 6 languages forward easier, 2 backward easier"
    assert "consistent: " not in row["verdict"].replace("not consistent", "")
    few = [cell(f"c-{lang}", 0.01, language=lang) for lang in LANGS[:3]]
    [row] = levels.across(few)
    assert row["verdict"] == ("forward easier in 3 of 3 languages, too few to be significant (p = 0.25; 6 would be "
                              "needed)")
    six = [cell(f"c-{lang}", 0.01 * (i + 1), language=lang) for i, lang in enumerate(LANGS[:6])]
    assert levels.across(six)[0]["p_value"] == pytest.approx(0.03125)  # the 6/6, p = 0.031
    assert "p = 0.031" in levels.across(six)[0]["statement"]


def test_seed_means_are_the_units_across_languages_and_groups_stay_apart():
    cells = [cell(f"c-{lang}-{ctx}", 0.01 if ctx == 256 else -0.01, language=lang, context_length=ctx, n_seeds=3)
             for lang in LANGS[:4] for ctx in (64, 256)]
    rows = levels.across(cells)
    assert len(rows) == 2 and {r["group"].split()[-1] for r in rows} == {"context_length=64", "context_length=256"}
    neg = next(r for r in rows if r["group"].endswith("=64"))
    assert neg["negative"] == 4 and "each the mean over its 3 seeds" in neg["statement"]


def test_a_size_series_crossing_zero_gives_the_crossing_size():
    a, b = -0.08, 0.01  # delta = a + b log10 N: zero at N = 1e8
    sizes = [5e6, 14e6, 56e6, 162e6, 405e6]
    cells = [cell(f"s{n:.0f}", a + b * math.log10(n), model=f"gpt-{n:.0f}", n_params=int(n), language="en")
             for n in sizes]
    [t] = [t for t in tables.trends(cells) if t["x"] == "n_params"]
    assert t["slope"] == pytest.approx(b) and t["crossing"] == pytest.approx(1e8, rel=1e-6)
    assert (t["crossing_from"], t["crossing_to"]) == (56e6, 162e6)
    line = levels.trend_statement(t)
    assert "the sign changes between 5.6e+07 and 1.62e+08 (the fit crosses 0 at 1e+08)" in line
    same_sign = [cell(f"s{n:.0f}", 0.01 + b * math.log10(n), model=f"gpt-{n:.0f}", n_params=int(n)) for n in sizes]
    [t2] = [t for t in tables.trends(same_sign) if t["x"] == "n_params"]
    assert t2["crossing_from"] is None and math.isnan(t2["crossing"])


def test_compute_is_a_scaling_axis_per_architecture():
    cells = []
    for arch, slope in (("gpt2", 0.02), ("lstm", -0.01)):
        for n in (1e7, 1e8, 1e9):
            tokens = 1e9
            c = cell(f"{arch}{n:.0f}", slope * math.log10(6 * n * tokens) - 0.3, arch=arch, model=f"{arch}-{n:.0f}",
                     n_params=int(n), language="en")
            c["compute"] = 6 * n * tokens
            cells.append(c)
    fits = {t["group"]: t for t in tables.trends(cells) if t["x"] == "compute"}
    assert set(fits) == {"dataset=cc100 language=en arch=gpt2 context_length=256",
                         "dataset=cc100 language=en arch=lstm context_length=256"}
    assert fits["dataset=cc100 language=en arch=gpt2 context_length=256"]["slope"] == pytest.approx(0.02)


def test_the_papers_values_beside_ours_in_words():
    refs = reference.load()
    assert "2401.17505" in refs["source"]
    en = cell("c-en", 0.005, language="en")
    fr = cell("c-fr", 0.025, language="fr")
    de = cell("c-de", 0.01, language="de")  # no reference value
    pairs = [{"cell_key": "c-en", "delta": 0.005, "delta_lo": 0.004, "delta_hi": 0.006},
             {"cell_key": "c-fr", "delta": 0.025, "delta_lo": 0.02, "delta_hi": 0.03},
             {"cell_key": "c-de", "delta": 0.01, "delta_lo": 0.0, "delta_hi": 0.02}]
    rows = reference.compare([en, fr, de], pairs, [], refs)
    by = {r["cell_key"]: r for r in rows}
    assert set(by) == {"c-en", "c-fr"}
    assert by["c-en"]["relation"] == "lies below the paper's value"
    assert by["c-fr"]["relation"] == "contains the paper's value"
    assert by["c-en"]["statement"].startswith("delta dataset cc100, language en, model gpt-405m, context_length 256: "
                                              "paper +0.75%")
    assert "over validation windows (one seed: precision)" in by["c-en"]["statement"]
    seeds = cell("c-fr", 0.04, language="fr", n_seeds=3, delta_lo=0.035, delta_hi=0.045)
    [r] = reference.compare([seeds], [], [], refs)
    assert r["relation"] == "lies above the paper's value" and r["interval"] == "over 3 seeds"
    assert reference.compare([en, fr], pairs, [], None) == []
    local = cell("c-en", 0.005, language="en", dataset="local")
    assert reference.compare([local], pairs, [], refs) == []  # an unmatched sweep shows nothing


def test_context_reference_is_the_ratio_and_the_size_claim_is_checked():
    refs = reference.load()
    c16 = cell("fr16", 0.004, language="fr", context_length=16)
    pairs = [{"cell_key": "fr16", "delta": 0.004, "delta_lo": 0.0039, "delta_hi": 0.0041}]
    [r] = reference.compare([c16], pairs, [], refs)
    assert r["quantity"] == "ratio" and r["ours"] == pytest.approx(levels.ratio(0.004))
    assert r["relation"] == "contains the paper's value"  # ratio(0.004) = 0.004008; window [0.00390, 0.00411]
    sizes = [cell(f"s{n}", -0.01 + 0.005 * i, model=f"gpt-{n}", n_params=n, language="en")
             for i, n in enumerate([5_000_000, 14_000_000, 22_000_000, 56_000_000, 162_000_000])]
    trends = [t for t in tables.trends(sizes) if t["x"] == "n_params"]
    [claim] = [r for r in reference.compare(sizes, [], trends, refs) if r["quantity"] == "trend in n_params"]
    assert claim["relation"] == "agrees" and "the smallest (5e+06) has delta -1.00%" in claim["statement"]


def test_the_terminal_summary_names_the_levels():
    cells = [cell(f"c-{lang}", 0.005 + 0.001 * i, language=lang) for i, lang in enumerate(LANGS)]
    pairs = [{**c, "pair_key": c["cell_key"] + "-p", "seed": 0, "L_fw": 3.0, "L_bw": 3.0, "delta": c["delta_mean"],
              "delta_lo": float("nan"), "delta_hi": float("nan")} for c in cells]
    result = {"pairs": pairs, "summary": cells, "trends": [], "token_trends": [], "across": levels.across(cells),
              "references": [], "signs": tables.sign_tests(pairs), "sequences": {}, "orphans": [], "conf": 0.95,
              "alpha": 0.05, "rows": [], "running": []}
    text = render(result)
    assert "over 11 languages" in text and "consistent: forward easier in 11 of 11 languages" in text
    assert "one seed in 11 of 11 cells" in text and "p_value" not in text.split("Replication")[0]
    assert "Sign test within" not in text  # no per-cell test where each cell is one pair


# --- MLflow runs with chosen deltas, through the real report ------------------------------------------------

def _runs(tmp_path, raw, delta_of, windows=64):
    """Write one FINISHED run per trial of `raw` (forward loss 3.0, backward chosen so that delta is exactly
    `delta_of(trial)`) with per-window losses spread around it by noise of mean exactly 0 (so a pair's
    estimate is its chosen delta), and return the store's URI."""
    from aot_ray.spec import expand, parse_sweep
    from aot_ray.spec.expand import flatten
    from aot_ray.tracking import TrialTracker, SweepRuns
    import yaml

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = SweepRuns(uri, raw["name"]).start(yaml.safe_dump(raw))
    rng = np.random.default_rng(0)
    for t in expand(parse_sweep(raw)):
        d = delta_of(t)
        fw = 3.0
        loss = fw if t.direction == "forward" else fw * (2 + d) / (2 - d)  # delta(fw, bw) == d
        tr = TrialTracker(ctx, t)
        tr.begin(None)
        tr.log_params(flatten(t))
        steps = t.train.steps
        tr.log_metrics({"val_loss": loss, "eval_step": steps, "tokens": steps * 1000, "n_params": _params(t)},
                       step=steps)
        tr.log_metrics({"final_val_loss": loss}, step=steps)
        half = 0.01 * rng.standard_normal(windows // 2)
        tr.log_dict({"loss": (loss + np.concatenate([half, -half])).tolist()}, "eval/per_window.json")
        tr.log_dict({"loss": [loss] * 8}, "eval/per_position.json")
        tr.finish("FINISHED")
    return uri


def _params(t):
    return {"gpt-5m": 4.9e6, "gpt-14m": 13.7e6, "gpt-22m": 22e6, "gpt-56m": 56e6, "gpt-162m": 162e6,
            "gpt-405m": 405e6}.get(t.model.preset, 1e6)


def _text_sweep(name, grid, steps=10):
    return {"name": name,
            "data": {"cc100": {"kind": "text", "paths": ["/nonexistent/{lang}.txt"], "languages": LANGS,
                               "tokenizer": {"kind": "bpe", "vocab_size": 300}}},
            "defaults": {"train": {"steps": steps, "eval_every": steps}, "optim": {"warmup_steps": 1},
                         "resources": {"cpu": 1, "gpu": 0}},
            "grid": {"dataset": ["cc100"], "seed": [0], **grid}}


@pytest.mark.slow  # seconds: the full suite runs it
def test_report_of_eleven_languages_one_seed(tmp_path):
    from aot_ray.aggregate.reporting import report

    raw = _text_sweep("languages", {"language": LANGS, "model": ["gpt-405m"], "context_length": [256]})
    chosen = {lang: 0.004 + 0.002 * i for i, lang in enumerate(LANGS)}  # en 0.4%, fr 0.6%, ...
    uri = _runs(tmp_path, raw, lambda t: chosen[t.language])
    res = report(uri, "languages", tmp_path / "out")
    [row] = res["across"]
    assert (row["positive"], row["negative"]) == (11, 0)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "over 11 languages" in md and "p = 0.00098" in md
    assert "consistent: forward easier in 11 of 11 languages" in md
    assert "## Sign test within a cell" in md and "one seed in 11 of 11 cells" in md
    lang_of = {c["cell_key"]: c["language"] for c in res["summary"]}
    refs = {lang_of[r["cell_key"]]: r for r in res["references"]}
    assert set(refs) == {"en", "fr"}
    assert refs["en"]["relation"] == "lies below the paper's value"  # 0.40% beside the paper's 0.75%
    assert refs["fr"]["relation"] == "lies below the paper's value"  # 0.60% beside 2.6%
    assert "## The paper's numbers beside ours" in md
    assert res["figures"]["delta_by_language"] == 11
    assert (tmp_path / "out" / "fig_delta_by_language.png").stat().st_size > 0
    assert (tmp_path / "out" / "fig_delta_by_language.svg").read_text().count("<svg") == 1
    off = report(uri, "languages", tmp_path / "off", reference="none", with_plots=False)
    assert off["references"] == [] and "paper's numbers" not in (tmp_path / "off" / "report.md").read_text()


@pytest.mark.slow  # two sweeps of runs and two reports with plots: out of the fast loop
def test_report_of_a_size_series_and_of_contexts(tmp_path):
    from aot_ray.aggregate.reporting import report

    a, b = -0.08, 0.01  # zero at 1e8 parameters
    raw = _text_sweep("sizes", {"language": ["en"], "model": ["gpt-5m", "gpt-14m", "gpt-22m", "gpt-56m", "gpt-162m",
                                                              "gpt-405m"], "context_length": [256]})
    (tmp_path / "a").mkdir()
    uri = _runs(tmp_path / "a", raw, lambda t: a + b * math.log10(_params(t)))
    res = report(uri, "sizes", tmp_path / "sizes")
    [t] = [t for t in res["trends"] if t["x"] == "n_params"]
    assert t["crossing"] == pytest.approx(1e8, rel=1e-3) and (t["crossing_from"], t["crossing_to"]) == (56e6, 162e6)
    assert res["figures"]["delta_vs_size"] == 6
    assert any(t["x"] == "compute" for t in res["trends"])
    md = (tmp_path / "sizes" / "report.md").read_text()
    assert "the sign changes between 5.6e+07 and 1.62e+08" in md
    claim = [r for r in res["references"] if r["quantity"] == "trend in n_params"]
    assert claim and claim[0]["relation"] == "agrees"

    raw = _text_sweep("context", {"language": ["en", "fr"], "model": ["gpt-405m"],
                                  "context_length": [16, 32, 64, 128, 256, 512]})
    rise = {"en": (0.0007, 0.0102), "fr": (0.0040, 0.0292)}

    def ctx_delta(t):
        lo, hi = rise[t.language]
        r = lo + (hi - lo) * math.log2(t.context_length / 16) / 5  # the ratio L_bw / L_fw - 1
        return 2 * r / (2 + r)  # as delta

    (tmp_path / "b").mkdir()
    uri = _runs(tmp_path / "b", raw, ctx_delta)
    res = report(uri, "context", tmp_path / "context")
    assert res["figures"]["ratio_vs_context"] == 12
    ratio_refs = [r for r in res["references"] if r["quantity"] == "ratio"]
    assert len(ratio_refs) == 4 and all(r["relation"] == "contains the paper's value" for r in ratio_refs)
    assert [r["ours"] for r in ratio_refs] == pytest.approx([r["paper"] for r in ratio_refs], abs=1e-4)


def test_the_k_and_architecture_figures_show_their_points(tmp_path):
    from aot_ray.aggregate import paper_figures as figures

    cells = [cell(f"k{k}m{m}", 0.01 * k, dataset="linear", language=None, axes={"data.k": k, "data.seed": m},
                  L_fw_mean=0.5 + 0.01 * k, L_bw_mean=0.5 + 0.02 * k) for k in (0, 5, 10, 15) for m in (0, 1)]
    [fig] = figures.loss_vs_k(cells, tmp_path)
    assert fig.points == 8 and {p.suffix for p in fig.files} == {".png", ".svg"}  # 4 k x 2 directions
    assert figures.loss_vs_k([c for c in cells if c["axes"]["data.k"] == 0], tmp_path) == []  # one k: no figure
    arch = [cell(f"{a}{n}", d, arch=a, model=f"{a}-{n}", n_params=n, language=lang)
            for lang in ("en", "fr") for a, d in (("gpt2", 0.01), ("lstm", 0.005), ("gru", -0.002))
            for n in (26_000_000, 56_000_000)]
    [fig] = figures.architectures(arch, [], tmp_path)
    assert fig.points == 12 and (tmp_path / "fig_architectures.svg").exists()
    assert figures.architectures([c for c in arch if c["arch"] == "gpt2"], [], tmp_path) == []
