"""The AoT report, layered: `read` (MLflow -> tidy records and per-window losses), `tables` (pure: pairs with
intervals, seed means, trends, sign tests), `levels` (replication across axes) and `reference` (the paper's
values beside ours), `assemble` (all of it from one read), `sweep_plots` and `paper_figures`, `text` (the terminal summary,
report.md, CSV), and `reporting` (the report made: files, MLflow artifacts; `watch` remakes it)."""

from .tables import PAIR_COLUMNS, SUMMARY_COLUMNS, delta, pair_rows, summarize
from .text import format_table, render, to_csv
from .reporting import report, watch

__all__ = ["PAIR_COLUMNS", "SUMMARY_COLUMNS", "delta", "format_table", "pair_rows", "render", "report",
           "summarize", "to_csv", "watch"]
