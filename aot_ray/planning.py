"""What a sweep would run, what is already done, and what it would cost (`aot-ray plan`, `aot-ray status`), from
its `SweepPlan`: trial costs, epochs, the distinct datasets and whether they are prepared, the storage checks,
each trial's state in MLflow. Reads local metadata and the tracking store; starts nothing, downloads nothing,
creates no store."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from .errors import DataError, DiskFull
from .models import count_params, resolve_shape
from .spec import SweepSpec, TrialSpec, expand, lr_search_trials
from .storage import Storage, is_remote
from .sweep_plan import SweepPlan
from .tracking import ERROR, trial_runs
from .tracking.store import client, store_exists


def resolve_storage(flag: str | None, spec: SweepSpec, cwd: str | Path | None = None) -> str:
    raw = flag or spec.run.storage or "aot_results"
    if is_remote(raw):
        return raw
    return str((Path(cwd or os.getcwd()) / raw).resolve())


def trial_cost(trial: TrialSpec, gpu_tflops: float = 250.0) -> dict[str, Any]:
    """Parameters, training tokens, 6*N*D FLOPs and, for GPU trials, GPU-hours at `gpu_tflops` per GPU."""
    from .data.prepare import vocab_size_of

    vocab = vocab_size_of(trial.data)
    n = count_params(resolve_shape(trial.model), vocab, trial.context_length, trial.model.tie_embeddings)
    tokens = trial.train.steps * trial.train.batch_size * trial.train.grad_accum * trial.context_length
    flops = 6 * n * tokens
    gpus = trial.resources.gpu
    # a fractional GPU is shared: the trial gets about that fraction of its throughput, for as many GPU-hours
    gpu_hours = flops / (gpu_tflops * 1e12) / 3600 if gpus else None
    return {"n_params": n, "tokens": tokens, "flops": flops, "gpu_hours": gpu_hours,
            "checkpoint_bytes": checkpoint_bytes(n)}


def checkpoint_bytes(n_params: int) -> int:
    """One checkpoint in storage: fp32 weights and AdamW's two moments, plus RNG states and metadata."""
    return n_params * 4 * 3 + 64 * 1024


def storage_need(trials: list[TrialSpec]) -> int:
    """Bytes of checkpoints the trials hold in storage at once: train.keep_checkpoints each, one more in flight."""
    return sum(trial_cost(t)["checkpoint_bytes"] * (t.train.keep_checkpoints + 1) for t in trials)


def check_space(trials: list[TrialSpec], storage: str) -> None:
    """Refuse, before the trials start, a local storage without room for their checkpoints."""
    import shutil

    if is_remote(storage) or not trials:
        return
    need, free = storage_need(trials), shutil.disk_usage(storage).free
    if free < need:
        raise DiskFull(f"storage {storage} has {free / 1e6:.1f} MB free; the {len(trials)} trial(s) to run keep about "
                       f"{need / 1e6:.1f} MB of checkpoints there (train.keep_checkpoints each); free space or pass "
                       f"another --storage")


def train_tokens_of(trial: TrialSpec, manifest: dict | None = None) -> int | None:
    """Tokens in the trial's training split: computed for synthetic data, read from a prepared manifest."""
    from .spec.schema import SYNTHETIC_KINDS, split_sizes

    if trial.data.kind in SYNTHETIC_KINDS:
        return split_sizes(trial.data)[0] * trial.data.line_tokens()
    return int(manifest["tokens"]["train"]) if manifest else None


def val_tokens_of(trial: TrialSpec, manifest: dict | None = None) -> int | None:
    """Tokens in the trial's validation split: computed for synthetic data, read from a prepared manifest."""
    from .spec.schema import SYNTHETIC_KINDS, split_sizes

    if trial.data.kind in SYNTHETIC_KINDS:
        return split_sizes(trial.data)[1] * trial.data.line_tokens()
    return int(manifest["tokens"]["val"]) if manifest else None


def eval_windows_of(trial: TrialSpec, val_tokens: int | None) -> int | None:
    """The validation windows the trial evaluates on: train.eval_windows, cut to what the split holds (the
    trainer takes the same number and logs it as the effective value); None when the split's size is unknown."""
    if val_tokens is None or val_tokens < trial.context_length:
        return None
    return min(trial.train.eval_windows, (val_tokens - trial.context_length) // trial.context_length + 1)


def epochs_of(trial: TrialSpec, train_tokens: int | None) -> float | None:
    """How many times the trial sees its training split: steps x global batch / training windows."""
    if not train_tokens or train_tokens < trial.context_length:
        return None
    windows = (train_tokens - trial.context_length) // trial.stride + 1
    return trial.train.steps * trial.train.batch_size * trial.train.grad_accum / windows


def plan(spec: SweepSpec, uri: str, storage: str) -> dict[str, Any]:
    """Everything `aot-ray plan` shows, from the sweep's `SweepPlan` (the one `run` executes). Reads local file
    metadata and MLflow; downloads nothing."""
    from .data.prepare import check_sizes
    from .publish import MARKER
    from .data.remote import remote_exists
    from .execution.tune import resources_of

    lr_found: dict[str, float] = {}
    searched = spec  # the spec with its search settings, for the lr-search line
    if spec.lr_search is not None and store_exists(uri):
        from .spec import with_learning_rates
        from .tracking import searched_lrs

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

    from .publish import MARKER

    out = {}
    if is_remote(storage):
        return out
    for h, (_, d, _) in sp.datasets.items():
        folder = Path(Storage.of(storage).data(d.kind, h))
        if (folder / MARKER).is_file():
            with contextlib.suppress(OSError, ValueError):
                out[h] = json.loads((folder / "manifest.json").read_text())
    return out


MLFLOW_TO_STATE = {"FINISHED": "TERMINATED", "FAILED": "ERROR", "KILLED": "INTERRUPTED", "RUNNING": "RUNNING",
                   "SCHEDULED": "PENDING"}


def status(spec: SweepSpec, uri: str, parent: str | None = None) -> list[dict[str, Any]]:
    """Per trial of the sweep: state (PENDING|RUNNING|TERMINATED|ERROR), step, last val_loss, error, from one
    search of the runs of the sweep's newest parent run or `parent` (their latest `train_step` and `val_loss`;
    histories are read only on runs of versions without train_step). The caller has checked that the store
    answers (`store.check_reachable`)."""
    from .tracking import chosen_parent

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
