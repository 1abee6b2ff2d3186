"""Write layer of the report: the report's content (`assemble.build`, from one read of the sweep) drawn as plots
and the paper's figures, written as CSVs and report.md (its text comes from `text`), attached to the sweep's
parent run, and the sequential sign test over seeds logged on the trial runs (`aot_ray.signs`). `watch` repeats
this while the sweep runs."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .. import signs
from ..errors import disk_full
from ..tracking import NOTE, SweepRuns, sign_rule
from ..tracking.store import store_writable
from . import levels, paper_figures, sweep_plots, tables
from . import reference as reference_
from .assemble import build
from .html_page import page
from .read import Reader
from .text import headline, markdown, parent_info, render, to_csv


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
    if result.get("order_losses"):
        tables_["aot_orders.csv"] = (result["order_losses"], tables.ORDER_LOSS_COLUMNS)
    if result.get("joint"):  # one model on both directions: its own table, never pooled with the pairs
        tables_["aot_joint.csv"] = (tables.flat(result["joint"]), _columns(["kind", *tables.PAIR_COLUMNS],
                                                                           result["joint"]))
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
        drawn = paper_figures.paper_figures(result, out)  # the paper's figures where the design matches one
        result["figures"] = {f.name: f.points for f in drawn}
        images += [p for f in drawn for p in f.files]
        covered = {"n_params", "context_length"} & {t["x"] for t in result["trends"]} if drawn else set()
        for axis in sorted({t["x"] for t in result["trends"]} - covered):
            images += sweep_plots.delta_vs_axis(result["summary"], result["trends"], axis, out)
        images += sweep_plots.curves(result["pairs"], result["curves"], out)
        images += sweep_plots.position_gaps(result["summary"], result["position_gaps"], out)
        images += sweep_plots.order_losses(result.get("order_losses", []), out)
    text = markdown(result, sweep, [p for p in images if p.suffix == ".png"])
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(page(text, out, f"Arrow of Time report: {sweep}"))
    return files + images + [out / "report.md", out / "report.html"]


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
    chosen, others = SweepRuns(uri, sweep, parent).chosen()
    reader = reader or Reader(uri, sweep, chosen.info.run_id if chosen is not None else None)
    try:
        rule = (sign_rule(chosen) if chosen is not None else None) or (signs.DEFAULT.alpha, signs.DEFAULT.after)
        result = build(reader, conf=conf, alpha=alpha or rule[0], after=rule[1], overfit=overfit,
                       reference=reference, versions=versions)
        result["parent"] = None if chosen is None else parent_info(chosen)
        result["experiment_id"] = None if chosen is None else chosen.info.experiment_id
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
        wanted = result["pairs"] or result["joint"] or result["sequences"] or result["failed_cells"]
        try:
            files = write_files(result, out, sweep, with_plots) if wanted else []
        except OSError as e:  # a full disk (at the end of a sweep, say): the report is still printed, and says so
            full = disk_full(e, str(out))
            if full is None:
                raise
            files = []
            result["notes"].append(f"the report's files were not written: {full}")
        result["files"] = files if scratch is None else []
        if writable and files and chosen is not None:
            for f in files:
                reader.client.log_artifact(chosen.info.run_id, str(f), "report")
            # the parent run's description in the MLflow UI: the headline, with the level each claim rests on
            reader.client.set_tag(chosen.info.run_id, NOTE, headline(result, sweep))
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        return result
    finally:
        if own:
            reader.close()


def watch(uri: str, sweep: str, out_dir: str | Path | None, interval: float, say: Callable[[str], None] = print,
          parent: str | None = None, **kw: Any) -> dict[str, Any]:
    """Re-render every `interval` seconds while the sweep's parent run is RUNNING; a last render after it ends."""
    chosen, _ = SweepRuns(uri, sweep, parent).chosen()
    reader = Reader(uri, sweep, chosen.info.run_id if chosen is not None else None)
    try:
        while True:
            result = report(uri, sweep, out_dir, reader=reader, parent=parent, **kw)
            say(f"--- {time.strftime('%H:%M:%S')} ---\n{render(result)}")
            now, _ = SweepRuns(uri, sweep, parent).chosen()
            if now is None or now.info.status != "RUNNING":
                return result
            time.sleep(interval)
    finally:
        reader.close()
