"""The commands' core: what `plan`, `prepare`, `run`, `status` and `report` do with a resolved sweep, what they
print and their exit codes. The command line (`aot_ray.cli`) and the cluster entries (a Slurm job, a cluster's
head) parse their own arguments, resolve the sweep once (`resolved.resolve`) and call these."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable

from ..aggregate import format_table, render, report, watch
from ..aggregate.text import parent_info, parent_text
from ..errors import AotError
from ..execution.interrupt import terminable
from ..tracking.lease import holder
from ..tracking.store import check_reachable, sqlite_path, store_exists, ui_hint
from .options import RunOptions
from .plan import plan
from .plan_text import plan_text
from .prepare import prepare_local
from .resolved import ResolvedSweep
from .status import status

STATES = ("TERMINATED", "RUNNING", "ERROR", "INTERRUPTED", "PENDING")
REPORT_TABLES = ("pairs", "summary", "joint", "joint_summary", "trends", "token_trends", "across", "references",
                 "signs", "sequence_rows")


def plan_command(sweep: ResolvedSweep, as_json: bool = False) -> int:
    """`aot-ray plan`: the dry run of `run`; exit 2 when a trial cannot fit its GPU."""
    result = plan(sweep)
    print(json.dumps(json_safe(result["trials"]), indent=2, allow_nan=False) if as_json
          else plan_text(result, sweep.spec))
    if result["unfit"]:
        print(f"error: {result['unfit']}", file=sys.stderr)
        return 2
    return 0


def prepare_command(sweep: ResolvedSweep) -> int:
    prepare_local(sweep, progress=sys.stderr.isatty())
    return 0


def run_command(sweep: ResolvedSweep, options: RunOptions) -> int:
    """`aot-ray run`, a Slurm job's and a head's driver: the sweep, its report, exit 1 when a trial failed."""
    from .drive import run  # torch and Ray's modules: a run's, not every command's

    print(f"sweep {sweep.name}: tracking {sweep.uri}, storage {sweep.storage}")
    with terminable():  # SIGTERM, like Ctrl-C, at any moment: the driver's clean-up runs
        out = run(sweep, options)
    print()
    print(render(out.report))
    for f in out.report["files"]:
        print(f"wrote {f}")
    print(ui_hint(sweep.uri, sweep.name, out.report.get("experiment_id")))
    for o in out.failed:
        print(f"trial {o.trial_id} failed: {o.error}", file=sys.stderr)
    return 1 if out.failed else 0


def status_command(sweep: ResolvedSweep, as_json: bool = False) -> int:
    check_reachable(sweep.uri, write=False)  # an unreachable or invalid store is an error, not a sweep not run
    rows = status(sweep)
    if as_json:
        print(json.dumps(json_safe([{k: r[k] for k in ("trial_id", "state", "step", "val_loss", "error")}
                                    for r in rows]), indent=2, allow_nan=False))
        return 0
    print(format_table(rows, ["trial_id", "state", "step", "val_loss", "error"]))
    if store_exists(sweep.uri):
        chosen, others = sweep.runs.chosen()
        if chosen is not None:
            print("\n" + parent_text(parent_info(chosen), [parent_info(r) for r in others]))
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    print("\n" + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()))
    try:
        h = holder(sweep.uri, sweep.name) if store_exists(sweep.uri) else None
    except TimeoutError as e:  # the rows above were read: a store that slowed since then is news, not a crash
        print(f"driver: unknown ({e})")
        return 0
    print(f"driver: {h.describe()}" if h else "driver: none (no `aot-ray run` of this sweep holds its lease)")
    return 0


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """The flags of `aot-ray report`."""
    out: str | None = None  # the report's folder (default: <storage>/reports/<sweep>)
    as_json: bool = False
    watch_s: float | None = None
    conf: float = 0.95
    alpha: float | None = None
    overfit_rise: float | None = None
    max_epochs: float | None = None
    with_plots: bool = True
    reference: str = "paper"

    def check(self) -> None:
        for flag in ("conf", "alpha"):
            if getattr(self, flag) is not None and not 0 < getattr(self, flag) < 1:
                raise AotError(f"--{flag} must be between 0 and 1, got {getattr(self, flag)}")
        if any(v is not None and v <= 0 for v in (self.overfit_rise, self.max_epochs)):
            raise AotError("--overfit-rise and --max-epochs must be positive")


def report_command(sweep: ResolvedSweep, opts: ReportOptions) -> int:
    """`aot-ray report`: the AoT report of the sweep's runs (a sweep by name reads every finished run as
    current: the data of now is not known without its YAML)."""
    if not store_exists(sweep.uri):
        raise AotError(f"no MLflow database at {sqlite_path(sweep.uri)}; run the sweep first or pass --tracking-uri")
    check_reachable(sweep.uri, write=False)  # a read-only store is read; what cannot be written is said
    opts.check()
    out_dir = opts.out or sweep.storage.reports(sweep.name)
    overfit = {k: v for k, v in (("rise", opts.overfit_rise), ("max_epochs", opts.max_epochs)) if v is not None}
    kw = {"conf": opts.conf, "alpha": opts.alpha, "with_plots": opts.with_plots, "overfit": overfit,
          "parent": sweep.runs.given_parent, "reference": opts.reference, "versions": _data_versions(sweep)}
    if opts.watch_s is not None:
        watch(sweep.uri, sweep.name, out_dir, opts.watch_s, **kw)
        return 0
    result = report(sweep.uri, sweep.name, out_dir, **kw)
    if not result["rows"] and not result["running"] and not result["failed_cells"]:
        raise AotError(f"no finished runs for sweep {sweep.name!r} in {sweep.uri}")
    if opts.as_json:
        out = {k: [{kk: vv for kk, vv in r.items() if kk != "points"} for r in result[k]] for k in REPORT_TABLES}
        out.update(orphans=result["orphans"], failed_cells=result["failed_cells"])
        print(json.dumps(json_safe(out), indent=2, default=str, allow_nan=False))
    else:
        print(render(result))
        for f in result["files"]:
            print(f"wrote {f}")
    return 0


def _data_versions(sweep: ResolvedSweep) -> dict[str, str] | None:
    """trial id -> the hash of the data it would read now, so the report leaves out runs of changed data; None
    for a sweep by name, or where the corpora cannot be read here (the report then takes every finished run as
    current)."""
    if sweep.spec is None:
        return None
    try:
        return sweep.plan().versions
    except Exception:
        return None


def guarded(command: Callable[[], int]) -> int:
    """A command's exit code, with bad input as one line on stderr and exit 2, never a traceback (an AotError,
    or a path the user gave that cannot be used), and a stop by signal as 130."""
    try:
        return command()
    except AotError as e:
        print(f"aot-ray: error: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:  # a path the user gave cannot be written or read (an unwritable storage, --out /proc/x)
        if e.filename is None:
            raise
        print(f"aot-ray: error: cannot use {e.filename}: {e.strerror or e}; pick another path", file=sys.stderr,
              flush=True)
        return 2
    except KeyboardInterrupt as e:
        print(f"aot-ray: {str(e) or 'interrupted'}", file=sys.stderr, flush=True)
        return 130


def json_safe(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no NaN, and a reader's parser would reject the output."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
