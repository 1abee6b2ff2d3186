"""The report's content from one read of a sweep (read -> tidy table -> fit): finished pairs (stopped pairs at
their stop step, runs on changed data left out), cells over seeds, controls, overfit flags, trends in parameters,
compute and tokens, levels across categorical axes, the paper's values beside matching cells, sign tests, the
sequential sign test over seeds, per-position gaps. Writes nothing: `write` does."""

from __future__ import annotations

from typing import Any

from .. import signs
from . import levels, tables
from . import reference as reference_
from .read import Reader


def build(reader: Reader, *, conf: float = 0.95, alpha: float = 0.05, n_boot: int = 2000,
          after: float = signs.DEFAULT.after, overfit: dict[str, float] | None = None,
          reference: str = "paper", versions: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything the report holds, from one read of the sweep. With `versions` (trial id -> the hash of its
    prepared data now) runs that read other data are left out (`stale`). `alpha` and `after` set the sequential sign
    test over seeds (looks from `after` x train.steps on); `overfit` the limits of `tables.overfit_note`
    (rise, max_epochs); `reference` "paper" puts the paper's values beside matching cells, "none" does not."""
    recs = reader.records(include_running=True, include_failed=True)
    failed = [r for r in recs if r["status"] == "FAILED"]  # the newest run of these trials failed
    recs = [r for r in recs if r not in failed]
    stale = [r for r in recs if _stale(r, versions)] if versions else []
    recs = [r for r in recs if r not in stale]  # their corpus changed since: not the sweep's results any more
    reader.prefetch(recs)  # every per-run read below, on threads, at once
    finished = [r for r in recs if r["finished"]]
    windows = {r["trial_id"]: w for r in finished if (w := reader.windows(r)) is not None}
    stopped = at_stop_steps(reader, finished, windows)
    pairs, orphans = tables.pair_rows(finished, windows, n_boot=n_boot, conf=conf)
    joint = tables.joint_rows(finished, {r["trial_id"]: d for r in finished if r["direction"] == "joint"
                                         and (d := reader.directions(r)) is not None}, n_boot=n_boot, conf=conf)
    cells = tables.summarize(pairs, conf)
    tables.attach_controls(cells)
    curve_of, token_curves = _curves(reader, recs, pairs)
    tables.flag_overfit(pairs, curve_of, {r["trial_id"]: r.get("epochs") for r in finished}, **(overfit or {}))
    # final per-position losses of a stopped pair come from different steps: not comparable
    positions = {r["trial_id"]: pos for r in finished
                 if r["pair_key"] not in stopped and (pos := reader.positions(r)) is not None}
    sequences, sign_cells = signs.evaluate(reader, recs, alpha, after)
    trends = tables.trends(cells, conf)
    return {
        "rows": finished,
        "running": [r for r in recs if not r["finished"]],
        "pairs": pairs,
        "joint": joint,  # one model per seed trained on both directions: never pooled with the pairs
        "joint_summary": tables.summarize(joint, conf),
        "order_losses": tables.order_losses(pairs, conf, cells),  # each order's final loss, ranked per cell
        "orphans": orphans,
        "summary": cells,
        "trends": trends,
        "across": levels.across(cells, conf, alpha),
        "references": reference_.compare(cells, pairs, trends, reference_.load() if reference == "paper" else None),
        "token_trends": tables.token_trends(token_curves, conf),
        "signs": tables.sign_tests(pairs),
        "position_gaps": tables.position_gaps(pairs, positions),
        "sequences": sequences,
        "sequence_rows": [{"cell_key": k, **s.__dict__} for k, ss in sequences.items() for s in ss],
        "sign_cells": sign_cells,
        "curves": curve_of,
        "conf": conf,
        "alpha": alpha,
        # each compared pair that was stopped, every order's included (a trial's pair key is its forward pair's)
        "stopped": {p["pair_key"]: p["stopped_at"] for p in pairs if p.get("stopped_at") is not None},
        "stale": sorted(r["trial_id"] for r in stale),
        "failed_cells": failed_cells(failed, recs),
    }


def _curves(reader: Reader, recs: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> tuple[dict, dict]:
    """(trial id -> its validation curve, pair key -> (forward curve, other curve, tokens per step)) of the pairs."""
    by_id = {r["trial_id"]: r for r in recs}
    curve_of: dict[str, list[tuple[int, float]]] = {}
    token_curves = {}
    for p in pairs:
        fw, bw = by_id[p["fw_trial"]], by_id[p["bw_trial"]]
        curve_of[fw["trial_id"]], curve_of[bw["trial_id"]] = reader.curve(fw), reader.curve(bw)
        per_step = tokens_per_step(reader, fw)
        if per_step:
            token_curves[p["pair_key"]] = (curve_of[fw["trial_id"]], curve_of[bw["trial_id"]], per_step)
    return curve_of, token_curves


def failed_cells(failed: list[dict[str, Any]], others: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells with a failed trial, each once: its failed trials, whether any of its trials finished or runs
    (`lost`: none did, so the cell is missing from every table), and the first failed trial's error."""
    live = {r["cell_key"] for r in others}
    cells: dict[str, dict[str, Any]] = {}
    for r in sorted(failed, key=lambda r: r["trial_id"] or ""):
        c = cells.setdefault(r["cell_key"], {"cell_key": r["cell_key"], "trials": [], "error": r.get("error"),
                                            "lost": r["cell_key"] not in live})
        c["trials"].append(r["trial_id"])
    return sorted(cells.values(), key=lambda c: (not c["lost"], c["cell_key"] or ""))


def _stale(rec: dict[str, Any], versions: dict[str, str]) -> bool:
    now = versions.get(rec["trial_id"])
    return rec.get("data_version") is not None and now is not None and rec["data_version"] != now


def tokens_per_step(reader: Reader, rec: dict[str, Any]) -> float | None:
    """Training tokens per step of a run, from the search (`read.record_of`); on runs of versions without
    eval_step, from its tokens curve."""
    if rec.get("tokens_per_step"):
        return rec["tokens_per_step"]
    toks = reader.curve(rec, "tokens")
    return toks[-1][1] / toks[-1][0] if toks and toks[-1][0] > 0 else None


def at_stop_steps(reader: Reader, finished: list[dict[str, Any]], windows: dict[str, Any]) -> dict[str, int]:
    """Pairs that the sweep stopped once their sign was settled (tag aot.stop_at) are compared at that step, the
    last evaluation both directions are known to share: loss, tokens and per-window losses of that evaluation
    replace the final ones in `finished` / `windows` (in place). A side without that evaluation is left unpaired.
    Returns pair_key -> step for the pairs compared so."""
    stops: dict[str, int] = {}
    sides = [r for r in finished if r["direction"] != "joint"]  # one model on both directions: its own row
    for r in sides:
        if r.get("stop_at") is not None:
            stops[r["pair_key"]] = min(r["stop_at"], stops.get(r["pair_key"], r["stop_at"]))
    for r in sides:
        at = stops.get(r["pair_key"])
        if at is None:
            continue
        loss, toks = dict(reader.curve(r)), dict(reader.curve(r, "tokens"))
        w = reader.window_history(r).get(at)
        if w is None or at not in loss:
            r["val_loss"] = None
            continue
        windows[r["trial_id"]] = w
        r.update(val_loss=loss[at], tokens=int(toks[at]) if at in toks else r["tokens"], stopped_at=at)
    of: dict[str, list[dict]] = {}
    for r in sides:
        of.setdefault(r["pair_key"], []).append(r)
    # pairs whose sides (forward and each order of the cell and seed) are done and compared at the step
    return {k: v for k, v in stops.items() if len(of[k]) >= 2 and all(r.get("stopped_at") is not None for r in of[k])}
