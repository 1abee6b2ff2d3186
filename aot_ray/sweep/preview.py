"""What `aot-ray plan` shows, from the sweep's `SweepPlan` (the one `run` executes): each trial's resources, cost,
epochs, effective validation windows, GPU memory check and state in MLflow (done, stale: finished on data that has
changed since, or pending), the distinct datasets and whether they are prepared, the lr search, the storage need.
Reads local metadata and the tracking store; starts nothing, downloads nothing, creates no store."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ..costs import epochs_of, eval_windows_of, storage_need, train_tokens_of, trial_cost, val_tokens_of
from ..errors import DataError
from ..spec import SweepSpec, lr_search_trials
from ..storage import Storage, is_remote
from ..tracking.store import store_exists
from .plan import SweepPlan


def plan(spec: SweepSpec, uri: str, storage: str) -> dict[str, Any]:
    """Everything `aot-ray plan` shows, from the sweep's `SweepPlan` (the one `run` executes). Reads local file
    metadata and MLflow; downloads nothing."""
    from ..data.prepare import check_sizes
    from ..publish import MARKER
    from ..data.remote import remote_exists
    from ..execution.tune import resources_of

    lr_found: dict[str, float] = {}
    searched = spec  # the spec with its search settings, for the lr-search line
    if spec.lr_search is not None and store_exists(uri):
        from ..spec import with_learning_rates
        from ..tracking import searched_lrs

        with contextlib.suppress(Exception):  # planning works offline
            lr_found = searched_lrs(uri, spec.name)
        if set(spec.grid.model) <= set(lr_found):
            spec = with_learning_rates(spec, lr_found)
    sp = SweepPlan.of(spec)
    trials, hashes = sp.trials, sp.versions
    done, stale, note = sp.done_offline(uri)
    checks = sp.memory_checks()
    manifests = _local_manifests(sp, storage)
    rows = []
    for t in trials:
        mem = checks.get(t.trial_id)
        rows.append({
            "trial_id": t.trial_id, "pair_key": t.pair_key, "cell_key": t.cell_key, "direction": t.direction,
            "dataset": t.dataset, "language": t.language, "model": t.model.preset,
            "context_length": t.context_length, "seed": t.seed, "axes": dict(t.axes),
            "resources": resources_of(t), **trial_cost(t, spec.run.gpu_tflops), "status": "done" if t.trial_id in done else "stale" if t.trial_id in stale else "pending",
            "epochs": epochs_of(t, train_tokens_of(t, manifests.get(hashes[t.trial_id]))),
            "eval_windows": {"requested": t.train.eval_windows,
                             "effective": eval_windows_of(t, val_tokens_of(t, manifests.get(hashes[t.trial_id])))},
            "memory": None if mem is None else {
                "micro_batch": mem.micro, "passes": mem.passes, "predicted": mem.estimate.as_dict(),
                "budget": mem.budget, "gpu_bytes": mem.gpu_bytes, "source": mem.source, "fits": mem.fits},
        })
    data = []
    for h, (where, d, lang) in sp.datasets.items():
        path = Storage.of(storage).data(d.kind, h)
        damaged = None
        try:
            done_ = remote_exists(path) if is_remote(storage) else (Path(path) / MARKER).is_file()
            if done_ and h in manifests:
                check_sizes(Path(path), manifests[h])  # cheap; the content hash is checked when trials load it
        except DataError as e:
            done_, damaged = False, str(e)
        except Exception:  # an unreachable object store: planning still works, status unknown
            done_ = False
        data.append({"dataset": where.partition(".")[2], "language": lang, "hash": h, "path": path,
                     "prepared": done_, "damaged": damaged})
    lr_search = None
    if searched.lr_search is not None:
        ls = searched.lr_search
        probe_cost = sum(trial_cost(t, spec.run.gpu_tflops)["tokens"] for p in spec.grid.model
                         for t in lr_search_trials(searched, p, ls.low))
        lr_search = {"trials_per_model": ls.trials, "range": [ls.low, ls.high], "directions": list(ls.directions),
                     "tokens": probe_cost * ls.trials, "found": {p: lr_found.get(p) for p in spec.grid.model}}
    todo = [t for t in trials if t.trial_id not in done]
    return {"sweep": spec.name, "tracking_uri": uri, "storage": storage, "trials": rows, "datasets": data,
            "storage_need": storage_need(todo),
            "note": note, "lr_search": lr_search, "unfit": sp.unfit(checks)}


def _local_manifests(sp: SweepPlan, storage: str) -> dict[str, dict]:
    """hash -> manifest of each dataset already prepared in a local storage (remote ones are not fetched)."""
    import json

    from ..publish import MARKER

    out = {}
    if is_remote(storage):
        return out
    for h, (_, d, _) in sp.datasets.items():
        folder = Path(Storage.of(storage).data(d.kind, h))
        if (folder / MARKER).is_file():
            with contextlib.suppress(OSError, ValueError):
                out[h] = json.loads((folder / "manifest.json").read_text())
    return out
