"""Replication levels of the report (pure): what each claim rests on, and its words.

A claim about the arrow replicates at one of three levels, and the report names which:
- **over seeds, within a cell**: the cell's t interval over its seeds' deltas (`tables.summarize`); with one seed a
  cell has no replication of its own;
- **across the cells of a categorical axis** (languages, datasets, architectures): each cell counts once, with
  its mean over seeds; a two-sided sign test over the cells and a t interval on their mean (`across`). This is
  the level of the paper's main claim (one seed per language: the languages replicate it);
- **along a numeric axis** (size, compute, context): the trend (`tables.trends`), which is fitted on cell means.
A pair's interval over its validation windows is precision, never replication.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .. import stats

CATEGORICAL = ("language", "dataset", "arch")  # axes whose cells replicate a claim across them
PLURAL = {"language": "languages", "dataset": "datasets", "arch": "architectures"}
LEVEL_COLUMNS = ["level", "axis", "group", "n", "positive", "negative", "p_value", "delta_mean", "delta_lo",
                 "delta_hi", "seeds_per_cell", "verdict"]
# what else names a cell: the order compared with forward first, so that no claim pools two orders
FIXED = ("order", "dataset", "language", "arch", "model", "context_length")


def pct(v: float, signed: bool = True) -> str:
    """A delta as a percentage, e.g. +1.30%."""
    if v != v:
        return "nan"
    return f"{v * 100:+.2f}%" if signed else f"{v * 100:.2f}%"


def p_text(p: float) -> str:
    """A p-value in two significant digits (0.031, 0.00098)."""
    return "nan" if p != p else f"{p:.2g}"


def _group(cell: dict[str, Any], axis: str) -> tuple:
    """Everything that names the cell except `axis` (and, across architectures, the model and its size, which
    change with the architecture)."""
    skip = {axis} | ({"model", "n_params"} if axis == "arch" else set())
    fixed = [(k, cell.get(k)) for k in FIXED if k not in skip and cell.get(k) is not None
             and not (k == "order" and cell.get(k) == "backward")]  # backward's groups read as they always did
    fixed += sorted((k, v) for k, v in (cell.get("axes") or {}).items()
                    if k not in skip and k not in FIXED and k != "seed" and not k.endswith(".seed"))
    return tuple(fixed)


def across(cells: list[dict[str, Any]], conf: float = 0.95, alpha: float = 0.05) -> list[dict[str, Any]]:
    """For each categorical axis with several values, within each group of cells that agree on everything
    else: the cells (one per value, or several where an architecture has several sizes) as the units of a sign
    test and a t interval on their mean delta. Control cells (no arrow by construction) are left out."""
    out = []
    real = [c for c in cells if "control" not in (c.get("axes") or {}) and c.get("delta_mean") == c.get("delta_mean")]
    for axis in CATEGORICAL:
        if len({c.get(axis) for c in real if c.get(axis) is not None}) < 2:
            continue
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for c in real:
            if c.get(axis) is not None:
                groups[_group(c, axis)].append(c)
        for key, cs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            values = sorted({str(c[axis]) for c in cs})
            if len(values) < 2:
                continue
            ds = [c["delta_mean"] for c in cs]
            test, ci = stats.sign_test(ds), stats.mean_interval(ds, conf)
            row = {"level": f"across {PLURAL[axis]}", "axis": axis, "group": " ".join(f"{k}={v}" for k, v in key),
                   "n": len(cs), "levels": values, "positive": test.positive, "negative": test.negative,
                   "p_value": test.p_value, "delta_mean": ci.estimate, "delta_lo": ci.lo, "delta_hi": ci.hi,
                   "seeds_per_cell": sorted({int(c.get("n_seeds") or 1) for c in cs})}
            row["verdict"] = verdict(row, alpha)
            row["statement"] = statement(row)
            out.append(row)
    return out


def _units(row: dict[str, Any]) -> str:
    """'11 languages', or '9 cells of 3 architectures' where a value has several cells."""
    k, word = len(row["levels"]), PLURAL[row["axis"]]
    return f"{k} {word}" if row["n"] == k else f"{row['n']} cells of {k} {word}"


def verdict(row: dict[str, Any], alpha: float = 0.05) -> str:
    """consistent (one sign in every unit, significant at alpha), same sign but too few units, or mixed."""
    pos, neg, n = row["positive"], row["negative"], row["n"]
    word = PLURAL[row["axis"]] if row["n"] == len(row["levels"]) else "cells"
    other = _order(row)
    if pos == n or neg == n:
        side = "forward easier" if pos == n else f"{other} easier"
        if row["p_value"] <= alpha:
            return f"consistent: {side} in {n} of {n} {word}"
        return (f"{side} in {n} of {n} {word}, too few to be significant (p = {p_text(row['p_value'])}; "
                f"{_fewest(alpha)} would be needed)")
    return f"not consistent: {pos} of {n} {word} forward easier, {neg} {other} easier"


def _order(row: dict[str, Any]) -> str:
    """The order a claim compares with forward (its group names it unless it is backward)."""
    for part in str(row.get("group") or "").split():
        if part.startswith("order="):
            return part.partition("=")[2]
    return "backward"


def _fewest(alpha: float) -> int:
    """The fewest units that all share one sign for the two-sided sign test to reach alpha."""
    n = 1
    while stats.sign_test([1.0] * n).p_value > alpha:
        n += 1
    return n


def statement(row: dict[str, Any]) -> str:
    """The claim in words, with its level, e.g. 'over 11 languages: 11 positive, 0 negative, p = 0.00098; mean
    delta +1.30% [+0.80%, +1.90%] over languages (one seed per language: each is one pair)'."""
    word = PLURAL[row["axis"]] if row["n"] == len(row["levels"]) else "cells"
    conf_ci = (f" [{pct(row['delta_lo'])}, {pct(row['delta_hi'])}]" if row["delta_lo"] == row["delta_lo"] else "")
    seeds = row["seeds_per_cell"]
    one = PLURAL[row["axis"]][:-1] if row["axis"] != "arch" else "architecture"
    per = (f" (one seed per {one}: each {one} is one pair)" if seeds == [1]
           else f" (each the mean over its {seeds[0]} seeds)" if len(seeds) == 1
           else f" (each the mean over its {min(seeds)} to {max(seeds)} seeds)")
    group = f" [{row['group']}]" if row["group"] else ""
    return (f"over {_units(row)}{group}: {row['positive']} positive, {row['negative']} negative, "
            f"p = {p_text(row['p_value'])}; mean delta {pct(row['delta_mean'])}{conf_ci} over {word}{per}; "
            f"{row['verdict']}")


def within_statement(cells: list[dict[str, Any]]) -> str:
    """What the cells' own replication (over seeds) supports, in one line."""
    if not cells:
        return ""
    seeds = [int(c.get("n_seeds") or 1) for c in cells]
    if max(seeds) < 2:
        return ("within a cell: one seed each, so no cell states a direction of its own (`undetermined (1 seed)`); "
                "a claim rests on the cells across an axis or along a trend")
    stated = sum(c.get("direction", "").endswith("easier") for c in cells)
    return (f"within a cell, over seeds: {stated} of {len(cells)} cells state a direction (their interval over "
            f"{min(seeds)}-{max(seeds)} seeds excludes 0)" if min(seeds) != max(seeds) else
            f"within a cell, over {seeds[0]} seeds: {stated} of {len(cells)} cells state a direction (their interval "
            f"over seeds excludes 0)")


def supported(cell: dict[str, Any], pairs: list[dict[str, Any]]) -> tuple[float, float, float, str]:
    """(delta, lo, hi, what the interval is over) of a cell, with the interval its level supports: over seeds
    with two or more, else over the validation windows of its one pair (precision, not replication)."""
    import math

    if (cell.get("n_seeds") or 1) >= 2 and math.isfinite(cell.get("delta_lo", float("nan"))):
        return cell["delta_mean"], cell["delta_lo"], cell["delta_hi"], f"over {cell['n_seeds']} seeds"
    mine = [p for p in pairs if p["cell_key"] == cell["cell_key"]]
    if len(mine) == 1 and math.isfinite(mine[0].get("delta_lo", float("nan"))):
        p = mine[0]
        return p["delta"], p["delta_lo"], p["delta_hi"], "over validation windows (one seed: precision)"
    return cell["delta_mean"], float("nan"), float("nan"), "no interval"


def ratio(delta: float) -> float:
    """L_bw / L_fw - 1 from delta = (L_bw - L_fw) / mean (the quantity of the paper's context figure); monotone,
    so an interval on delta maps to one on the ratio."""
    return 2 * delta / (2 - delta)


def trend_statement(t: dict[str, Any]) -> str:
    """A trend along a numeric axis in words, with its level (points are cell means) and where the sign changes."""
    per = "per 10x" if t["scale"] == "log10" else "per unit"
    ci = (f" [{pct(t['slope_lo'])}, {pct(t['slope_hi'])}], p = {p_text(t['p_value'])}"
          if t["slope_lo"] == t["slope_lo"] else f" (no interval from {t['n']} points)")
    group = f" [{t['group']}]" if t["group"] else ""
    line = f"along {t['x']}{group}, over {t['n']} cell means: slope {pct(t['slope'])} {per}{ci}"
    if t.get("crossing_from") is not None:
        line += f"; the sign changes between {t['crossing_from']:.4g} and {t['crossing_to']:.4g}"
        if t.get("crossing") == t.get("crossing"):
            line += f" (the fit crosses 0 at {t['crossing']:.4g})"
    return line


def within_sign_note(signs_rows: list[dict[str, Any]]) -> str:
    """Why the per-group sign test over seeds is left out where a group has one pair."""
    ones = [r["group"] for r in signs_rows if r["positive"] + r["negative"] < 2]
    if not ones:
        return ""
    return (f"one seed in {len(ones)} of {len(signs_rows)} cells: no sign test over seeds there (a single pair is "
            f"no replication)")
