"""A sweep's run: prepare each distinct dataset once (`aot-ray prepare`), and run it (the tracking check, the
lease, data preparation as Ray tasks, the lr search, stale and finished trials, Tune, then the AoT report), all
from its `SweepPlan`, the one `plan` shows."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

from ..costs import check_space
from ..errors import AotError, DataError, TrackingError
from ..execution.interrupt import Interrupted, interruptible
from ..spec import RunSpec, SignStopSpec, SweepSpec, TrialSpec, content_hash
from ..storage import Storage
from ..tracking.store import check_reachable
from .options import RunOptions
from .plan import SweepPlan, where_of

Say = Callable[[str], None]


def _search_learning_rates(spec: SweepSpec, ctx: Any, prepared: dict, storage: str, run_spec: Any, verbose: int,
                           say: Say, stopped: Callable[[], bool] = lambda: False) -> SweepSpec:
    """The sweep with each preset's learning rate from its Optuna search: a search already recorded on the parent
    run is reused, so a resumed sweep keeps its trial ids. A search cut short (`stopped`: a signal, a lost
    store) records nothing: the next run resumes it from its finished candidates."""
    from .. import tracking
    from ..data.prepare import data_hash
    from ..spec import lr_search_trials, with_learning_rates
    from ..execution.lr_search import search_lr

    lrs = tracking.searched_lrs(ctx.uri, spec.name, ctx.parent_run_id)
    ls = spec.lr_search
    for preset in spec.grid.model:
        if preset in lrs:
            say(f"lr for {preset}: {lrs[preset]:.3g} (searched earlier, kept)")
            continue
        probe = lr_search_trials(spec, preset, ls.low)[0]
        data = prepared[data_hash(probe.data, where_of(probe))][0]
        try:
            lr, loss = search_lr(spec, preset, ctx, data=data, storage=storage,
                                 experiment=f"{spec.name}-{ctx.parent_run_id[:8]}-lr-{preset}", run=run_spec,
                                 verbose=verbose)
        except AotError:
            if stopped():  # stopped before any candidate finished: the stop is the news, not the empty search
                return spec
            raise
        if stopped():
            return spec
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
    from ..data.prepare import prepare

    sp = SweepPlan.of(spec)
    manifests = {}
    for h, (where, d, lang) in sp.datasets.items():
        prepared, built = prepare(d, storage, where, progress=progress)
        manifests[h] = prepared.manifest
        say(summary_line(where, lang, h, prepared.location, built, prepared.manifest))
    check_fits(sp.trials, sp.versions, manifests)
    return manifests


@dataclass
class RunOutcome:
    ran: list[Any]
    skipped: list[str]
    report: dict[str, Any]
    prepared: dict[str, tuple[str, bool, dict]]

    @property
    def failed(self) -> list[Any]:
        return [o for o in self.ran if not o.ok]


def run(spec: SweepSpec, spec_text: str, *, uri: str, storage: str, options: RunOptions | None = None,
        say: Say = print, **flags: Any) -> RunOutcome:
    """Run the sweep, resuming where an earlier run of it stopped (see `tune.run_trials`). `options` are the
    command line's (`flags`: the same as keywords, RunOptions' fields)."""
    from .. import aggregate
    from ..execution.notices import GracefulStop
    from ..tracking.lease import Lease

    opts = options or RunOptions(**flags)
    run_spec = opts.run_spec(spec.run)
    check_reachable(uri)  # before anything starts
    # one driver per sweep: a second is refused, naming the first; the lease's thread also watches the store, and
    # a driver that cannot keep its lease stops its trials (they checkpoint first) before the lease expires
    stopper = GracefulStop(say)
    with Lease(uri, spec.name, patience_s=run_spec.tracking_patience_s, on_lost=stopper.stop) as lease:
        Storage.of(storage).check_writable()  # a read-only root is one line here, not a Ray task's traceback
        outcomes, skipped, prepared = _drive(spec, spec_text, uri, storage, opts, run_spec, lease, say, stopper)
        out_dir = Storage.of(storage).reports(spec.name)
        result = aggregate.report(uri, spec.name, out_dir)
        return RunOutcome(ran=outcomes, skipped=skipped, report=result, prepared=prepared)


def _lost(lease: Any, uri: str) -> TrackingError:
    return TrackingError(f"the tracking store {uri} is lost: {lease.lost}; the sweep stopped, its checkpoints "
                         f"and its runs' last state are kept: bring the store back (or pass --tracking-uri of "
                         f"one that holds its runs) and run the same command to resume")


def stale_line(ids: list[str], trials: list[Any], hashes: dict[str, str]) -> str:
    """The trials a data change made stale, with the datasets that changed, in one line."""
    by_id = {t.trial_id: t for t in trials}
    changed = sorted({where_of(by_id[i]) + (f"[{by_id[i].language}]" if by_id[i].language else "")
                      for i in ids if i in by_id})
    return (f"{len(ids)} finished trial(s) read data that has changed since they ran ({', '.join(changed)}): they "
            f"train again on the data of now; their old runs stay in MLflow with role 'superseded'")


def _drive(spec: SweepSpec, spec_text: str, uri: str, storage: str, opts: RunOptions, run_spec: RunSpec,
           lease: Any, say: Say, stopper: Any) -> tuple[list[Any], list[str], dict]:
    """Ray, the data, the lr search and Tune, under the lease; (outcomes, skipped trial ids, prepared data)."""
    from .. import tracking
    from ..execution.data_parallel import check_data_parallel_fits
    from ..execution.gpus import gpu_size_finder
    from ..execution.progress import Progress
    from ..execution.session import check_cluster, prepare_on_ray, ray_session
    from ..execution.tune import run_trials

    verbose = opts.verbose
    sp = SweepPlan.of(spec)  # what `plan` showed; also fails fast on missing local files
    trials, hashes, datasets = sp.trials, sp.versions, sp.datasets
    data_parallel = any(t.resources.workers > 1 for t in trials)
    with ray_session(opts.address, opts.num_cpus, opts.num_gpus, dashboard=data_parallel,
                     owner=content_hash([uri, spec.name, storage]), say=say,
                     log_to_driver=verbose > 0) as own_ray:  # --quiet: the trainers' own lines stay in Ray's logs
        check_cluster(storage, uri, run_spec.shared_storage)
        check_data_parallel_fits(trials, own_ray or opts.fixed_cluster, say)
        unfit = sp.unfit(sp.memory_checks(gpu_size_finder()))  # the cluster's own GPU sizes
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
        status = "FINISHED"
        outcomes: list[Any] = []
        skipped: list[str] = []
        try:
            if spec.lr_search is not None:
                with interruptible() as interrupted, stopper.tune():
                    spec = _search_learning_rates(spec, ctx, prepared, storage, run_spec, verbose, say,
                                                  stopped=lambda: interrupted() or lease.lost is not None)
                if lease.lost:
                    raise _lost(lease, uri)
                if interrupted():
                    raise Interrupted("interrupted during the learning-rate search; run the same command again to "
                                      "resume it (its finished candidates count)")
                sp = SweepPlan.of(spec)  # the searched learning rates are part of the trials' identity
                trials, hashes = sp.trials, sp.versions
            ctx = replace(ctx, stop_on_sign=run_spec.stop_on_sign is not None,  # trials then poll for stop requests
                          system_metrics_s=run_spec.system_metrics_s, gpu_tflops=run_spec.gpu_tflops,
                          data_versions=hashes)
            rule = run_spec.stop_on_sign or SignStopSpec()
            tracking.record_sign_rule(ctx, rule.alpha, rule.after)  # the report repeats the test the run made
            stale = tracking.stale_trial_runs(uri, spec.name, hashes, ctx.parent_run_id)
            if stale:  # their corpus changed since they ran: they train again, from scratch, on the data of now
                say(stale_line([r.data.tags.get("trial_id") for r in stale], trials, hashes))
                tracking.supersede(uri, stale, hashes)
            restart = frozenset(r.data.tags.get("trial_id") for r in stale)
            done = tracking.finished_trial_ids(uri, spec.name, ctx.parent_run_id)
            pending = [t for t in trials if t.trial_id not in done]
            skipped = [t.trial_id for t in trials if t.trial_id in done]
            experiment = f"{spec.name}-{ctx.parent_run_id[:8]}-{content_hash(sorted(t.trial_id for t in trials))}"
            if skipped:
                say(f"{len(skipped)} of {len(trials)} trials already finished in MLflow")
            check_space(pending, storage)
            data = {t.trial_id: prepared[hashes[t.trial_id]][0] for t in trials}
            progress = Progress(ctx, trials, run_spec.progress_every_s, say, spec.run.gpu_tflops,
                                run_spec.stall_warning_s)
            progress.start()  # its own thread: Tune's loop never waits on it
            try:
                with interruptible() as interrupted:
                    outcomes, _ = run_trials(pending, trials, ctx, data=data, storage=storage, experiment=experiment,
                                             run=run_spec, restart_errored=opts.restart_errored, verbose=verbose,
                                             say=say, start_over=restart, stop=stopper)
            finally:
                progress.stop()
            if lease.lost:
                raise _lost(lease, uri)
            if interrupted():
                raise Interrupted("interrupted: the sweep's unfinished runs are marked interrupted (status KILLED, "
                                  "tag aot.interrupted); run the same command again to resume them")
            outcomes = [o for o in outcomes if o.trial_id not in done or not o.ok]
            if any(not o.ok for o in outcomes):
                status = "FAILED"
        except BaseException:
            status = "KILLED"  # interrupted or broken off: its unfinished runs resume on the next `run`
            raise
        finally:
            if not lease.lost:  # a lost store takes no writes: the runs stay as they were, for the resume
                try:
                    tracking.end_sweep(ctx, status)
                except Exception as e:
                    say(f"warning: the sweep's runs could not be closed in {uri} ({str(e).splitlines()[0]})")
    return outcomes, skipped, prepared
