"""Write layer of the report: read the sweep from MLflow, build the tables (pure), draw the plots, write CSVs and
report.md, attach them to the sweep's parent run, log the sequential sign test on the trial runs, and render the
summary for the terminal. `watch` repeats this while the sweep runs."""

from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from . import plots, tables
from .read import Reader
from .text import format_table, markdown_table, to_csv

SIGN_METRICS = ("aot_sign", "aot_sign_delta", "aot_sign_lo", "aot_sign_hi")


def build(reader: Reader, *, conf: float = 0.95, alpha: float = 0.05, n_boot: int = 2000) -> dict[str, Any]:
    """Everything the report holds, from one read of the sweep."""
    recs = reader.records(include_running=True)
    finished = [r for r in recs if r["finished"]]
    windows = {r["trial_id"]: w for r in finished if (w := reader.windows(r)) is not None}
    stopped = at_stop_steps(reader, finished, windows)
    pairs, orphans = tables.pair_rows(finished, windows, n_boot=n_boot, conf=conf)
    cells = tables.summarize(pairs, conf)
    by_id = {r["trial_id"]: r for r in recs}
    curve_of: dict[str, list[tuple[int, float]]] = {}
    token_curves = {}
    for p in pairs:
        fw, bw = by_id[p["fw_trial"]], by_id[p["bw_trial"]]
        curve_of[fw["trial_id"]], curve_of[bw["trial_id"]] = reader.curve(fw), reader.curve(bw)
        toks = reader.curve(fw, "tokens")
        if toks and toks[-1][0] > 0:
            token_curves[p["pair_key"]] = (curve_of[fw["trial_id"]], curve_of[bw["trial_id"]],
                                           toks[-1][1] / toks[-1][0])
    # final per-position losses of a stopped pair come from different steps: not comparable
    positions = {r["trial_id"]: pos for r in finished
                 if r["pair_key"] not in stopped and (pos := reader.positions(r)) is not None}
    sides: dict[str, dict[str, dict]] = {}
    for r in recs:
        sides.setdefault(r["pair_key"], {})[r["direction"]] = r
    histories = {k: (reader.window_history(s["forward"]), reader.window_history(s["backward"]))
                 for k, s in sides.items() if set(s) == {"forward", "backward"}}
    sequences = tables.sign_sequences(histories, alpha)
    return {
        "rows": finished,
        "running": [r for r in recs if not r["finished"]],
        "pairs": pairs,
        "orphans": orphans,
        "summary": cells,
        "trends": tables.trends(cells, conf),
        "token_trends": tables.token_trends(token_curves, conf),
        "signs": tables.sign_tests(pairs),
        "position_gaps": tables.position_gaps(pairs, positions),
        "sequences": sequences,
        "sequence_rows": [{"pair_key": k, **s.__dict__} for k, ss in sequences.items() for s in ss],
        "curves": curve_of,
        "sides": sides,
        "conf": conf,
        "alpha": alpha,
        "stopped": stopped,
    }


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


def update_signs(reader: Reader, alpha: float = 0.05, stop: Any | None = None) -> int:
    """Only the sequential sign test, on every pair with evaluations on both sides (running ones included), logged
    on the trial runs: what a running sweep refreshes between reports. With `stop` (a SignStopSpec) pairs whose
    sign is settled are asked to stop (`request_stops`). Returns how many new looks were logged."""
    sides: dict[str, dict[str, dict]] = {}
    for r in reader.records(include_running=True):
        sides.setdefault(r["pair_key"], {})[r["direction"]] = r
    sides = {k: s for k, s in sides.items() if set(s) == {"forward", "backward"}}
    histories = {k: (reader.window_history(s["forward"]), reader.window_history(s["backward"]))
                 for k, s in sides.items()}
    sequences = tables.sign_sequences(histories, alpha)
    n = log_sign_metrics(reader, {"sequences": sequences, "sides": sides})
    if stop is not None:
        request_stops(reader, sequences, sides, stop)
    return n


def request_stops(reader: Reader, sequences: dict[str, list], sides: dict[str, dict[str, dict]], stop: Any
                  ) -> dict[str, int]:
    """Tag both runs of every pair with a running side whose sign is settled (`tables.stop_step`) with that step
    (aot.stop_at); the trainers stop at their next evaluation and the report compares the pair there. A pair
    tagged on one side only (an interrupted write) gets the same step on the other. Returns the new requests."""
    from ..tracking import STOP_AT

    out = {}
    for key, states in sequences.items():
        pair = list(sides[key].values())
        have = [r["stop_at"] for r in pair if r.get("stop_at") is not None]
        if all(r["finished"] for r in pair) and not have:
            continue
        steps = max((r["steps"] for r in pair if r.get("steps")), default=None)
        at = min(have) if have else None if steps is None else tables.stop_step(
            states, looks=stop.looks, min_step=stop.after * steps)
        if at is None or len(have) == len(pair):
            continue
        for r in pair:
            if r.get("stop_at") is None:
                reader.client.set_tag(r["run_id"], STOP_AT, str(at))
                r["stop_at"] = at
        out[key] = at
    return out


def log_sign_metrics(reader: Reader, result: dict[str, Any]) -> int:
    """The sequential sign test's state at each look, on both trial runs of the pair (steps already logged are
    skipped, so `--watch` adds only new looks). Returns how many looks were logged."""
    from mlflow.entities import Metric

    n = 0
    now = int(time.time() * 1000)
    for key, states in result["sequences"].items():
        for side in result["sides"][key].values():
            have = {m.step for m in reader.client.get_metric_history(side["run_id"], "aot_sign")}
            batch = [Metric(name, float(v), now, s.step) for s in states if s.step not in have
                     for name, v in zip(SIGN_METRICS, (s.sign, s.delta, s.lo, s.hi))]
            if batch:
                reader.client.log_batch(side["run_id"], metrics=batch)
                n += len(batch) // len(SIGN_METRICS)
    return n


def write_files(result: dict[str, Any], out: Path, sweep: str, with_plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    tables_ = {
        "aot_pairs.csv": (tables.flat(result["pairs"]), _columns(tables.PAIR_COLUMNS, result["pairs"])),
        "aot_summary.csv": (tables.flat(result["summary"]), _columns(tables.SUMMARY_COLUMNS, result["summary"])),
        "aot_trends.csv": (result["trends"] + result["token_trends"], tables.TREND_COLUMNS),
        "aot_sign_tests.csv": (result["signs"], tables.SIGN_COLUMNS),
        "aot_sequential.csv": (result["sequence_rows"], tables.SEQUENCE_COLUMNS),
    }
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
        for axis in sorted({t["x"] for t in result["trends"]}):
            images += plots.delta_vs_axis(result["summary"], result["trends"], axis, out)
        images += plots.curves(result["pairs"], result["curves"], out)
        images += plots.position_gaps(result["summary"], result["position_gaps"], out)
    (out / "report.md").write_text(markdown(result, sweep, [p for p in images if p.suffix == ".png"]))
    return files + images + [out / "report.md"]


def _columns(base: list[str], rows: list[dict[str, Any]]) -> list[str]:
    extra = sorted({k for r in rows for k in (r.get("axes") or {}) if k not in base})
    return base + extra


def report(uri: str, sweep: str, out_dir: str | Path | None = None, log_to_parent: bool = True, *,
           conf: float = 0.95, alpha: float = 0.05, with_plots: bool = True, reader: Reader | None = None
           ) -> dict[str, Any]:
    """Read the sweep, write the report files under `out_dir` (and attach them to the parent run under
    `report/`), log the sequential sign test on the trial runs; returns the tables."""
    from ..tracking import experiment_id, find_parent

    own = reader is None
    reader = reader or Reader(uri, sweep)
    try:
        result = build(reader, conf=conf, alpha=alpha)
        result["sign_looks_logged"] = log_sign_metrics(reader, result) if log_to_parent else 0
        scratch = None
        if out_dir is None:
            scratch = Path(tempfile.mkdtemp(prefix="aot-report-"))
        out = Path(out_dir) if out_dir is not None else scratch
        files = write_files(result, out, sweep, with_plots) if (result["pairs"] or result["sequences"]) else []
        result["files"] = files if scratch is None else []
        if log_to_parent and files:
            exp_id = experiment_id(uri, sweep, create=False)
            parent = find_parent(uri, exp_id, sweep) if exp_id else None
            if parent is not None:
                for f in files:
                    reader.client.log_artifact(parent.info.run_id, str(f), "report")
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        return result
    finally:
        if own:
            reader.close()


def markdown(result: dict[str, Any], sweep: str, images: list[Path]) -> str:
    conf = int(result["conf"] * 100)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"# Arrow of Time report: {sweep}", "",
             f"{when}. {len(result['rows'])} finished trials, {len(result['running'])} running; "
             f"{len(result['pairs'])} forward/backward pairs. delta = (L_bw - L_fw) / (0.5 (L_bw + L_fw)), "
             f"nats/token on the same validation windows; delta > 0: the forward direction is easier. Intervals "
             f"are {conf}%: over validation windows (paired bootstrap) for a pair, over seeds (t) for a cell with "
             f"several seeds.", ""]
    lang = ["language"] if any(p.get("language") for p in result["pairs"]) else []
    axes = sorted({k for p in result["pairs"] for k in p.get("axes", {}) if "." in k})
    if result["pairs"]:
        parts += ["## Pairs", "", markdown_table(tables.flat(result["pairs"]), [
            "dataset", *lang, "arch", "model", "context_length", *axes, "seed", "L_fw", "L_bw", "delta", "delta_lo",
            "delta_hi"]), ""]
        parts += ["## Cells (mean over seeds)", "", markdown_table(tables.flat(result["summary"]), [
            "dataset", *lang, "arch", "model", "context_length", *axes, "n_seeds", "n_params", "delta_mean",
            "delta_lo", "delta_hi", "delta_std"]), ""]
    if result["trends"] or result["token_trends"]:
        parts += ["## Trends", "", "Slope of delta per 10x of the axis (log10 scale) or per unit (linear), with its "
                  f"{conf}% t interval; points are cell means. Along training (x = tokens) points come from one run "
                  "and are not independent: that interval is descriptive.", "",
                  markdown_table(result["trends"] + result["token_trends"], tables.TREND_COLUMNS), ""]
    if result["signs"]:
        parts += ["## Sign test", "", "Pairs with delta > 0 and < 0 per language (or dataset), exact two-sided "
                  "binomial p-value.", "", markdown_table(result["signs"], tables.SIGN_COLUMNS), ""]
    if result["sequences"]:
        rows = [{"pair_key": k, "step": ss[-1].step, "delta": ss[-1].delta, "lo": ss[-1].lo, "hi": ss[-1].hi,
                 "established_at": ss[-1].established_at, "sign": _sign_word(ss)} for k, ss in result["sequences"].items()]
        parts += ["## Early sign detection", "", f"Sequential test at level alpha = {result['alpha']} over all "
                  "evaluations (alpha spent as 6 alpha / (pi^2 k^2) at look k): once established, the sign is "
                  "wrong with probability below alpha.", "",
                  markdown_table(rows, ["pair_key", "step", "delta", "lo", "hi", "sign", "established_at"]), ""]
    if result.get("stopped"):
        parts += [f"Stopped once their sign was established (compared at that step, column stopped_at; no "
                  f"per-position gap): {', '.join(f'{k} at step {v}' for k, v in sorted(result['stopped'].items()))}",
                  ""]
    if result["orphans"]:
        parts += [f"Finished trials without a finished partner: {', '.join(result['orphans'])}", ""]
    if images:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    return "\n".join(parts)


def _sign_word(states: list) -> str:
    last = states[-1]
    if not last.sign:
        return "not established"
    word = "forward easier" if last.sign > 0 else "backward easier"
    flipped = any(s.sign and s.sign != last.sign for s in states)
    return word + (" (the other sign held earlier in training)" if flipped else "")


def render(result: dict[str, Any]) -> str:
    """The summary for the terminal."""
    parts = []
    if result["pairs"]:
        lang = ["language"] if any(p.get("language") for p in result["pairs"]) else []
        axes = sorted({k for p in result["pairs"] for k in p.get("axes", {}) if "." in k})
        arch = ["arch"] if len({p.get("arch") for p in result["pairs"]}) > 1 else []
        parts.append("Arrow of Time per pair (delta = (L_bw - L_fw) / mean; > 0: forward is easier; "
                     f"[lo, hi] {int(result['conf'] * 100)}% over windows)")
        parts.append(format_table(tables.flat(result["pairs"]), [
            "dataset", *lang, *arch, "model", "context_length", *axes, "seed", "L_fw", "L_bw", "delta", "delta_lo",
            "delta_hi"]))
        parts += ["", "Mean over seeds"]
        parts.append(format_table(tables.flat(result["summary"]), [
            "dataset", *lang, *arch, "model", "context_length", *axes, "n_seeds", "L_fw_mean", "L_bw_mean",
            "delta_mean", "delta_lo", "delta_hi"]))
        if result["trends"]:
            parts += ["", "Trends (slope of delta per 10x, or per unit when linear)"]
            parts.append(format_table(result["trends"], ["x", "scale", "group", "n", "slope", "slope_lo", "slope_hi",
                                                         "p_value"]))
        if result.get("stopped"):
            parts += ["", f"{len(result['stopped'])} pair(s) stopped once their sign was established, compared at "
                          "that step: " + ", ".join(f"{k} at {v}" for k, v in sorted(result["stopped"].items()))]
        if len(result["pairs"]) > 1:
            parts += ["", "Sign test"]
            parts.append(format_table(result["signs"], tables.SIGN_COLUMNS))
    else:
        parts.append("no finished forward/backward pair yet")
    established = {k: ss for k, ss in result.get("sequences", {}).items() if ss[-1].sign}
    if result.get("sequences"):
        parts.append(f"\nEarly sign detection (alpha {result['alpha']}): {len(established)} of "
                     f"{len(result['sequences'])} pairs have an established sign at their latest evaluation"
                     + "".join(f"\n  {k}: {_sign_word(ss)} at step {ss[-1].step}, since step {ss[-1].established_at}"
                               for k, ss in established.items()))
    if result["orphans"]:
        parts.append(f"{len(result['orphans'])} finished trial(s) without a finished partner: "
                     f"{', '.join(result['orphans'])}")
    return "\n".join(parts)


def watch(uri: str, sweep: str, out_dir: str | Path | None, interval: float, say: Callable[[str], None] = print,
          **kw: Any) -> dict[str, Any]:
    """Re-render every `interval` seconds while the sweep's parent run is RUNNING; a last render after it ends."""
    from ..tracking import experiment_id, find_parent

    reader = Reader(uri, sweep)
    try:
        while True:
            result = report(uri, sweep, out_dir, reader=reader, **kw)
            say(f"--- {time.strftime('%H:%M:%S')} ---\n{render(result)}")
            exp_id = experiment_id(uri, sweep, create=False)
            parent = find_parent(uri, exp_id, sweep) if exp_id else None
            if parent is None or parent.info.status != "RUNNING":
                return result
            time.sleep(interval)
    finally:
        reader.close()
