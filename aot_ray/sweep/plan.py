"""`aot-ray plan`, the dry run of `run`: from the resolved sweep's `SweepPlan` and its `standing` in MLflow (the
very objects `run` acts on), each trial's resources, cost, epochs, effective validation windows, GPU memory check
and state (done, stale: finished on data that has changed since, or pending), the distinct datasets and whether
they are prepared, the lr search, the storage need. Reads local metadata and the tracking store; starts nothing,
downloads nothing, creates no store."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ..costs import (epochs_of, eval_windows_of, resources_of, storage_need, train_tokens_of, trial_cost,
                     val_tokens_of)
from ..data.prepare import check_sizes
from ..errors import DataError
from ..publish import MARKER
from ..spec import TrialSpec, lr_search_trials
from ..storage import exists, join
from .resolved import ResolvedSweep
from .sweep_plan import Standing, SweepPlan


def plan(sweep: ResolvedSweep) -> dict[str, Any]:
    """Everything `aot-ray plan` shows (`plan_text` writes it)."""
    spec = sweep.spec
    sp = sweep.plan()
    standing, note = sp.standing_offline(sweep.runs)
    checks = sp.memory_checks()
    manifests = _local_manifests(sweep, sp)
    rows = [_row(t, sp, standing, checks.get(t.trial_id), manifests.get(sp.versions[t.trial_id]))
            for t in sp.trials]
    return {"sweep": spec.name, "tracking_uri": sweep.uri, "storage": str(sweep.storage), "trials": rows,
            "datasets": _datasets(sweep, sp, manifests), "storage_need": storage_need(list(standing.pending)),
            "note": note, "lr_search": _lr_search(sweep), "unfit": sp.unfit(checks)}


def _row(t: TrialSpec, sp: SweepPlan, standing: Standing, mem: Any, manifest: dict | None) -> dict[str, Any]:
    state = "done" if t.trial_id in standing.done else "stale" if t.trial_id in standing.stale_ids else "pending"
    return {
        "trial_id": t.trial_id, "pair_key": t.pair_key, "cell_key": t.cell_key, "direction": t.direction,
        "dataset": t.dataset, "windows": t.windows, "language": t.language, "model": t.model.preset,
        "context_length": t.context_length,
        "seed": t.seed, "axes": dict(t.axes), "resources": resources_of(t),
        **trial_cost(t, sp.spec.run.gpu_tflops), "status": state,
        "epochs": epochs_of(t, train_tokens_of(t, manifest)),
        "eval_windows": {"requested": t.train.eval_windows,
                         "effective": eval_windows_of(t, val_tokens_of(t, manifest))},
        "memory": None if mem is None else {
            "micro_batch": mem.micro, "passes": mem.passes, "predicted": mem.estimate.as_dict(),
            "budget": mem.budget, "gpu_bytes": mem.gpu_bytes, "source": mem.source, "fits": mem.fits},
    }


def _datasets(sweep: ResolvedSweep, sp: SweepPlan, manifests: dict[str, dict]) -> list[dict[str, Any]]:
    """Each distinct dataset: where it goes, whether it is prepared (a local one's sizes checked: cheap; the
    content hash is checked when trials load it)."""
    out = []
    for h, (where, d, lang) in sp.datasets.items():
        path = sweep.storage.data(d.kind, h)
        damaged = None
        try:
            prepared = exists(join(path, MARKER))
            if prepared and h in manifests:
                check_sizes(Path(path), manifests[h])
        except DataError as e:
            prepared, damaged = False, str(e)
        except Exception:  # an unreachable object store: planning still works, status unknown
            prepared = False
        out.append({"dataset": where.partition(".")[2], "language": lang, "hash": h, "path": path,
                    "prepared": prepared, "damaged": damaged})
    return out


def _lr_search(sweep: ResolvedSweep) -> dict[str, Any] | None:
    declared = sweep.declared
    ls = declared.lr_search
    if ls is None:
        return None
    probe_cost = sum(trial_cost(t, declared.run.gpu_tflops)["tokens"] for p in declared.grid.model
                     for t in lr_search_trials(declared, p, ls.low))
    return {"trials_per_model": ls.trials, "range": [ls.low, ls.high], "directions": list(ls.directions),
            "tokens": probe_cost * ls.trials,
            "found": {p: sweep.learning_rates.get(p) for p in declared.grid.model}}


def _local_manifests(sweep: ResolvedSweep, sp: SweepPlan) -> dict[str, dict]:
    """hash -> manifest of each dataset already prepared in a local storage (a bucket's are not fetched)."""
    out: dict[str, dict] = {}
    if sweep.storage.remote:
        return out
    for h, (_, d, _) in sp.datasets.items():
        folder = Path(sweep.storage.data(d.kind, h))
        if (folder / MARKER).is_file():
            with contextlib.suppress(OSError, ValueError):
                out[h] = json.loads((folder / "manifest.json").read_text())
    return out
