"""The AoT report: MLflow runs -> tidy rows (read) -> forward/backward pairs and seed means (pure) -> CSV/table.

delta = (L_bw - L_fw) / (0.5 (L_bw + L_fw)), losses in nats/token on the same validation windows;
delta > 0 means the forward direction is easier.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

PAIR_COLUMNS = ["pair_key", "cell_key", "dataset", "language", "model", "context_length", "seed", "n_params",
                "L_fw", "L_bw", "delta", "fw_trial", "bw_trial"]
SUMMARY_COLUMNS = ["cell_key", "dataset", "language", "model", "context_length", "n_seeds", "n_params",
                   "L_fw_mean", "L_bw_mean", "delta_mean", "delta_std", "delta_min", "delta_max"]


def delta(l_fw: float, l_bw: float) -> float:
    return (l_bw - l_fw) / (0.5 * (l_bw + l_fw))


# ---------------------------------------------------------------- read


def read_rows(uri: str, sweep: str) -> list[dict[str, Any]]:
    """One tidy row per finished trial run of the sweep (newest run wins if a trial id repeats)."""
    from .tracking import trial_runs

    rows: dict[str, dict[str, Any]] = {}
    for run in trial_runs(uri, sweep, status="FINISHED"):  # newest first
        tags, metrics = run.data.tags, run.data.metrics
        tid = tags.get("trial_id")
        if tid in rows:
            continue
        loss = metrics.get("final_val_loss", metrics.get("val_loss"))
        rows[tid] = {
            "trial_id": tid,
            "run_id": run.info.run_id,
            **{k: tags.get(k) for k in ("pair_key", "cell_key", "direction", "dataset", "language", "model")},
            "context_length": int(tags.get("context_length", 0)),
            "seed": int(tags.get("seed", 0)),
            "n_params": int(metrics["n_params"]) if "n_params" in metrics else None,
            "val_loss": loss,
        }
    return list(rows.values())


# ---------------------------------------------------------------- pure


def pair_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(complete pairs, trial ids whose partner is missing), pairs sorted by dataset, model, context, seed."""
    by_pair: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("val_loss") is None or not math.isfinite(r["val_loss"]):
            continue
        by_pair[r["pair_key"]][r["direction"]] = r
    pairs, orphans = [], []
    for key, sides in by_pair.items():
        if set(sides) != {"forward", "backward"}:
            orphans.extend(s["trial_id"] for s in sides.values())
            continue
        fw, bw = sides["forward"], sides["backward"]
        pairs.append({
            "pair_key": key,
            "cell_key": fw["cell_key"],
            "dataset": fw["dataset"],
            "language": fw.get("language"),
            "model": fw["model"],
            "context_length": fw["context_length"],
            "seed": fw["seed"],
            "n_params": fw["n_params"],
            "L_fw": fw["val_loss"],
            "L_bw": bw["val_loss"],
            "delta": delta(fw["val_loss"], bw["val_loss"]),
            "fw_trial": fw["trial_id"],
            "bw_trial": bw["trial_id"],
        })
    pairs.sort(key=lambda p: (p["dataset"], p.get("language") or "", p["model"], p["context_length"], p["cell_key"],
                              p["seed"]))
    return pairs, sorted(orphans)


def summarize(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per cell (everything but seed and direction equal)."""
    cells: dict[str, list[dict]] = defaultdict(list)
    for p in pairs:
        cells[p["cell_key"]].append(p)
    out = []
    for key, ps in cells.items():
        ds = [p["delta"] for p in ps]
        out.append({
            "cell_key": key,
            "dataset": ps[0]["dataset"],
            "language": ps[0].get("language"),
            "model": ps[0]["model"],
            "context_length": ps[0]["context_length"],
            "n_seeds": len(ps),
            "n_params": ps[0]["n_params"],
            "L_fw_mean": statistics.fmean(p["L_fw"] for p in ps),
            "L_bw_mean": statistics.fmean(p["L_bw"] for p in ps),
            "delta_mean": statistics.fmean(ds),
            "delta_std": statistics.stdev(ds) if len(ds) > 1 else float("nan"),
            "delta_min": min(ds),
            "delta_max": max(ds),
        })
    out.sort(key=lambda c: (c["dataset"], c.get("language") or "", c["model"], c["context_length"], c["cell_key"]))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return "" if v is None else str(v)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------- write


def report(uri: str, sweep: str, out_dir: str | Path | None = None, log_to_parent: bool = True) -> dict[str, Any]:
    """Read, pair, summarize; write `aot_pairs.csv` and `aot_summary.csv`; attach them to the parent run."""
    from .tracking import client, experiment_id, find_parent

    rows = read_rows(uri, sweep)
    pairs, orphans = pair_rows(rows)
    summary = summarize(pairs)
    files = {"aot_pairs.csv": to_csv(pairs, PAIR_COLUMNS), "aot_summary.csv": to_csv(summary, SUMMARY_COLUMNS)}
    written = []
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
            written.append(out / name)
    if log_to_parent and pairs:
        exp_id = experiment_id(uri, sweep, create=False)
        parent = find_parent(uri, exp_id, sweep) if exp_id else None
        if parent is not None:
            c = client(uri)
            for name, text in files.items():
                c.log_text(parent.info.run_id, text, f"report/{name}")
    return {"rows": rows, "pairs": pairs, "orphans": orphans, "summary": summary, "files": written}


def render(result: dict[str, Any]) -> str:
    parts = []
    if result["pairs"]:
        parts.append("Arrow of Time per pair (delta = (L_bw - L_fw) / mean; > 0: forward is easier)")
        lang = ["language"] if any(p.get("language") for p in result["pairs"]) else []
        parts.append(format_table(result["pairs"], ["dataset", *lang, "model", "context_length", "seed", "L_fw", "L_bw",
                                                    "delta"]))
        parts.append("")
        parts.append("Mean over seeds")
        parts.append(format_table(result["summary"], ["dataset", *lang, "model", "context_length", "n_seeds", "L_fw_mean",
                                                      "L_bw_mean", "delta_mean", "delta_std"]))
    else:
        parts.append("no finished forward/backward pair yet")
    if result["orphans"]:
        parts.append(f"{len(result['orphans'])} finished trial(s) without a finished partner: {', '.join(result['orphans'])}")
    return "\n".join(parts)
