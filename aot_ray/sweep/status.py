"""What `aot-ray status` shows: each trial of a sweep with its state in MLflow, its step, its last validation loss
and its error, from one search of the runs under the sweep's newest parent run (or a chosen one)."""

from __future__ import annotations

from typing import Any

from ..spec import SweepSpec, expand
from ..tracking import ERROR, trial_runs
from ..tracking.store import client, store_exists


MLFLOW_TO_STATE = {"FINISHED": "TERMINATED", "FAILED": "ERROR", "KILLED": "INTERRUPTED", "RUNNING": "RUNNING",
                   "SCHEDULED": "PENDING"}


def status(spec: SweepSpec, uri: str, parent: str | None = None) -> list[dict[str, Any]]:
    """Per trial of the sweep: state (PENDING|RUNNING|TERMINATED|ERROR), step, last val_loss, error, from one
    search of the runs of the sweep's newest parent run or `parent` (their latest `train_step` and `val_loss`;
    histories are read only on runs of versions without train_step). The caller has checked that the store
    answers (`store.check_reachable`)."""
    from ..tracking import chosen_parent

    runs: dict[str, Any] = {}
    chosen = chosen_parent(uri, spec.name, parent)[0] if store_exists(uri) else None
    if chosen is not None:
        for r in trial_runs(uri, spec.name, parent_run_id=chosen.info.run_id):  # newest first
            runs.setdefault(r.data.tags.get("trial_id"), r)
    c = client(uri) if runs else None
    rows = []
    for t in expand(spec):
        r = runs.get(t.trial_id)
        row = {"trial_id": t.trial_id, "state": "PENDING", "step": 0, "val_loss": None, "error": None,
               "direction": t.direction, "pair_key": t.pair_key}
        if r is not None:
            row["state"] = MLFLOW_TO_STATE.get(r.info.status, r.info.status)
            m = r.data.metrics  # the latest value of each metric, from the search: no read per run
            if "train_step" in m or "train_loss" not in m:
                row["step"] = int(m.get("train_step", 0))
                row["val_loss"] = m.get("val_loss")
            else:  # a run of an older version: its histories say
                steps = [x.step for x in c.get_metric_history(r.info.run_id, "train_loss")]
                val = sorted(c.get_metric_history(r.info.run_id, "val_loss"), key=lambda x: x.step)
                row["step"] = max(steps, default=0)
                row["val_loss"] = val[-1].value if val else None
            row["error"] = r.data.tags.get(ERROR)
        rows.append(row)
    return rows
