"""Tracking: everything that talks to MLflow, in one layer.

- `store`: which MLflow store (URI, SQLite file, reachability, client, retries, the UI hint);
- `runs`: a sweep's runs (`SweepRuns`: client, experiment, parent run), every tag name, the searches;
- `tracker`: one trial's run as the trainer writes it (`TrialTracker`);
- `lease`: one driver per sweep, and the watch on the store.

The names other layers use are here, so that `from aot_ray import tracking` and `tracking.trial_runs(...)` read
as they always did.
"""

from .runs import (AXES, DATA_VERSION, ERROR, INTERRUPTED, LR_SEARCH, NODE, ROLE, STOP_AT, SUPERSEDED,
                   SUPERSEDED_BY, WORKERS, SweepContext, SweepRuns, chosen_parent, end_sweep, experiment_id,
                   find_parent, find_trial_run, finished_trial_ids, record_lr, record_sign_rule, searched_lrs,
                   sign_rule, stale_trial_runs, start_sweep, supersede, trial_runs)
from .store import client, retry
from .tracker import TrialTracker, run_holds

__all__ = ["AXES", "DATA_VERSION", "ERROR", "INTERRUPTED", "LR_SEARCH", "NODE", "ROLE", "STOP_AT", "SUPERSEDED",
           "SUPERSEDED_BY", "WORKERS", "SweepContext", "SweepRuns", "TrialTracker", "chosen_parent", "client",
           "end_sweep", "experiment_id", "find_parent", "find_trial_run", "finished_trial_ids", "record_lr",
           "record_sign_rule", "retry", "run_holds", "searched_lrs", "sign_rule", "stale_trial_runs",
           "start_sweep", "supersede", "trial_runs"]
