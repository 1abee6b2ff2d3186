"""The paper's figures, drawn from the sweeps whose design matches them (each as PNG and SVG, titled and labelled
as a paper figure, each point with the interval its level supports; `levels.supported`):
- delta per language, with the zero line and the mean over languages (its interval over languages as a band);
- delta against model size per architecture (log axis), with the fit and the size where the sign changes;
- L_bw / L_fw - 1 against context length per language (the quantity of the paper's context figure);
- forward and backward loss against k (linear languages over F2);
- GPT vs LSTM vs GRU at matched sizes.
Each function returns the `Figure`s it drew, with how many points each shows (the tests count them); one whose
design the sweep does not have draws nothing. The paper's values, where a cell matches one, are marked x."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .levels import ratio, supported
from .sweep_plots import _plt, _save
from .tables import _group_key, _x

PERCENT = 100.0
ARCH_NAME = {"gpt2": "GPT", "gpt": "GPT", "lstm": "LSTM", "gru": "GRU"}


@dataclass(frozen=True, kw_only=True)
class Figure:
    name: str
    files: list[Path] = field(default_factory=list)
    points: int = 0  # measured points drawn (cells; a k figure counts both directions)


def _err(vals: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    ok = np.isfinite(lo) & np.isfinite(hi)
    return np.where(ok, np.vstack([vals - lo, hi - vals]), 0.0)


def _interval_label(overs: set[str]) -> str:
    return "; ".join(sorted(overs)) if overs else "no interval"


def _refs(refs: list[dict[str, Any]], quantity: str) -> dict[str, float]:
    return {r["cell_key"]: r["paper"] for r in refs if r["quantity"] == quantity}


def by_language(cells: list[dict[str, Any]], pairs: list[dict[str, Any]], across: list[dict[str, Any]],
                refs: list[dict[str, Any]], out: Path) -> list[Figure]:
    rows = [a for a in across if a["axis"] == "language"]
    if not rows:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.4, 0.55 * max(len(a["levels"]) for a in rows) + 2), 4.2))
    langs = sorted({lang for a in rows for lang in a["levels"]})
    pos = {lang: i for i, lang in enumerate(langs)}
    paper = _refs(refs, "delta")
    width = 0.6 / len(rows)
    n, overs = 0, set()
    for j, a in enumerate(rows):
        group = dict(kv.split("=", 1) for kv in a["group"].split() if "=" in kv)
        cs = [c for c in cells if c.get("language") in a["levels"] and "control" not in (c.get("axes") or {})
              and all(str(c.get(k, (c.get("axes") or {}).get(k))) == v for k, v in group.items())]
        got = [supported(c, pairs) for c in cs]
        overs |= {g[3] for g in got}
        xs = np.array([pos[c["language"]] + (j - (len(rows) - 1) / 2) * width for c in cs])
        ys = np.array([g[0] for g in got]) * PERCENT
        lo, hi = np.array([g[1] for g in got]) * PERCENT, np.array([g[2] for g in got]) * PERCENT
        line = ax.errorbar(xs, ys, yerr=_err(ys, lo, hi), fmt="o", capsize=3, label=a["group"] or "cells")
        color = line[0].get_color()
        if math.isfinite(a["delta_lo"]):
            ax.axhspan(a["delta_lo"] * PERCENT, a["delta_hi"] * PERCENT, color=color, alpha=0.12,
                       label=f"mean over {len(a['levels'])} languages, {a['delta_mean'] * PERCENT:+.2f}%")
        for c, x in zip(cs, xs):
            if c["cell_key"] in paper:
                ax.plot([x], [paper[c["cell_key"]] * PERCENT], "x", color="black", ms=8)
        n += len(cs)
    if paper:
        ax.plot([], [], "x", color="black", label="paper (read off its figure)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(langs)), langs)
    ax.set_xlabel("language")
    ax.set_ylabel("delta = (L_bw - L_fw) / mean  (%)")
    ax.set_title(f"Arrow of Time per language (> 0: forward easier)\nintervals: {_interval_label(overs)}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    return [Figure(name="delta_by_language", files=_save(fig, out, "fig_delta_by_language"), points=n)]


def _series(cells: list[dict[str, Any]], trends: list[dict[str, Any]], axis: str) -> list[tuple[dict, list[dict]]]:
    """(trend row, its cells in x order) for every trend of `axis`."""

    groups: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        v = _x(c, axis)
        if isinstance(v, (int, float)) and math.isfinite(v):
            groups[" ".join(f"{k}={v}" for k, v in _group_key(c, axis))].append(c)
    return [(t, sorted(groups[t["group"]], key=lambda c: _x(c, axis))) for t in trends
            if t["x"] == axis and t["group"] in groups]


def vs_size(cells: list[dict[str, Any]], pairs: list[dict[str, Any]], trends: list[dict[str, Any]],
            out: Path) -> list[Figure]:
    series = _series(cells, trends, "n_params")
    if not series:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n, overs = 0, set()
    for t, cs in series:
        got = [supported(c, pairs) for c in cs]
        overs |= {g[3] for g in got}
        xs = np.array([c["n_params"] for c in cs], dtype=float)
        ys = np.array([g[0] for g in got]) * PERCENT
        lo, hi = np.array([g[1] for g in got]) * PERCENT, np.array([g[2] for g in got]) * PERCENT
        label = " ".join(ARCH_NAME.get(v, v) if k == "arch" else v for k, v in
                         (kv.split("=", 1) for kv in t["group"].split() if "=" in kv)) or "cells"
        line = ax.errorbar(xs, ys, yerr=_err(ys, lo, hi), fmt="o", capsize=3, label=label)
        color = line[0].get_color()
        grid = np.geomspace(xs.min(), xs.max(), 50)
        ax.plot(grid, (t["intercept"] + t["slope"] * np.log10(grid)) * PERCENT, "-", color=color, alpha=0.6)
        if t.get("crossing_from") is not None:
            at = t["crossing"] if math.isfinite(t["crossing"]) else math.sqrt(t["crossing_from"] * t["crossing_to"])
            ax.axvline(at, color=color, ls=":", lw=1)
            ax.annotate(f"sign changes near {_params(at)}", (at, 0), textcoords="offset points", xytext=(4, 6),
                        fontsize=7, color=color)
        n += len(cs)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("delta = (L_bw - L_fw) / mean  (%)")
    ax.set_title(f"Arrow of Time vs model size\nintervals: {_interval_label(overs)}; lines: fit in log10 size",
                 fontsize=9)
    ax.legend(fontsize=7)
    return [Figure(name="delta_vs_size", files=_save(fig, out, "fig_delta_vs_size"), points=n)]


def _params(n: float) -> str:
    return f"{n / 1e9:.2g}B" if n >= 1e9 else f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k"


def vs_context(cells: list[dict[str, Any]], pairs: list[dict[str, Any]], trends: list[dict[str, Any]],
               refs: list[dict[str, Any]], out: Path) -> list[Figure]:
    series = _series(cells, trends, "context_length")
    if not series:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    paper = _refs(refs, "ratio")
    n, overs = 0, set()
    for t, cs in series:
        got = [supported(c, pairs) for c in cs]
        overs |= {g[3] for g in got}
        xs = np.array([c["context_length"] for c in cs], dtype=float)
        ys = np.array([ratio(g[0]) for g in got]) * PERCENT
        lo = np.array([ratio(g[1]) for g in got]) * PERCENT
        hi = np.array([ratio(g[2]) for g in got]) * PERCENT
        label = " ".join(kv.split("=", 1)[1] for kv in t["group"].split() if kv.startswith("language=")) \
            or t["group"] or "cells"
        line = ax.errorbar(xs, ys, yerr=_err(ys, lo, hi), fmt="o-", capsize=3, label=label)
        for c, x in zip(cs, xs):
            if c["cell_key"] in paper:
                ax.plot([x], [paper[c["cell_key"]] * PERCENT], "x", color=line[0].get_color(), ms=8)
        n += len(cs)
    if paper:
        ax.plot([], [], "x", color="black", label="paper (read off its figure)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("L_bw / L_fw - 1  (%)")
    ax.set_title(f"Backward over forward loss vs context length\nintervals: {_interval_label(overs)}", fontsize=9)
    ax.legend(fontsize=7)
    return [Figure(name="ratio_vs_context", files=_save(fig, out, "fig_ratio_vs_context"), points=n)]


def loss_vs_k(cells: list[dict[str, Any]], out: Path, axis: str = "data.k") -> list[Figure]:
    """Forward and backward loss (mean over the cells at each k, e.g. over the matrices of `data.seed`), with
    each cell as a faint dot."""
    cs = [c for c in cells if isinstance((c.get("axes") or {}).get(axis), (int, float))]
    if len({c["axes"][axis] for c in cs}) < 2:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    by_k: dict[float, list[dict]] = defaultdict(list)
    for c in cs:
        by_k[c["axes"][axis]].append(c)
    ks = sorted(by_k)
    for key, name, style in (("L_fw_mean", "forward", "o-"), ("L_bw_mean", "backward", "s--")):
        line = ax.plot(ks, [np.mean([c[key] for c in by_k[k]]) for k in ks], style, label=f"{name} (mean over cells)")
        ax.plot([c["axes"][axis] for c in cs], [c[key] for c in cs], ".", color=line[0].get_color(), alpha=0.35)
    ax.set_xlabel(f"k (off-diagonal ones of A: {axis})")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Forward and backward loss vs sparsity k (linear languages over F2)", fontsize=9)
    ax.legend(fontsize=7)
    return [Figure(name="loss_vs_k", files=_save(fig, out, "fig_loss_vs_k"), points=2 * len(ks))]


def architectures(cells: list[dict[str, Any]], pairs: list[dict[str, Any]], out: Path) -> list[Figure]:
    """Bars per architecture at matched sizes: each architecture's models in size order, the i-th of each side
    by side; one panel per language (or dataset)."""
    cs = [c for c in cells if c.get("arch") and c.get("n_params") and "control" not in (c.get("axes") or {})]
    archs = sorted({c["arch"] for c in cs})
    if len(archs) < 2:
        return []
    panels: dict[str, list[dict]] = defaultdict(list)
    for c in cs:
        panels[str(c.get("language") or c["dataset"])].append(c)
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False, sharey=True)
    n, overs = 0, set()
    for ax, (panel, pcs) in zip(axes.flat, sorted(panels.items())):
        tiers = max(len({c["n_params"] for c in pcs if c["arch"] == a}) for a in archs)
        width = 0.8 / len(archs)
        for j, a in enumerate(archs):
            mine = sorted((c for c in pcs if c["arch"] == a), key=lambda c: c["n_params"])
            got = [supported(c, pairs) for c in mine]
            overs |= {g[3] for g in got}
            xs = np.arange(len(mine)) + (j - (len(archs) - 1) / 2) * width
            ys = np.array([g[0] for g in got]) * PERCENT
            lo, hi = np.array([g[1] for g in got]) * PERCENT, np.array([g[2] for g in got]) * PERCENT
            ax.bar(xs, ys, width, yerr=_err(ys, lo, hi), capsize=3, label=ARCH_NAME.get(a, a))
            for x, y, c in zip(xs, ys, mine):  # each bar's size above it (below, for a negative bar)
                ax.annotate(_params(c["n_params"]), (x, y), textcoords="offset points",
                            xytext=(0, 3 if y >= 0 else -9), ha="center", fontsize=6)
            n += len(mine)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(tiers), [f"size {i + 1}" for i in range(tiers)])
        ax.set_title(panel, fontsize=9)
        ax.legend(fontsize=7)
    axes.flat[0].set_ylabel("delta = (L_bw - L_fw) / mean  (%)")
    fig.suptitle(f"GPT vs LSTM vs GRU at matched sizes\nintervals: {_interval_label(overs)}", fontsize=9)
    fig.tight_layout()
    return [Figure(name="architectures", files=_save(fig, out, "fig_architectures"), points=n)]


def paper_figures(result: dict[str, Any], out: Path) -> list[Figure]:
    """Every paper figure the sweep's design supports."""
    cells, pairs, refs = result["summary"], result["pairs"], result.get("references", [])
    return [*by_language(cells, pairs, result.get("across", []), refs, out),
            *vs_size(cells, pairs, result["trends"], out),
            *vs_context(cells, pairs, result["trends"], refs, out),
            *loss_vs_k(cells, out),
            *architectures(cells, pairs, out)]
