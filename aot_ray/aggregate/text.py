"""Text forms of the report's tables: aligned plain text for the terminal, CSV, and markdown."""

from __future__ import annotations

import csv
import io
import math
from typing import Any


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
        "- overfit: the pair's delta was measured on a model whose validation loss rose from its best, or that saw",
        "  its training split many times; it then measures generalisation more than the arrow of a trained model.",
        "- null control: a cell with no arrow by construction (linear, A = I): its delta is the noise floor of the",
        "  group beside it. For text, the reversed-characters tokenizer control shows how much of the gap the",
        "  tokenizer's own direction makes.",
    ]
