"""Tracking: everything that talks to MLflow, in one layer.

- `store`: which MLflow store (URI, SQLite file, reachability, client, retries, the UI hint);
- `runs`: a sweep's runs (`SweepRuns`: client, experiment, parent run), every tag name, the searches;
- `tracker`: one trial's run as the trainer writes it (`TrialTracker`);
- `lease`: one driver per sweep, and the watch on the store.

The names other layers use are here, so that `from aot_ray import tracking` and `tracking.SweepRuns(...)` read
as they always did.
"""

import logging
import os

# a new SQLite store's tables being created is not news to a user (MLflow says it at INFO on every first run)
for _name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# every MLflow call of this process (driver, trainer, report) fails within seconds on a server that is down or
# hangs, instead of MLflow's default minutes of retries: the trainers' buffers and checkpoints carry an outage, and
# the driver's lease must never wait past its own deadlines (a user's setting wins)
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# MLflow prints "View run ... at: URL" and "View experiment at: URL" to stdout at every run's end on a server:
# a pair of lines per trial in a sweep's output, where the driver already names the sweep's page once
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from .runs import (AXES, DATA_VERSION, ERROR, INTERRUPTED, LR_SEARCH, NODE, NOTE, ROLE, STOP_AT,  # noqa: E402
                   SUPERSEDED, SUPERSEDED_BY, TRIAL_STATE, WORKERS, SweepContext, SweepRuns, end_sweep,
                   find_trial_run, record_lr, record_sign_rule, sign_rule)
from .store import client, retry  # noqa: E402
from .trial_tracker import TrialTracker, run_holds  # noqa: E402

__all__ = ["AXES", "DATA_VERSION", "ERROR", "INTERRUPTED", "LR_SEARCH", "NODE", "NOTE", "ROLE", "STOP_AT", "SUPERSEDED",
           "SUPERSEDED_BY", "TRIAL_STATE", "WORKERS", "SweepContext", "SweepRuns", "TrialTracker", "client",
           "end_sweep", "find_trial_run", "record_lr", "record_sign_rule", "retry", "run_holds", "sign_rule"]
