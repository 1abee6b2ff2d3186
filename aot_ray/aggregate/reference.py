"""The paper's numbers beside ours (pure, apart from reading the package's `paper.yaml`): for each cell whose
setting matches a reference value, the measured value with the interval its level supports (over seeds with two
or more, else over the validation windows of its one pair: precision only), and in words whether that interval
contains the paper's value, lies above it or below it; for each trend the paper describes, whether the sweep's
trend agrees. A sweep that matches nothing gets nothing."""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

from .levels import pct, ratio, supported

REFERENCE_COLUMNS = ["quantity", "cell_key", "paper", "ours", "lo", "hi", "interval", "relation", "figure"]


def load() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(resources.files("aot_ray.aggregate").joinpath("paper.yaml").read_text())


def _matches(where: dict[str, Any], cell: dict[str, Any]) -> bool:
    return all(str(cell.get(k)) == str(v) for k, v in where.items())


def _measured(cell: dict[str, Any], pairs: list[dict[str, Any]], quantity: str) -> tuple[float, float, float, str]:
    """(value, lo, hi, what the interval is over) of a cell, as delta or as L_bw / L_fw - 1."""
    v, lo, hi, over = supported(cell, pairs)
    f = ratio if quantity == "ratio" else (lambda d: d)
    return f(v), f(lo), f(hi), over


def relation(paper: float, lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "no interval to compare"
    if lo <= paper <= hi:
        return "contains the paper's value"
    return "lies above the paper's value" if lo > paper else "lies below the paper's value"


def compare(cells: list[dict[str, Any]], pairs: list[dict[str, Any]], trends: list[dict[str, Any]],
            refs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per reference value or trend claim that a cell or trend of the sweep matches."""
    if not refs:
        return []
    out = []
    for ref in refs.get("values", []):
        for c in cells:
            if not _matches(ref["where"], c):
                continue
            v, lo, hi, over = _measured(c, pairs, ref["quantity"])
            rel = relation(ref["value"], lo, hi)
            name = "delta" if ref["quantity"] == "delta" else "L_bw/L_fw - 1"
            ci = f" [{pct(lo)}, {pct(hi)}] {over}" if math.isfinite(lo) else f" ({over})"
            out.append({"quantity": ref["quantity"], "cell_key": c["cell_key"], "paper": ref["value"], "ours": v,
                        "lo": lo, "hi": hi, "interval": over, "relation": rel, "figure": ref["figure"],
                        "statement": f"{name} {_setting(ref['where'])}: paper {pct(ref['value'])} ({ref['figure']}, "
                                     f"read off it); ours {pct(v)}{ci}: our interval {rel}"
                                     if math.isfinite(lo) else
                                     f"{name} {_setting(ref['where'])}: paper {pct(ref['value'])} ({ref['figure']}); "
                                     f"ours {pct(v)}{ci}"})
    for ref in refs.get("trends", []):
        for t in trends:
            if t["x"] != ref["x"] or not _group_matches(ref["where"], t["group"]):
                continue
            out.append(_trend_row(ref, t))
    return out


def _setting(where: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in where.items())


def _group_matches(where: dict[str, Any], group: str) -> bool:
    fields = dict(kv.split("=", 1) for kv in group.split() if "=" in kv)
    return all(fields.get(k) == str(v) for k, v in where.items())


def _trend_row(ref: dict[str, Any], t: dict[str, Any]) -> dict[str, Any]:
    """Does the sweep's trend agree with the paper's qualitative claim along the same axis?"""
    checks = []
    if ref.get("slope") == "positive":
        if math.isfinite(t["slope_lo"]) and t["slope_lo"] > 0:
            checks.append(("agrees", f"the slope {pct(t['slope'])} per 10x [{pct(t['slope_lo'])}, "
                                     f"{pct(t['slope_hi'])}] is positive"))
        elif math.isfinite(t["slope_hi"]) and t["slope_hi"] < 0:
            checks.append(("disagrees", f"the slope {pct(t['slope'])} per 10x [{pct(t['slope_lo'])}, "
                                        f"{pct(t['slope_hi'])}] is negative"))
        else:
            checks.append(("undecided", f"the slope {pct(t['slope'])} per 10x has an interval that contains 0"
                                        if math.isfinite(t["slope_lo"]) else
                                        f"the slope {pct(t['slope'])} per 10x has no interval ({t['n']} points)"))
    if ref.get("smallest") == "negative" and t.get("points"):
        x, y = t["points"][0]
        checks.append(("agrees" if y < 0 else "disagrees",
                       f"the smallest ({x:.3g}) has delta {pct(y)}"))
    words = {c for c, _ in checks}
    overall = "disagrees" if "disagrees" in words else "agrees" if words == {"agrees"} else "undecided"
    return {"quantity": f"trend in {t['x']}", "cell_key": t["group"], "paper": float("nan"),
            "ours": t["slope"], "lo": t["slope_lo"], "hi": t["slope_hi"], "interval": "over cells along the axis",
            "relation": overall, "figure": ref["figure"],
            "statement": f"paper ({ref['figure']}): {ref['claim']}; ours [{t['group']}]: "
                         f"{'; '.join(s for _, s in checks)}: {overall} with the paper"}
