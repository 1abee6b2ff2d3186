"""The sweep, driven end to end, above Ray's execution layer: `SweepPlan` (plan.py: built once, what `plan` shows
and `run` executes), preview.py (`aot-ray plan`'s figures) and render.py (as text), status.py (`aot-ray status`),
options.py (the command line's settings over the YAML's `run:` section), drive.py (`prepare` and `run`)."""

from .drive import RunOutcome, prepare_local, run
from .options import RunOptions, resolve_storage
from .plan import SweepPlan

__all__ = ["RunOptions", "RunOutcome", "SweepPlan", "prepare_local", "resolve_storage", "run"]
