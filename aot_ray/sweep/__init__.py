"""The sweep, driven end to end, above Ray's execution layer:
- resolved.py: `ResolvedSweep`, a sweep resolved once (spec with `--set` and searched rates, storage, tracking
  store, its runs), which every command and cluster entry takes;
- options.py: the command line's flags over a sweep (`RunOptions`, the `run` flags' parser the entries share);
- sweep_plan.py: `SweepPlan`, its trials, data versions, datasets, GPU checks and `standing` in MLflow;
- plan.py and plan_text.py: `aot-ray plan`, the dry run of `run`, and its text;
- prepare.py: `aot-ray prepare`; drive.py: `aot-ray run`; status.py: `aot-ray status`;
- commands.py: each command's core (what it prints, its exit code)."""

from .commands import ReportOptions, plan_command, prepare_command, report_command, run_command, status_command
from .options import RunOptions
from .prepare import prepare_local
from .resolved import ResolvedSweep, by_name, resolve
from .sweep_plan import SweepPlan



def __getattr__(name: str):
    # `run` and `RunOutcome` load on first use: they bring torch and Ray's modules, which `plan`, `status` and
    # the command line's start do not need
    if name in ("run", "RunOutcome"):
        from . import drive

        return getattr(drive, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ReportOptions", "ResolvedSweep", "RunOptions", "RunOutcome", "SweepPlan", "by_name", "plan_command",
           "prepare_command", "prepare_local", "report_command", "resolve", "run", "run_command",
           "status_command"]
