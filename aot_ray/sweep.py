"""Sweep orchestration: plan (what would run, what is done, what it costs), prepare each distinct dataset
once, and run (tracking check, data preparation as Ray tasks, Tune, then the AoT report)."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .errors import AotError, DataError, TrackingError
from .interrupt import Interrupted, interruptible
from .models import count_params, resolve_shape
from .spec import RunSpec, SignStopSpec, SweepSpec, TrialSpec, content_hash, expand, lr_search_trials
from .tracking import ERROR, store_exists

Say = Callable[[str], None]


def resolve_storage(flag: str | None, spec: SweepSpec, cwd: str | Path | None = None) -> str:
    raw = flag or spec.run.storage or "aot_results"
    if "://" in raw:
        return raw
    return str((Path(cwd or os.getcwd()) / raw).resolve())


def where_of(trial: TrialSpec) -> str:
    return f"data.{trial.dataset}"


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
    return {"n_params": n, "tokens": tokens, "flops": flops, "gpu_hours": gpu_hours}


GpuSize = Callable[[TrialSpec], "tuple[int | None, str]"]


def memory_checks(trials: list[TrialSpec], run_spec: Any, discovered: GpuSize | None = None) -> dict[str, Any]:
    """trial id -> MemoryCheck for every GPU trial: its micro-batch against its share of the GPU it will get. The
    GPU's size comes from the cluster (`discovered`), else from what the sweep declares, else it is unknown."""
    from .data.prepare import vocab_size_of
    from .memory import check_trial, declared_gpu_bytes

    out = {}
    for t in trials:
        if t.resources.gpu <= 0:
            continue
        gpu_bytes, source = discovered(t) if discovered else (None, "")
        if gpu_bytes is None:
            gpu_bytes, source = declared_gpu_bytes(t, run_spec.gpu_memory_gb, run_spec.gpu_memory_gb_by_resource)
        out[t.trial_id] = check_trial(t, vocab_size_of(t.data), gpu_bytes, source)
    return out


def unfit_message(trials: list[TrialSpec], checks: dict[str, Any]) -> str | None:
    """One line naming the first trial that cannot fit its GPU share (and how many others), or None."""
    from .data.prepare import vocab_size_of
    from .memory import refusal

    bad = [t for t in trials if t.trial_id in checks and checks[t.trial_id].fits is False]
    if not bad:
        return None
    more = f" ({len(bad) - 1} more trial(s) do not fit either)" if len(bad) > 1 else ""
    return refusal(bad[0], vocab_size_of(bad[0].data), checks[bad[0].trial_id]) + more


def train_tokens_of(trial: TrialSpec, manifest: dict | None = None) -> int | None:
    """Tokens in the trial's training split: computed for synthetic data, read from a prepared manifest."""
    from .spec.schema import SYNTHETIC_KINDS, split_sizes

    if trial.data.kind in SYNTHETIC_KINDS:
        return split_sizes(trial.data)[0] * trial.data.line_tokens()
    return int(manifest["tokens"]["train"]) if manifest else None


def epochs_of(trial: TrialSpec, train_tokens: int | None) -> float | None:
    """How many times the trial sees its training split: steps x global batch / training windows."""
    if not train_tokens or train_tokens < trial.context_length:
        return None
    windows = (train_tokens - trial.context_length) // trial.stride + 1
    return trial.train.steps * trial.train.batch_size * trial.train.grad_accum / windows


def data_hashes(trials: list[TrialSpec]) -> dict[str, str]:
    """trial id -> content hash of the prepared data it reads."""
    from .data.prepare import data_hash

    cache: dict[int, str] = {}
    out = {}
    for t in trials:
        key = id(t.data)
        if key not in cache:
            cache[key] = data_hash(t.data, where_of(t))
        out[t.trial_id] = cache[key]
    return out


def distinct_datasets(trials: list[TrialSpec], hashes: dict[str, str]) -> dict[str, tuple[str, Any, str | None]]:
    """hash -> (where, dataset spec, language) for each distinct dataset of the sweep."""
    out: dict[str, tuple[str, Any, str | None]] = {}
    for t in trials:
        out.setdefault(hashes[t.trial_id], (where_of(t), t.data, t.language))
    return out


def done_trials(uri: str, sweep: str) -> tuple[set[str], str | None]:
    """Finished trial ids, without creating a store that does not exist yet; (ids, note if unknown)."""
    from .tracking import check_reachable, finished_trial_ids

    if not store_exists(uri):
        return set(), None
    try:
        check_reachable(uri)
        return finished_trial_ids(uri, sweep), None
    except (TrackingError, Exception) as e:  # planning must work offline: say so instead of failing
        return set(), f"tracking store not readable ({str(e).splitlines()[0]}); status unknown"


def plan(spec: SweepSpec, uri: str, storage: str) -> dict[str, Any]:
    """Everything `aot-ray plan` shows. Reads local file metadata and MLflow; downloads nothing."""
    from .data.prepare import check_sizes
    from .publish import MARKER
    from .data.remote import is_remote, remote_exists
    from .tune import resources_of

    lr_found: dict[str, float] = {}
    searched = spec  # the spec with its search settings, for the lr-search line
    if spec.lr_search is not None and store_exists(uri):
        from .spec import with_learning_rates
        from .tracking import searched_lrs

        with contextlib.suppress(Exception):  # planning works offline
            lr_found = searched_lrs(uri, spec.name)
        if set(spec.grid.model) <= set(lr_found):
            spec = with_learning_rates(spec, lr_found)
    trials = expand(spec)
    hashes = data_hashes(trials)
    done, note = done_trials(uri, spec.name)
    checks = memory_checks(trials, spec.run)
    manifests = _local_manifests(trials, hashes, storage)
    rows = []
    for t in trials:
        mem = checks.get(t.trial_id)
        rows.append({
            "trial_id": t.trial_id, "pair_key": t.pair_key, "cell_key": t.cell_key, "direction": t.direction,
            "dataset": t.dataset, "language": t.language, "model": t.model.preset,
            "context_length": t.context_length, "seed": t.seed, "axes": dict(t.axes),
            "resources": resources_of(t), **trial_cost(t, spec.run.gpu_tflops), "status": "done" if t.trial_id in done else "pending",
            "epochs": epochs_of(t, train_tokens_of(t, manifests.get(hashes[t.trial_id]))),
            "memory": None if mem is None else {
                "micro_batch": mem.micro, "passes": mem.passes, "predicted": mem.estimate.as_dict(),
                "budget": mem.budget, "gpu_bytes": mem.gpu_bytes, "source": mem.source, "fits": mem.fits},
        })
    data = []
    for h, (where, d, lang) in distinct_datasets(trials, hashes).items():
        path = f"{storage.rstrip('/')}/data/{d.kind}-{h}"
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
    return {"sweep": spec.name, "tracking_uri": uri, "storage": storage, "trials": rows, "datasets": data,
            "note": note, "lr_search": lr_search, "unfit": unfit_message(trials, checks)}


def _local_manifests(trials: list[TrialSpec], hashes: dict[str, str], storage: str) -> dict[str, dict]:
    """hash -> manifest of each dataset already prepared in a local storage (remote ones are not fetched)."""
    import json

    from .publish import MARKER

    out = {}
    if "://" in storage:
        return out
    for h, (_, d, _) in distinct_datasets(trials, hashes).items():
        folder = Path(storage) / "data" / f"{d.kind}-{h}"
        if (folder / MARKER).is_file():
            with contextlib.suppress(OSError, ValueError):
                out[h] = json.loads((folder / "manifest.json").read_text())
    return out


def _search_learning_rates(spec: SweepSpec, ctx: Any, prepared: dict, storage: str, run_spec: Any, verbose: int,
                           say: Say) -> SweepSpec:
    """The sweep with each preset's learning rate from its Optuna search: a search already recorded on the parent
    run is reused, so a resumed sweep keeps its trial ids."""
    from . import tracking
    from .data.prepare import data_hash
    from .spec import lr_search_trials, with_learning_rates
    from .tune import search_lr

    lrs = tracking.searched_lrs(ctx.uri, spec.name, ctx.parent_run_id)
    ls = spec.lr_search
    for preset in spec.grid.model:
        if preset in lrs:
            say(f"lr for {preset}: {lrs[preset]:.3g} (searched earlier, kept)")
            continue
        probe = lr_search_trials(spec, preset, ls.low)[0]
        data = prepared[data_hash(probe.data, where_of(probe))][0]
        lr, loss = search_lr(spec, preset, ctx, data=data, storage=storage,
                             experiment=f"{spec.name}-{ctx.parent_run_id[:8]}-lr-{preset}", run=run_spec,
                             verbose=verbose)
        tracking.record_lr(ctx, preset, lr, loss, ls.trials)
        lrs[preset] = lr
        say(f"lr for {preset}: {lr:.3g} (best of {ls.trials} Optuna trials over [{ls.low:g}, {ls.high:g}], "
            f"{'+'.join(ls.directions)} val loss {loss:.4f})")
    return with_learning_rates(spec, lrs)


def summary_line(where: str, lang: str | None, h: str, path: str, built: bool, m: dict) -> str:
    label = where + (f"[{lang}]" if lang else "")
    docs, toks = m["documents"], m["tokens"]
    return (f"{'prepared' if built else 'reused'} {label} ({h}): {docs['train']:,}+{docs['val']:,} documents, "
            f"{toks['train']:,}+{toks['val']:,} tokens (train+val), {m.get('bytes', 0) / 1e6:.1f} MB, "
            f"{m.get('seconds', 0):.1f} s -> {path}")


def check_fits(trials: list[TrialSpec], hashes: dict[str, str], manifests: dict[str, dict]) -> None:
    """Every trial's context must fit in its prepared splits: checked before any trial starts."""
    for t in trials:
        tokens = manifests[hashes[t.trial_id]]["tokens"]
        for split, name in (("val", "validation"), ("train", "training")):
            if tokens[split] < t.context_length:
                lang = f" ({t.language})" if t.language else ""
                raise DataError(f"{where_of(t)}{lang}: the {name} split has {tokens[split]} tokens, fewer than "
                                f"context_length {t.context_length}; add text or raise val_fraction")


def prepare_local(spec: SweepSpec, storage: str, say: Say = print, progress: bool = False) -> dict[str, dict]:
    """`aot-ray prepare`: every distinct dataset once, in this process; one summary line each."""
    from .data.prepare import prepare

    trials = expand(spec)
    hashes = data_hashes(trials)
    manifests = {}
    for h, (where, d, lang) in distinct_datasets(trials, hashes).items():
        prepared, built = prepare(d, storage, where, progress=progress)
        manifests[h] = prepared.manifest
        say(summary_line(where, lang, h, prepared.location, built, prepared.manifest))
    check_fits(trials, hashes, manifests)
    return manifests


MLFLOW_TO_STATE = {"FINISHED": "TERMINATED", "FAILED": "ERROR", "KILLED": "INTERRUPTED", "RUNNING": "RUNNING",
                   "SCHEDULED": "PENDING"}


def status(spec: SweepSpec, uri: str) -> list[dict[str, Any]]:
    """Per trial of the sweep: state (PENDING|RUNNING|TERMINATED|ERROR), step, last val_loss, error."""
    from .tracking import client, trial_runs

    runs: dict[str, Any] = {}
    if done_trials(uri, spec.name)[1] is None and store_exists(uri):
        for r in trial_runs(uri, spec.name):  # newest first
            runs.setdefault(r.data.tags.get("trial_id"), r)
    c = client(uri) if runs else None
    rows = []
    for t in expand(spec):
        r = runs.get(t.trial_id)
        row = {"trial_id": t.trial_id, "state": "PENDING", "step": 0, "val_loss": None, "error": None,
               "direction": t.direction, "pair_key": t.pair_key}
        if r is not None:
            row["state"] = MLFLOW_TO_STATE.get(r.info.status, r.info.status)
            steps = [m.step for m in c.get_metric_history(r.info.run_id, "train_loss")]
            val = sorted(c.get_metric_history(r.info.run_id, "val_loss"), key=lambda m: m.step)
            row["step"] = max(steps, default=0)
            row["val_loss"] = val[-1].value if val else None
            row["error"] = r.data.tags.get(ERROR)
        rows.append(row)
    return rows


@dataclass
class RunOutcome:
    ran: list[Any]
    skipped: list[str]
    report: dict[str, Any]
    prepared: dict[str, tuple[str, bool, dict]]

    @property
    def failed(self) -> list[Any]:
        return [o for o in self.ran if not o.ok]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The flags of `aot-ray run` beside the sweep YAML. `run_spec` is the one place where they meet the sweep's
    `run:` section: a flag that was given wins, one that was not keeps the YAML's value."""
    address: str | None = None  # a running Ray cluster (else $RAY_ADDRESS, else a Ray of this process's own)
    num_cpus: int | None = None  # the resources of that own Ray
    num_gpus: int | None = None
    max_concurrent_trials: int | None = None
    shared_storage: bool = False  # a local storage path every node mounts
    stop_on_sign: bool = False  # run.stop_on_sign with its defaults, where the YAML has none
    restart_errored: bool = False  # errored trials start over instead of resuming
    fresh: bool = False  # a new parent run and Tune state; the earlier ones stay untouched
    verbose: int = 1

    def run_spec(self, run: RunSpec) -> RunSpec:
        if self.max_concurrent_trials is not None:
            run = replace(run, max_concurrent_trials=self.max_concurrent_trials)
        if self.stop_on_sign and run.stop_on_sign is None:
            run = replace(run, stop_on_sign=SignStopSpec())
        if self.shared_storage:
            run = replace(run, shared_storage=True)
        return run


def run(spec: SweepSpec, spec_text: str, *, uri: str, storage: str, options: RunOptions | None = None,
        say: Say = print, **flags: Any) -> RunOutcome:
    """Run the sweep, resuming its Tune state when there is one (see `tune.run_trials`). `options` are the
    command line's (`flags`: the same as keywords, RunOptions' fields)."""
    from . import aggregate, tracking
    from .data_parallel import check_data_parallel_fits
    from .gpus import gpu_size_finder
    from .lease import Lease
    from .tune import check_cluster, prepare_on_ray, ray_session, run_trials

    opts = options or RunOptions(**flags)
    run_spec = opts.run_spec(spec.run)
    verbose = opts.verbose
    tracking.check_reachable(uri)  # before anything starts
    with Lease(uri, spec.name) as lease:  # one driver per sweep: a second is refused, naming the first
        if "://" not in storage:
            try:
                Path(storage).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise AotError(f"cannot create storage folder {storage} ({e.strerror}); pass --storage") from None
        trials = expand(spec)
        hashes = data_hashes(trials)  # also fails fast on missing local files
        datasets = distinct_datasets(trials, hashes)
        data_parallel = any(t.resources.workers > 1 for t in trials)
        with ray_session(opts.address, opts.num_cpus, opts.num_gpus, dashboard=data_parallel) as own_ray:
            check_cluster(storage, uri, run_spec.shared_storage)
            check_data_parallel_fits(trials, own_ray, say)
            unfit = unfit_message(trials, memory_checks(trials, spec.run, gpu_size_finder()))
            if unfit:
                raise AotError(unfit)
            prepared = prepare_on_ray({h: (w, d) for h, (w, d, _) in datasets.items()}, storage,
                                      progress=verbose > 0 and sys.stderr.isatty())
            for h, (path, built, manifest) in prepared.items():
                where, _, lang = datasets[h]
                say(summary_line(where, lang, h, path, built, manifest))
            check_fits(trials, hashes, {h: m for h, (_, _, m) in prepared.items()})

            lease.acquire()  # taken where the sweep's runs are opened: nothing before it writes to the store
            ctx = tracking.start_sweep(uri, spec.name, spec_text, fresh=opts.fresh)
            if spec.lr_search is not None:
                spec = _search_learning_rates(spec, ctx, prepared, storage, run_spec, verbose, say)
                trials = expand(spec)  # the searched learning rates are part of the trials' identity
                hashes = data_hashes(trials)
            ctx = replace(ctx, stop_on_sign=run_spec.stop_on_sign is not None)  # trials then poll for stop requests
            rule = run_spec.stop_on_sign or SignStopSpec()
            tracking.record_sign_rule(ctx, rule.alpha, rule.after)  # the report repeats the test the run made
            done = tracking.finished_trial_ids(uri, spec.name, ctx.parent_run_id)
            pending = [t for t in trials if t.trial_id not in done]
            skipped = [t.trial_id for t in trials if t.trial_id in done]
            experiment = f"{spec.name}-{ctx.parent_run_id[:8]}-{content_hash(sorted(t.trial_id for t in trials))}"
            if skipped:
                say(f"{len(skipped)} of {len(trials)} trials already finished in MLflow")
            outcomes = []
            status = "FINISHED"
            try:
                data = {t.trial_id: prepared[hashes[t.trial_id]][0] for t in trials}
                with interruptible() as interrupted:
                    outcomes, restored = run_trials(pending, trials, ctx, data=data, storage=storage,
                                                    experiment=experiment, run=run_spec,
                                                    restart_errored=opts.restart_errored, verbose=verbose)
                if interrupted():
                    raise Interrupted("interrupted: the sweep's unfinished runs are marked interrupted (status KILLED, "
                                      "tag aot.interrupted); run the same command again to resume them")
                if restored:
                    say(f"resumed Tune state {storage.rstrip('/')}/{experiment}")
                outcomes = [o for o in outcomes if o.trial_id not in done or not o.ok]
                if any(not o.ok for o in outcomes):
                    status = "FAILED"
            except BaseException:
                status = "KILLED"  # interrupted or broken off: its unfinished runs resume on the next `run`
                raise
            finally:
                tracking.end_sweep(ctx, status)
        out_dir = Path(storage) / "reports" / spec.name if "://" not in storage else None
        result = aggregate.report(uri, spec.name, out_dir)
        return RunOutcome(ran=outcomes, skipped=skipped, report=result, prepared=prepared)
