"""Every text form of the report: aligned plain text for the terminal (`render`), report.md (`markdown`), CSV,
and the plain-words guide to reading it. Nothing here reads or writes."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import math
from pathlib import Path
from typing import Any

from .. import signs
from . import levels, tables


def fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return "" if v is None else str(v)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def reading(conf: int, alpha: float) -> list[str]:
    """What every number of the report means, in plain words (printed with the report and in report.md)."""
    return [
        "How to read it:",
        "- delta > 0: the forward model reached the lower loss (forward easier); delta < 0: backward easier.",
        f"- A pair's [lo, hi] ({conf}%, over its validation windows) says how precisely its two trained models were",
        "  compared. It is not a replication: another seed can give another sign, so it never decides a direction.",
        f"- A cell's [lo, hi] ({conf}%, over seeds) is the replication: `direction` names a sign only when that",
        "  interval excludes 0; with one seed, or an interval that contains 0, it is `undetermined`.",
        f"- The sequential test (alpha {alpha:g}) states a cell's sign during training from its seeds; once stated,",
        "  it is wrong (or stated for a cell with no arrow) with probability below alpha, however often it is read.",
        "- Levels: every claim names what replicates it. Over seeds, within a cell (above); across the cells of a",
        "  categorical axis (languages, datasets, architectures), each cell counted once with its mean over seeds: a",
        "  sign test and an interval over the cells; along a numeric axis (size, compute, context): the trend over",
        "  cell means. A one-seed sweep has no replication within a cell: its claims rest on the other two.",
        "- overfit: the pair's delta was measured on a model whose validation loss rose from its best, or that saw",
        "  its training split many times; it then measures generalisation more than the arrow of a trained model.",
        "- null control: a cell with no arrow by construction (linear, A = I): its delta is the noise floor of the",
        "  group beside it. For text, the reversed-characters tokenizer control shows how much of the gap the",
        "  tokenizer's own direction makes.",
    ]


def _columns_of(result: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    pairs = result["pairs"]
    # the windows' design beside the dataset where any pair was trained one line per window (the authors')
    lang = (["windows"] if any(p.get("windows") == "line" for p in pairs) else []) + \
        (["language"] if any(p.get("language") for p in pairs) else [])
    if any(p.get("order", "backward") != "backward" for p in pairs):  # forward against other orders than backward
        lang = ["order", *lang]
    axes = sorted({k for p in pairs for k in p.get("axes", {}) if "." in k})
    arch = ["arch"] if len({p.get("arch") for p in pairs}) > 1 else []
    return lang, axes, arch


def sequence_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The latest look of every cell, in words."""
    return [{"cell_key": k, "step": ss[-1].step, "seeds": ss[-1].n, "delta": ss[-1].delta, "lo": ss[-1].lo,
             "hi": ss[-1].hi, "sign": signs.word(ss, signs.order_of(k)), "since": ss[-1].established_at}
            for k, ss in result["sequences"].items()]


def _pair_columns(result: dict[str, Any]) -> list[str]:
    lang, axes, arch = _columns_of(result)
    overfit = ["overfit"] if any(p.get("overfit") for p in result["pairs"]) else []
    return ["dataset", *lang, *arch, "model", "context_length", *axes, "seed", "L_fw", "L_bw", "delta", "delta_lo",
            "delta_hi", *overfit]


def _cell_columns(result: dict[str, Any], means: bool = False) -> list[str]:
    lang, axes, arch = _columns_of(result)
    null = ["null_delta", "null_lo", "null_hi"] if any("null_delta" in c for c in result["summary"]) else []
    return ["dataset", *lang, *arch, "model", "context_length", *axes, "n_seeds",
            *(["L_fw_mean", "L_bw_mean"] if means else []), "delta_mean", "delta_lo", "delta_hi", "direction", *null]


def failed_lines(result: dict[str, Any]) -> list[str]:
    """One line per cell with a failed trial, cells missing from every table first (no trial of theirs finished
    or runs): which trials failed and the first one's error."""
    out = []
    for c in result.get("failed_cells", []):
        n = len(c["trials"])
        head = (f"cell {c['cell_key']}: every trial failed ({n}), so it is in no table" if c["lost"]
                else f"cell {c['cell_key']}: {n} trial(s) failed")
        out.append(f"{head}: {', '.join(c['trials'])}" + (f"; {c['error']}" if c.get("error") else "")
                   + "; `aot-ray run --restart-errored` trains them again")
    return out


def level_lines(result: dict[str, Any]) -> list[str]:
    """What each claim rests on, one statement per line, each naming its level."""
    out = []
    within = levels.within_statement(result["summary"])
    if within:
        out.append(within)
    out += [a["statement"] for a in result.get("across", [])]
    out += [levels.trend_statement(t) for t in result["trends"]]
    return out


def sign_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-cell sign test over seeds, without cells of a single pair (no replication to test)."""
    return [r for r in result["signs"] if r["positive"] + r["negative"] >= 2]


def _order_markdown(result: dict[str, Any]) -> list[str]:
    lines = order_loss_lines(result, int(result["conf"] * 100))
    if not lines:
        return []
    return ["## Each order's final loss, ranked", "", lines[1], "",
            markdown_table(tables.flat(result["order_losses"]), tables.ORDER_LOSS_COLUMNS), ""]


def _joint_markdown(result: dict[str, Any]) -> list[str]:
    if not result.get("joint"):
        return []
    lines = joint_lines(result, int(result["conf"] * 100))
    return ["## One model, both directions (joint)", "", lines[1], "",
            markdown_table(tables.flat(result["joint"]), _joint_columns(result)), "",
            markdown_table(tables.flat(result["joint_summary"]), _joint_columns(result, cells=True)), ""]


def markdown(result: dict[str, Any], sweep: str, images: list[Path]) -> str:
    conf = int(result["conf"] * 100)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"# Arrow of Time report: {sweep}", "",
             f"{when}. {len(result['rows'])} finished trials, {len(result['running'])} running; "
             f"{len(result['pairs'])} forward/backward pairs. delta = (L_bw - L_fw) / (0.5 (L_bw + L_fw)), "
             f"nats/token on the same validation windows.", "",
             *([parent_text(result["parent"], result.get("other_parents", [])) + ".", ""] if "parent" in result
               else [])]
    if result["pairs"]:
        parts += ["## Replication: what each claim rests on", "",
                  *[f"- {line}" for line in level_lines(result)], ""]
        if result.get("references"):
            parts += ["## The paper's numbers beside ours", "",
                      *[f"- {r['statement']}" for r in result["references"]], "",
                      "Paper values were read off its figures (aot_ray/aggregate/paper.yaml names each source); "
                      "`report --reference none` leaves this out.", ""]
        parts += ["## Pairs", "", f"[delta_lo, delta_hi]: {conf}% over this pair's validation windows (paired "
                  "bootstrap); it decides no direction.", "",
                  markdown_table(tables.flat(result["pairs"]), _pair_columns(result)), ""]
        parts += ["## Cells (mean over seeds)", "", f"[delta_lo, delta_hi]: {conf}% t interval over seeds; "
                  "`direction` states a sign only when it excludes 0.", "",
                  markdown_table(tables.flat(result["summary"]), _cell_columns(result) + ["delta_std"]), ""]
    parts += _order_markdown(result)
    parts += _joint_markdown(result)
    if result["trends"] or result["token_trends"]:
        parts += ["## Trends", "", "Slope of delta per 10x of the axis (log10 scale) or per unit (linear), with its "
                  f"{conf}% t interval; points are cell means. Along training (x = tokens) points come from one run "
                  "and are not independent: that interval is descriptive.", "",
                  markdown_table(result["trends"] + result["token_trends"], tables.TREND_COLUMNS), ""]
    if result["signs"]:
        note = levels.within_sign_note(result["signs"])
        parts += ["## Sign test within a cell, over seeds", "", "Pairs (each one seed of the cell: seeds are the "
                  "replication) with delta > 0 and < 0, exact two-sided binomial p-value. Across languages and other "
                  "cells, see Replication above.", ""]
        if sign_rows(result):
            parts += [markdown_table(sign_rows(result), tables.SIGN_COLUMNS), ""]
        if note:
            parts += [note + ".", ""]
    if result["sequences"]:
        parts += ["## Sign during training (sequential test over seeds)", "", f"Per cell, at level alpha = "
                  f"{result['alpha']} over all its looks (alpha spent as 6 alpha / (pi^2 k^2) at look k, a t interval "
                  "over the seeds' deltas at each look): a stated sign is wrong with probability below alpha.", "",
                  markdown_table(sequence_rows(result), ["cell_key", "step", "seeds", "delta", "lo", "hi", "sign",
                                                         "since"]), ""]
    if result.get("stopped"):
        parts += [f"Stopped once their cell's sign was established (compared at that step, column stopped_at; no "
                  f"per-position gap): {', '.join(f'{k} at step {v}' for k, v in sorted(result['stopped'].items()))}",
                  ""]
    if result["orphans"]:
        parts += [f"Finished trials without a finished partner: {', '.join(result['orphans'])}", ""]
    if result.get("failed_cells"):
        parts += ["## Failed trials", "", *[f"- {line}" for line in failed_lines(result)], ""]
    parts += [*reading(conf, result["alpha"]), ""]  # after what the sweep states: the headline comes first
    if images:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    return "\n".join(parts)


def _cell_label(c: dict[str, Any]) -> str:
    """A cell in a few words: dataset, language, model, context, its other axes, the order compared."""
    axes = [f"{k.rpartition('.')[2]} {v}" for k, v in sorted((c.get("axes") or {}).items())
            if k not in ("dataset", "language", "model", "context_length")]
    order = c.get("order", "backward")
    return ", ".join([c["dataset"], *([c["language"]] if c.get("language") else []), c["model"],
                      f"context {c['context_length']}", *axes, *([f"forward vs {order}"] if order not in
                                                                 ("backward", "joint") else [])])


def _pct(x: Any) -> str:
    return f"{x:+.1%}" if isinstance(x, (int, float)) and x == x else "n/a"


def headline(result: dict[str, Any], sweep: str, most: int = 30) -> str:
    """The parent run's description in the MLflow UI (markdown): what the sweep states, each claim with the level
    it rests on, each cell's delta over seeds with its direction, and where the full report is."""
    conf = int(result["conf"] * 100)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = [f"**Arrow of Time: {sweep}**. Report of {when}: {len(result['rows'])} finished trials, "
           f"{len(result['running'])} running, {len(result['pairs'])} pairs. delta = (L_bw - L_fw) / mean: > 0, "
           f"forward is easier.", ""]
    if result["pairs"]:
        out += ["**What each claim rests on**", "", *[f"- {line}" for line in level_lines(result)], ""]
        out += [f"**Cells**: mean delta over seeds, [lo, hi] {conf}% over seeds", ""]
        out += [f"- {_cell_label(c)}: {_pct(c['delta_mean'])} [{_pct(c.get('delta_lo'))}, {_pct(c.get('delta_hi'))}]"
                f", {c['n_seeds']} seed(s): **{c['direction']}**" for c in result["summary"][:most]]
        if len(result["summary"]) > most:
            out.append(f"- and {len(result['summary']) - most} more cells: see the report")
        out.append("")
    for c in result.get("joint_summary", [])[:most]:
        out.append(f"- one model, both directions: {_cell_label(c)}: {_pct(c['delta_mean'])}, **{c['direction']}**")
    out += ["", "The full report, figures inline: artifacts `report/report.html` (also `report.md` and the CSVs)."]
    return "\n".join(out)


def parent_info(run: Any) -> dict[str, Any]:
    """What the report says of a parent run: id, start, status."""
    return {"run_id": run.info.run_id, "status": run.info.status,
            "start": _dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")}


def parent_text(chosen: dict[str, Any] | None, others: list[dict[str, Any]]) -> str:
    """Which parent run (one per `--fresh` start) was read, and the others that could have been."""
    if chosen is None:
        return "no parent run of this sweep yet"
    line = f"parent run {chosen['run_id']} (started {chosen['start']}, {chosen['status']})"
    if others:
        shown = ", ".join(f"{r['run_id']} (started {r['start']}, {r['status']})" for r in others[:5])
        line += (f"; the experiment holds {len(others)} other parent run(s), newest first: {shown}"
                 f"{', ...' if len(others) > 5 else ''}; read another with --parent RUN_ID")
    return line


def _joint_columns(result: dict[str, Any], cells: bool = False) -> list[str]:
    lang, axes, arch = _columns_of({"pairs": result["joint"]})
    tail = ["n_seeds", "delta_mean", "delta_lo", "delta_hi", "direction"] if cells else \
        ["seed", "L_fw", "L_bw", "delta", "delta_lo", "delta_hi"]
    return ["dataset", *lang, *arch, "model", "context_length", *axes, *tail]


def joint_lines(result: dict[str, Any], conf: int) -> list[str]:
    """The joint models' section: one model, both directions, its own kind of row."""
    if not result.get("joint"):
        return []
    return ["", "One model, both directions (joint: one model per seed trained on forward and backward windows, "
                f"delta between its own two losses; [lo, hi] {conf}% over windows, then over seeds; never pooled "
                "with two-model pairs)",
            format_table(tables.flat(result["joint"]), _joint_columns(result)),
            format_table(tables.flat(result["joint_summary"]), _joint_columns(result, cells=True))]


def order_loss_lines(result: dict[str, Any], conf: int) -> list[str]:
    """Each order's final loss per cell, ranked, with the interval over seeds and what its comparison with forward
    states: the ranking's claims rest on seeds within the cell."""
    if not result.get("order_losses"):
        return []
    return ["", f"Final loss of each order, ranked within its cell (mean over seeds, [lo, hi] {conf}% over seeds; "
                "vs_forward: what the cell's comparison with forward states over seeds, the level a rank rests on)",
            format_table(tables.flat(result["order_losses"]), tables.ORDER_LOSS_COLUMNS)]


def render(result: dict[str, Any]) -> str:
    """The summary for the terminal."""
    conf = int(result["conf"] * 100)
    parts = []
    if "parent" in result:
        parts += [parent_text(result["parent"], result.get("other_parents", [])), ""]
    if result["pairs"]:
        parts.append("Arrow of Time per pair (delta = (L_bw - L_fw) / mean; > 0: forward is easier; "
                     f"[lo, hi] {conf}% over this pair's windows: precision, not replication)")
        parts.append(format_table(tables.flat(result["pairs"]), _pair_columns(result)))
        parts += ["", f"Mean over seeds ([lo, hi] {conf}% over seeds; direction only where it excludes 0)"]
        parts.append(format_table(tables.flat(result["summary"]), _cell_columns(result, means=True)))
        parts += ["", "Replication (what each claim rests on):", *[f"  {line}" for line in level_lines(result)]]
        if result.get("references"):
            parts += ["", "The paper's numbers beside ours (read off its figures; --reference none to leave out):",
                      *[f"  {r['statement']}" for r in result["references"]]]
        if result["trends"]:
            parts += ["", "Trends (slope of delta per 10x, or per unit when linear)"]
            parts.append(format_table(result["trends"], ["x", "scale", "group", "n", "slope", "slope_lo", "slope_hi",
                                                         "p_value"]))
        if result.get("stopped"):
            parts += ["", f"{len(result['stopped'])} pair(s) stopped once their cell's sign was established, "
                          "compared at that step: " + ", ".join(f"{k} at {v}" for k, v in
                                                                sorted(result["stopped"].items()))]
        if sign_rows(result):
            parts += ["", "Sign test within a cell, over seeds (unit: a pair, i.e. one seed of the cell)"]
            parts.append(format_table(sign_rows(result), tables.SIGN_COLUMNS))
        if levels.within_sign_note(result["signs"]):
            parts += ["", levels.within_sign_note(result["signs"])]
    else:
        parts.append("no finished forward/backward pair yet")
    parts += order_loss_lines(result, conf)
    parts += joint_lines(result, conf)
    if result.get("sequences"):
        rows = sequence_rows(result)
        stated = sum(r["sign"].startswith(("forward", "backward")) or " easier" in r["sign"] for r in rows)
        parts += ["", f"Sign during training (sequential test over seeds, alpha {result['alpha']}): {stated} of "
                      f"{len(rows)} cells have a stated sign at their latest look"]
        parts.append(format_table(rows, ["cell_key", "step", "seeds", "delta", "lo", "hi", "sign", "since"]))
    if result["orphans"]:
        parts.append(f"{len(result['orphans'])} finished trial(s) without a finished partner: "
                     f"{', '.join(result['orphans'])}")
    parts += [f"failed: {line}" for line in failed_lines(result)]
    if result["pairs"]:
        parts += ["", *reading(conf, result["alpha"])]
    parts += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(parts)
