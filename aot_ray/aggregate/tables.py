"""Pure layer of the report: tidy trial records -> forward/backward pairs with intervals -> cells (seed means,
with the direction their spread supports) -> trends, sign tests, per-position gaps. No I/O; every function takes
plain data. The sequential sign test over seeds lives in `aot_ray.signs` (it also runs while a sweep trains).

delta = (L_bw - L_fw) / (0.5 (L_bw + L_fw)), losses in nats/token on the same validation windows; delta > 0 means
the forward direction is easier.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from .. import stats
from ..signs.cells import ORDER_SEP, compared_key, comparisons

delta = stats.delta

PAIR_COLUMNS = ["pair_key", "cell_key", "order", "dataset", "windows", "language", "arch", "model", "context_length", "seed", "n_params",
                "tokens", "L_fw", "L_bw", "delta", "delta_lo", "delta_hi", "n_windows", "fw_trial", "bw_trial", "stopped_at",
                "overfit"]
SUMMARY_COLUMNS = ["cell_key", "order", "dataset", "windows", "language", "arch", "model", "context_length", "n_seeds", "n_params",
                   "compute", "L_fw_mean", "L_bw_mean", "delta_mean", "delta_lo", "delta_hi", "direction", "delta_std",
                   "delta_min", "delta_max", "null_control", "null_delta", "null_lo", "null_hi"]
TREND_COLUMNS = ["x", "scale", "group", "n", "slope", "slope_lo", "slope_hi", "intercept", "r2", "p_value", "crossing",
                 "crossing_from", "crossing_to"]
SIGN_COLUMNS = ["group", "positive", "negative", "p_value"]
SEQUENCE_COLUMNS = ["cell_key", "look", "step", "n", "delta", "lo", "hi", "sign", "established_at"]  # see aot_ray.signs
# what names a cell, with the axes; the order compared with forward where it is not backward (no trend pools two)
DESCRIBE = ("order", "dataset", "language", "arch", "model", "context_length")
OVERFIT_RISE = 0.05  # validation loss this far (relative) above its best: measured on an overfit model
MAX_EPOCHS = 20.0  # passes over the training split beyond which a model is flagged (and plan warns)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def pair_rows(rows: list[dict[str, Any]], windows: dict[str, np.ndarray] | None = None, *, n_boot: int = 2000,
              conf: float = 0.95) -> tuple[list[dict[str, Any]], list[str]]:
    """(complete pairs, trial ids whose partner is missing). With per-window losses of both sides (`windows`,
    by trial id) a pair gets a paired bootstrap interval on delta over its validation windows."""
    windows = windows or {}
    done = [r for r in rows if r.get("val_loss") is not None and math.isfinite(r["val_loss"])
            and r.get("finished") is not False]
    compared, alone = comparisons(done)
    pairs, orphans = [], [r["trial_id"] for r in alone]
    for key, sides in compared.items():
        fw, bw = sides["forward"], sides["other"]
        p = {
            "pair_key": key,
            "cell_key": compared_key(fw["cell_key"], bw["direction"]),
            "order": bw["direction"],  # what forward is compared with: backward, or another order
            **{k: fw.get(k) for k in ("dataset", "windows", "language", "arch", "model", "context_length", "seed",
                                      "n_params", "tokens")},
            "axes": dict(fw.get("axes") or {}),
            "L_fw": fw["val_loss"],
            "L_bw": bw["val_loss"],
            "delta": delta(fw["val_loss"], bw["val_loss"]),
            "delta_lo": float("nan"),
            "delta_hi": float("nan"),
            "n_windows": 0,
            "fw_trial": fw["trial_id"],
            "bw_trial": bw["trial_id"],
            "stopped_at": fw.get("stopped_at"),  # the step a stopped pair is compared at (None: final losses)
        }
        a, b = windows.get(fw["trial_id"]), windows.get(bw["trial_id"])
        if a is not None and b is not None and a.shape == b.shape and len(a):
            ci = stats.paired_bootstrap(a, b, n_boot=n_boot, conf=conf, seed=len(pairs))
            p.update(delta=ci.estimate, delta_lo=ci.lo, delta_hi=ci.hi, n_windows=ci.n)
        pairs.append(p)
    pairs.sort(key=_order)
    return pairs, sorted(orphans)


def joint_rows(rows: list[dict[str, Any]], directions: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, *,
               n_boot: int = 2000, conf: float = 0.95) -> list[dict[str, Any]]:
    """One row per finished joint model (one model trained on both directions), its delta between its own
    backward and forward losses on the same windows, with a paired bootstrap interval over them: a comparison of
    its own kind, keyed `<key>~joint`, never pooled with two-model pairs."""
    out = []
    for r in rows:
        if r.get("direction") != "joint" or r.get("finished") is False or not _finite(r.get("L_forward")) \
                or not _finite(r.get("L_backward")):
            continue
        p = {"pair_key": compared_key(r["pair_key"], "joint"), "cell_key": compared_key(r["cell_key"], "joint"),
             "order": "joint", "kind": "one model, both directions",
             **{k: r.get(k) for k in ("dataset", "windows", "language", "arch", "model", "context_length", "seed",
                                      "n_params", "tokens")},
             "axes": dict(r.get("axes") or {}), "L_fw": r["L_forward"], "L_bw": r["L_backward"],
             "delta": delta(r["L_forward"], r["L_backward"]), "delta_lo": float("nan"), "delta_hi": float("nan"),
             "n_windows": 0, "fw_trial": r["trial_id"], "bw_trial": r["trial_id"], "stopped_at": None}
        a, b = (directions or {}).get(r["trial_id"], (None, None))
        if a is not None and b is not None and a.shape == b.shape and len(a):
            ci = stats.paired_bootstrap(a, b, n_boot=n_boot, conf=conf, seed=len(out))
            p.update(delta=ci.estimate, delta_lo=ci.lo, delta_hi=ci.hi, n_windows=ci.n)
        out.append(p)
    out.sort(key=_order)
    return out


def _order(r: dict[str, Any]) -> tuple:
    return (r["dataset"], r.get("language") or "", r.get("arch") or "", r.get("n_params") or 0, r["model"],
            r["context_length"], sorted((k, _sortable(v)) for k, v in (r.get("axes") or {}).items()), r["cell_key"],
            r.get("seed", 0))


def _sortable(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def summarize(pairs: list[dict[str, Any]], conf: float = 0.95) -> list[dict[str, Any]]:
    """Mean over seeds per cell, with a t interval over seeds and the direction it supports. With one seed there
    is no interval and no direction: that pair's interval over windows says how precisely its two models were
    compared, not whether another seed would give the same sign."""
    cells: dict[str, list[dict]] = defaultdict(list)
    for p in pairs:
        cells[p["cell_key"]].append(p)
    out = []
    for key, ps in cells.items():
        ds = [p["delta"] for p in ps]
        ci = stats.mean_interval(ds, conf)
        lo, hi = ci.lo, ci.hi
        out.append({
            "cell_key": key,
            **{k: ps[0].get(k) for k in ("order", "dataset", "windows", "language", "arch", "model",
                                         "context_length", "n_params", "tokens")},
            "axes": ps[0].get("axes") or {},
            "n_seeds": len(ps),
            "L_fw_mean": statistics.fmean(p["L_fw"] for p in ps),
            "L_bw_mean": statistics.fmean(p["L_bw"] for p in ps),
            "delta_mean": ci.estimate,
            "delta_lo": lo,
            "delta_hi": hi,
            "direction": direction(lo, hi, len(ps), _against(ps[0].get("order", "backward"))),
            # training compute, 6 N D (N parameters, D training tokens): the scaling axis beside size
            "compute": (6.0 * ps[0]["n_params"] * ps[0]["tokens"] if ps[0].get("n_params") and ps[0].get("tokens")
                        else None),
            "delta_std": statistics.stdev(ds) if len(ds) > 1 else float("nan"),
            "delta_min": min(ds),
            "delta_max": max(ds),
        })
    out.sort(key=_order)
    return out


def attach_controls(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put each group's noise floor beside its cells (in place): the delta and seed interval of the control cell
    of the same dataset and language (`null_controls`), as null_delta / null_lo / null_hi. Returns the controls."""
    controls = {(c["dataset"], c.get("language")): c for c in cells if "control" in c["axes"]}
    for c in cells:
        if "control" in c["axes"]:
            continue
        ctrl = next((v for (d, lang), v in controls.items()
                     if d.rsplit(":", 1)[0] == c["dataset"] and lang == c.get("language")), None)
        if ctrl is not None:
            c.update(null_delta=ctrl["delta_mean"], null_lo=ctrl["delta_lo"], null_hi=ctrl["delta_hi"],
                     null_control=ctrl["axes"]["control"])
    return list(controls.values())


def _is_replicate(axis: str) -> bool:
    return axis == "seed" or axis.endswith(".seed")  # another draw of the same condition, not a condition


def trend_axes(cells: list[dict[str, Any]]) -> list[str]:
    """Numeric axes that vary across cells: n_params (model size), context_length, and dotted overrides."""
    names = ["n_params", "compute", "context_length"] + sorted({k for c in cells for k in c["axes"] if "." in k})
    out = []
    for name in names:
        if _is_replicate(name):
            continue
        values = {_x(c, name) for c in cells}
        if len(values) > 1 and all(_finite(v) for v in values):
            out.append(name)
    return out


def _x(cell: dict[str, Any], axis: str) -> Any:
    return cell["axes"].get(axis) if "." in axis else cell.get(axis)


def _group_key(cell: dict[str, Any], axis: str) -> tuple:
    skip = {axis, "model"} if axis in ("n_params", "compute") else {axis}
    fixed = [(k, cell.get(k)) for k in DESCRIBE if k not in skip and cell.get(k) is not None
             and not (k == "order" and cell.get(k) == "backward")]
    fixed += sorted((k, v) for k, v in cell["axes"].items()
                    if k not in skip and k not in ("model", "context_length", "dataset", "language")
                    and not _is_replicate(k))
    return tuple(fixed)


def trends(cells: list[dict[str, Any]], conf: float = 0.95) -> list[dict[str, Any]]:
    """delta (cell means) against each varying numeric axis, within groups where everything else is equal; in
    log10 when the axis is positive (the slope is then per 10x), else linear. Replicate axes (`data.seed`)
    give several points per x."""
    out = []
    for axis in trend_axes(cells):
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for c in cells:
            groups[_group_key(c, axis)].append(c)
        for key, cs in sorted(groups.items(), key=lambda kv: str(kv[0])):
            xs = [_x(c, axis) for c in cs]
            if len(set(xs)) < 2:
                continue
            log = all(x > 0 for x in xs)
            t = stats.fit_trend(xs, [c["delta_mean"] for c in cs], conf=conf, log_x=log)
            points = sorted(zip(xs, (c["delta_mean"] for c in cs)))
            out.append({"x": axis, "scale": "log10" if log else "linear",
                        "group": " ".join(f"{k}={v}" for k, v in key), "n": t.n, "slope": t.slope,
                        "slope_lo": t.slope_lo, "slope_hi": t.slope_hi, "intercept": t.intercept, "r2": t.r2,
                        "p_value": t.p_value, **crossing(points, t, log), "points": points})
    return out


def crossing(points: list[tuple[float, float]], fit: stats.Trend, log: bool) -> dict[str, Any]:
    """Where the sign of delta changes along the axis, when the data show a change: the observed neighbours
    it lies between (crossing_from -> crossing_to, the first change in x order) and where the fitted line
    crosses zero (crossing; NaN when the fit is flat or crosses outside the observed range)."""
    none = {"crossing": float("nan"), "crossing_from": None, "crossing_to": None}
    change = next(((a, b) for a, b in zip(points, points[1:]) if a[1] * b[1] < 0), None)
    if change is None:
        return none
    out = {**none, "crossing_from": change[0][0], "crossing_to": change[1][0]}
    if fit.slope and fit.slope == fit.slope:
        at = -fit.intercept / fit.slope
        x = 10 ** at if log else at
        if points[0][0] <= x <= points[-1][0]:
            out["crossing"] = float(x)
    return out


def token_trends(curves: dict[str, tuple[list[tuple[int, float]], list[tuple[int, float]], int]],
                 conf: float = 0.95) -> list[dict[str, Any]]:
    """delta along training, per pair: {pair_key: (fw curve, bw curve, tokens per step)} -> a fit of delta
    against log10 tokens over the evaluations both sides have. Points along one run are not independent, so
    the interval is descriptive."""
    out = []
    for key, (fw, bw, per_step) in sorted(curves.items()):
        b = dict(bw)
        pts = [(s * per_step, delta(v, b[s])) for s, v in fw if s in b and s > 0]
        if len({x for x, _ in pts}) < 2:
            continue
        t = stats.fit_trend([x for x, _ in pts], [y for _, y in pts], conf=conf)
        out.append({"x": "tokens", "scale": "log10", "group": f"pair={key}", "n": t.n, "slope": t.slope,
                    "slope_lo": t.slope_lo, "slope_hi": t.slope_hi, "intercept": t.intercept, "r2": t.r2,
                    "p_value": t.p_value, "points": pts})
    return out


def sign_tests(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell, over its seeds (the within-cell level; across languages and other categorical axes see
    `levels.across`): how many of its pairs have delta > 0 and < 0, and the exact binomial p-value of that split.
    Pooling a language's cells of different sizes or contexts here would count conditions as replicates."""
    groups: dict[str, list[float]] = defaultdict(list)
    for p in pairs:
        groups[p["cell_key"]].append(p["delta"])
    out = []
    for g, ds in sorted(groups.items()):
        t = stats.sign_test(ds)
        out.append({"group": g, "positive": t.positive, "negative": t.negative, "p_value": t.p_value})
    return out


def position_gaps(pairs: list[dict[str, Any]], positions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """cell_key -> mean over seeds of (backward - forward) loss at each position, i.e. after the same number of
    context tokens."""
    acc: dict[str, list[np.ndarray]] = defaultdict(list)
    for p in pairs:
        a, b = positions.get(p["fw_trial"]), positions.get(p["bw_trial"])
        if a is not None and b is not None and a.shape == b.shape:
            acc[p["cell_key"]].append(b - a)
    return {k: np.mean(v, axis=0) for k, v in acc.items()}


ORDER_LOSS_COLUMNS = ["cell", "rank", "order", "n_seeds", "loss_mean", "loss_lo", "loss_hi", "vs_forward"]


def order_losses(pairs: list[dict[str, Any]], conf: float = 0.95,
                 cells: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The final validation loss of every order of each cell (forward once), its mean over seeds with the t
    interval over them (the level a loss rests on: seeds; none with one seed), ranked within the cell by that mean
    (1: the lowest loss). `vs_forward` is what the cell's comparison with forward states over seeds (`cells`:
    `summarize`'s rows), the claim a ranking rests on. Only for sweeps with an order other than forward and
    backward (the pairs say the rest)."""
    if not any(p.get("order", "backward") not in ("backward", "joint") for p in pairs):
        return []
    losses: dict[str, dict[str, dict[Any, float]]] = defaultdict(lambda: defaultdict(dict))
    for p in pairs:
        base = p["cell_key"].partition(ORDER_SEP)[0]
        losses[base]["forward"][p["seed"]] = p["L_fw"]
        losses[base][p.get("order", "backward")][p["seed"]] = p["L_bw"]
    said = {c["cell_key"]: c.get("direction", "") for c in cells or []}
    out = []
    for cell in sorted(losses):
        rows = []
        for order, by_seed in losses[cell].items():
            vals = list(by_seed.values())
            ci = stats.mean_interval(vals, conf) if len(vals) > 1 else None
            rows.append({"cell": cell, "order": order, "n_seeds": len(vals), "loss_mean": float(np.mean(vals)),
                         "loss_lo": ci.lo if ci else float("nan"), "loss_hi": ci.hi if ci else float("nan"),
                         "vs_forward": "reference" if order == "forward" else
                         said.get(compared_key(cell, order), "")})
        rows.sort(key=lambda r: (r["loss_mean"], r["order"]))
        out += [{**r, "rank": i} for i, r in enumerate(rows, start=1)]
    return out


def _against(order: str) -> str:
    """What forward is compared with: the order, or backward for the joint model's two directions."""
    return "backward" if order == "joint" else order


def direction(lo: float, hi: float, n_seeds: int, order: str = "backward") -> str:
    """What a cell's interval over seeds says about forward against `order`, in words."""
    if n_seeds < 2:
        return "undetermined (1 seed)"
    if lo > 0:
        return "forward easier"
    if hi < 0:
        return f"{order} easier"
    return "undetermined"


def overfit_note(curve: list[tuple[int, float]], at: int | None, epochs: float | None, *,
                 rise: float = OVERFIT_RISE, max_epochs: float = MAX_EPOCHS) -> str:
    """Why a trial's compared loss (at step `at`, else its last evaluation) is that of an overfit model: its
    validation loss rose by more than `rise` from its best so far, or it saw its training split more than
    `max_epochs` times. Empty when neither."""
    pts = [(s, v) for s, v in curve if (at is None or s <= at) and _finite(v)]
    notes = []
    if pts:
        best, last = min(v for _, v in pts), pts[-1][1]
        if best > 0 and (last - best) / best > rise:
            notes.append(f"val +{(last - best) / best:.0%} from best")
    if epochs is not None and _finite(epochs) and epochs > max_epochs:
        notes.append(f"{epochs:.0f} epochs")
    return ", ".join(notes)


def flag_overfit(pairs: list[dict[str, Any]], curves: dict[str, list[tuple[int, float]]],
                 epochs: dict[str, float | None], **limits: float) -> None:
    """Set each pair's `overfit` column (in place): which side was overfit, and how."""
    for p in pairs:
        sides = []
        for side, tid in (("fw", p["fw_trial"]), ("bw", p["bw_trial"])):
            note = overfit_note(curves.get(tid, []), p.get("stopped_at"), epochs.get(tid), **limits)
            if note:
                sides.append(f"{side}: {note}")
        p["overfit"] = "; ".join(sides)


def flat(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for CSV: the axes dict spread into columns, helper fields dropped."""
    out = []
    for r in rows:
        r = dict(r)
        r.pop("points", None)
        for k, v in (r.pop("axes", None) or {}).items():
            r.setdefault(k, v)
        out.append(r)
    return out
