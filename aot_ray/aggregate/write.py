"""Write layer of the report: read the sweep from MLflow, build the tables (pure), draw the plots, write CSVs and
report.md (its text comes from `text`), attach them to the sweep's parent run, and log the sequential sign test
over seeds on the trial runs (`aot_ray.signs`). `watch` repeats this while the sweep runs."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .. import signs
from ..tracking.store import store_writable
from ..tracking import chosen_parent, sign_rule
from . import figures, levels, plots, tables
from . import reference as reference_
from .read import Reader
from .text import markdown, parent_info, render, to_csv


def build(reader: Reader, *, conf: float = 0.95, alpha: float = 0.05, n_boot: int = 2000,
          after: float = signs.DEFAULT.after, overfit: dict[str, float] | None = None,
          reference: str = "paper", versions: dict[str, str] | None = None) -> dict[str, Any]:
    """Everything the report holds, from one read of the sweep. With `versions` (trial id -> the hash of its
    prepared data now) runs that read other data are left out (`stale`). `alpha` and `after` set the sequential sign
    test over seeds (looks from `after` x train.steps on); `overfit` the limits of `tables.overfit_note`
    (rise, max_epochs); `reference` "paper" puts the paper's values beside matching cells, "none" does not."""
    recs = reader.records(include_running=True)
    stale = [r for r in recs if _stale(r, versions)] if versions else []
    recs = [r for r in recs if r not in stale]  # their corpus changed since: not the sweep's results any more
    reader.prefetch(recs)  # every per-run read below, on threads, at once
    finished = [r for r in recs if r["finished"]]
    windows = {r["trial_id"]: w for r in finished if (w := reader.windows(r)) is not None}
    stopped = at_stop_steps(reader, finished, windows)
    pairs, orphans = tables.pair_rows(finished, windows, n_boot=n_boot, conf=conf)
    cells = tables.summarize(pairs, conf)
    tables.attach_controls(cells)
    by_id = {r["trial_id"]: r for r in recs}
    curve_of: dict[str, list[tuple[int, float]]] = {}
    token_curves = {}
    for p in pairs:
        fw, bw = by_id[p["fw_trial"]], by_id[p["bw_trial"]]
        curve_of[fw["trial_id"]], curve_of[bw["trial_id"]] = reader.curve(fw), reader.curve(bw)
        per_step = tokens_per_step(reader, fw)
        if per_step:
            token_curves[p["pair_key"]] = (curve_of[fw["trial_id"]], curve_of[bw["trial_id"]], per_step)
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
        "stopped": stopped,
        "stale": sorted(r["trial_id"] for r in stale),
    }


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
    for r in finished:
        if r.get("stop_at") is not None:
            stops[r["pair_key"]] = min(r["stop_at"], stops.get(r["pair_key"], r["stop_at"]))
    for r in finished:
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
    both = [r["pair_key"] for r in finished if r.get("stopped_at") is not None]
    return {k: v for k, v in stops.items() if both.count(k) == 2}  # pairs whose two sides are done and compared


def write_files(result: dict[str, Any], out: Path, sweep: str, with_plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    tables_ = {
        "aot_pairs.csv": (tables.flat(result["pairs"]), _columns(tables.PAIR_COLUMNS, result["pairs"])),
        "aot_summary.csv": (tables.flat(result["summary"]), _columns(tables.SUMMARY_COLUMNS, result["summary"])),
        "aot_trends.csv": (result["trends"] + result["token_trends"], tables.TREND_COLUMNS),
        "aot_sign_tests.csv": (result["signs"], tables.SIGN_COLUMNS),
        "aot_sequential.csv": (result["sequence_rows"], tables.SEQUENCE_COLUMNS),
        "aot_levels.csv": ([{**a, "levels": " ".join(a["levels"]),
                             "seeds_per_cell": " ".join(map(str, a["seeds_per_cell"]))} for a in result.get("across", [])],
                           levels.LEVEL_COLUMNS + ["levels"]),
    }
    if result.get("references"):
        tables_["aot_reference.csv"] = (result["references"], reference_.REFERENCE_COLUMNS)
    files = []
    for name, (rows, cols) in tables_.items():
        (out / name).write_text(to_csv(rows, cols))
        files.append(out / name)
    if result["position_gaps"]:
        gaps = result["position_gaps"]
        width = max(len(g) for g in gaps.values())
        rows = [{"position": i, **{k: (float(g[i]) if i < len(g) else "") for k, g in gaps.items()}}
                for i in range(width)]
        (out / "aot_position_gap.csv").write_text(to_csv(rows, ["position", *sorted(gaps)]))
        files.append(out / "aot_position_gap.csv")
    images: list[Path] = []
    if with_plots and result["pairs"]:
        drawn = figures.paper_figures(result, out)  # the paper's figures where the design matches one
        result["figures"] = {f.name: f.points for f in drawn}
        images += [p for f in drawn for p in f.files]
        covered = {"n_params", "context_length"} & {t["x"] for t in result["trends"]} if drawn else set()
        for axis in sorted({t["x"] for t in result["trends"]} - covered):
            images += plots.delta_vs_axis(result["summary"], result["trends"], axis, out)
        images += plots.curves(result["pairs"], result["curves"], out)
        images += plots.position_gaps(result["summary"], result["position_gaps"], out)
    (out / "report.md").write_text(markdown(result, sweep, [p for p in images if p.suffix == ".png"]))
    return files + images + [out / "report.md"]


def _columns(base: list[str], rows: list[dict[str, Any]]) -> list[str]:
    extra = sorted({k for r in rows for k in (r.get("axes") or {}) if k not in base})
    return base + extra


def report(uri: str, sweep: str, out_dir: str | Path | None = None, log_to_parent: bool = True, *,
           conf: float = 0.95, alpha: float | None = None, with_plots: bool = True, reader: Reader | None = None,
           overfit: dict[str, float] | None = None, parent: str | None = None,
           reference: str = "paper", versions: dict[str, str] | None = None) -> dict[str, Any]:
    """Read the sweep, write the report files under `out_dir` (and attach them to the parent run under
    `report/`), log the sequential sign test on the trial runs; returns the tables. The sign test is the one
    the sweep ran with (its alpha and start, recorded on the parent run); `alpha` overrides its level.
    `parent`: the id (or a prefix) of the parent run to read, else the newest. A store that refuses writes
    (read-only) still gets its report: what could not be written to MLflow is said in `notes`."""
    own = reader is None
    chosen, others = chosen_parent(uri, sweep, parent)
    reader = reader or Reader(uri, sweep, chosen.info.run_id if chosen is not None else None)
    try:
        rule = (sign_rule(chosen) if chosen is not None else None) or (signs.DEFAULT.alpha, signs.DEFAULT.after)
        result = build(reader, conf=conf, alpha=alpha or rule[0], after=rule[1], overfit=overfit,
                       reference=reference, versions=versions)
        result["parent"] = None if chosen is None else parent_info(chosen)
        result["other_parents"] = [parent_info(r) for r in others]
        result["notes"] = []
        if result["stale"]:
            result["notes"].append(f"{len(result['stale'])} finished trial(s) read data that has changed since they "
                                   f"ran and are left out: `aot-ray run` trains them again on the data of now")
        writable = log_to_parent and store_writable(uri)
        if log_to_parent and not writable:
            result["notes"].append(f"the tracking store {uri} is read-only: the sign test's metrics and the report "
                                   f"files were not written to MLflow")
        result["sign_looks_logged"] = 0
        if writable:
            try:
                result["sign_looks_logged"] = signs.log_metrics(reader, result["sequences"], result["sign_cells"])
            except Exception as e:  # a store that refuses writes (a read-only server): the report still stands
                writable = False
                result["notes"].append(f"not written to MLflow ({str(e).splitlines()[0][:200]})")
        scratch = None
        if out_dir is None:
            scratch = Path(tempfile.mkdtemp(prefix="aot-report-"))
        out = Path(out_dir) if out_dir is not None else scratch
        files = write_files(result, out, sweep, with_plots) if (result["pairs"] or result["sequences"]) else []
        result["files"] = files if scratch is None else []
        if writable and files and chosen is not None:
            for f in files:
                reader.client.log_artifact(chosen.info.run_id, str(f), "report")
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        return result
    finally:
        if own:
            reader.close()


def watch(uri: str, sweep: str, out_dir: str | Path | None, interval: float, say: Callable[[str], None] = print,
          parent: str | None = None, **kw: Any) -> dict[str, Any]:
    """Re-render every `interval` seconds while the sweep's parent run is RUNNING; a last render after it ends."""
    chosen, _ = chosen_parent(uri, sweep, parent)
    reader = Reader(uri, sweep, chosen.info.run_id if chosen is not None else None)
    try:
        while True:
            result = report(uri, sweep, out_dir, reader=reader, parent=parent, **kw)
            say(f"--- {time.strftime('%H:%M:%S')} ---\n{render(result)}")
            now, _ = chosen_parent(uri, sweep, parent)
            if now is None or now.info.status != "RUNNING":
                return result
            time.sleep(interval)
    finally:
        reader.close()
