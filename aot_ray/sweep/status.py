"""What `aot-ray status` shows: each trial of the resolved sweep (its searched learning rates applied, so the ids
are the ids that ran) with its state in MLflow, its step, its last validation loss and its error, from one search
of the runs under the sweep's newest parent run (or the one chosen with `--parent`)."""

from __future__ import annotations

from typing import Any

from ..spec import expand
from ..tracking import ERROR, TRIAL_STATE
from ..tracking.store import store_exists
from .resolved import ResolvedSweep


def status(sweep: ResolvedSweep) -> list[dict[str, Any]]:
    """Per trial of the sweep: state (PENDING|RUNNING|TERMINATED|ERROR|INTERRUPTED), step, last val_loss, error
    (their latest `train_step` and `val_loss`; histories are read only on runs of versions without train_step).
    The caller has checked that the store answers (`store.check_reachable`)."""
    runs: dict[str, Any] = {}
    chosen = sweep.runs.chosen()[0] if store_exists(sweep.uri) else None
    if chosen is not None:
        for r in sweep.runs.trials():  # newest first, under the chosen parent run
            runs.setdefault(r.data.tags.get("trial_id"), r)
    rows = []
    for t in expand(sweep.spec):
        r = runs.get(t.trial_id)
        row = {"trial_id": t.trial_id, "state": "PENDING", "step": 0, "val_loss": None, "error": None,
               "direction": t.direction, "pair_key": t.pair_key}
        if r is not None:
            row.update(state=TRIAL_STATE.get(r.info.status, r.info.status), error=r.data.tags.get(ERROR),
                       **_progress(sweep, r))
        rows.append(row)
    return rows


def _progress(sweep: ResolvedSweep, r: Any) -> dict[str, Any]:
    """A run's step and last validation loss."""
    m = r.data.metrics  # the latest value of each metric, from the search: no read per run
    if "train_step" in m or "train_loss" not in m:
        return {"step": int(m.get("train_step", 0)), "val_loss": m.get("val_loss")}
    c = sweep.runs.client  # a run of an older version: its histories say
    steps = [x.step for x in c.get_metric_history(r.info.run_id, "train_loss")]
    val = sorted(c.get_metric_history(r.info.run_id, "val_loss"), key=lambda x: x.step)
    return {"step": max(steps, default=0), "val_loss": val[-1].value if val else None}
