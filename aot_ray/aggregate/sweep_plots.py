"""Plots of the report (matplotlib, headless), each written as PNG and SVG: delta against every trend axis (size per
architecture, context per language, k, ...), forward and backward validation curves per pair, and the gap per
position. Functions take the pure layer's tables and a folder, and return the files they wrote."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .tables import _group_key, _x

PER_FIGURE = 12


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display, and no GUI backend probing
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, stem: str) -> list[Path]:
    files = []
    for ext in ("png", "svg"):
        path = out / f"{stem}.{ext}"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        files.append(path)
    _plt().close(fig)
    return files


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", s).strip("_")


LABEL = {"n_params": "parameters", "context_length": "context length (tokens)", "tokens": "training tokens"}


def delta_vs_axis(cells: list[dict[str, Any]], trends: list[dict[str, Any]], axis: str, out: Path) -> list[Path]:
    """One series per trend group: the cells (seed means with their intervals) and the fitted line."""

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    fits = {t["group"]: t for t in trends if t["x"] == axis}
    series: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        if _finite_x(_x(c, axis)):
            series[" ".join(f"{k}={v}" for k, v in _group_key(c, axis))].append(c)
    log = all(_x(c, axis) > 0 for cs in series.values() for c in cs)
    for group, cs in sorted(series.items()):
        if group not in fits:
            continue
        cs = sorted(cs, key=lambda c: _x(c, axis))
        xs = np.array([_x(c, axis) for c in cs], dtype=float)
        ys = np.array([c["delta_mean"] for c in cs])
        lo = np.array([c["delta_lo"] for c in cs])
        hi = np.array([c["delta_hi"] for c in cs])
        err = np.where(np.isfinite(lo) & np.isfinite(hi), np.vstack([ys - lo, hi - ys]), 0)
        label = group or "all"
        line = ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=label)
        t = fits[group]
        grid = np.linspace(xs.min(), xs.max(), 50)
        fit = t["intercept"] + t["slope"] * (np.log10(grid) if log else grid)
        ax.plot(grid, fit, "-", color=line[0].get_color(), alpha=0.6)
    ax.axhline(0, color="grey", lw=0.8)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(LABEL.get(axis, axis))
    ax.set_ylabel("delta = (L_bw - L_fw) / mean  (> 0: forward easier)")
    ax.set_title(f"Arrow of Time vs {LABEL.get(axis, axis)}")
    if series:
        ax.legend(fontsize=7)
    return _save(fig, out, f"delta_vs_{_slug(axis)}")


def _finite_x(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def curves(pairs: list[dict[str, Any]], curve_of: dict[str, list[tuple[int, float]]], out: Path) -> list[Path]:
    """Forward and backward validation loss against step, one panel per pair, PER_FIGURE panels per file."""
    plt = _plt()
    files: list[Path] = []
    for page in range(0, len(pairs), PER_FIGURE):
        chunk = pairs[page : page + PER_FIGURE]
        cols = min(3, len(chunk))
        rows = math.ceil(len(chunk) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for ax, p in zip(axes.flat, chunk):
            for side, style in (("fw_trial", "-"), ("bw_trial", "--")):
                pts = curve_of.get(p[side], [])
                if pts:
                    ax.plot(*zip(*pts), style, label="forward" if side == "fw_trial" else "backward")
            ax.set_title(p["pair_key"], fontsize=7)
            ax.set_xlabel("step", fontsize=7)
            ax.set_ylabel("val loss (nats/token)", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(chunk):]:
            ax.axis("off")
        fig.tight_layout()
        files += _save(fig, out, f"curves_{page // PER_FIGURE + 1}")
    return files


def order_losses(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """The final loss of each order, one series per cell: the mean over seeds with its t interval over them."""
    if not rows:
        return []
    plt = _plt()
    first = {"forward": 0, "backward": 1}  # the reference, backward, then the others by name, whatever each ranks
    orders = sorted({r["order"] for r in rows}, key=lambda o: (first.get(o, 2), o))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(orders)), 4.2))
    by_cell: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_cell[r["cell"]].append(r)
    for i, (cell, rs) in enumerate(sorted(by_cell.items())[:PER_FIGURE]):
        x = np.array([orders.index(r["order"]) for r in rs]) + 0.08 * (i - len(by_cell) / 2)
        y = np.array([r["loss_mean"] for r in rs])
        err = np.array([[r["loss_mean"] - r["loss_lo"], r["loss_hi"] - r["loss_mean"]] for r in rs]).T
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="o", capsize=3, label=cell)
    ax.set_xticks(range(len(orders)), orders, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("final validation loss (nats/token)")
    seeds = sorted({r["n_seeds"] for r in rows})
    ax.set_title("Final loss per order; interval: " + ("t over seeds" if seeds[0] > 1 else
                                                        "none (one seed per order)"), fontsize=9)
    ax.legend(fontsize=6)
    return _save(fig, out, "order_losses")


def position_gaps(cells: list[dict[str, Any]], gaps: dict[str, np.ndarray], out: Path) -> list[Path]:
    """Backward minus forward loss at each position (after the same number of context tokens), per cell."""
    if not gaps:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = {c["cell_key"]: c["cell_key"] for c in cells}
    for key, gap in sorted(gaps.items())[:PER_FIGURE]:
        ax.plot(np.arange(len(gap)), gap, label=names.get(key, key), lw=1)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("position (context tokens seen)")
    ax.set_ylabel("L_bw - L_fw at the position (nats)")
    ax.set_title("Gap per position")
    ax.legend(fontsize=6)
    return _save(fig, out, "position_gap")
