"""A sweep's run (`aot-ray run`): the tracking check, the lease, Ray, data preparation as Ray tasks, the lr search,
the trials' standing in MLflow (done, stale, to run: the `SweepPlan.standing` that `plan` shows), Tune, then the
AoT report, all from the resolved sweep."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .. import aggregate, tracking
from ..costs import check_space
from ..errors import AotError, TrackingError
from ..execution.data_parallel import check_data_parallel_fits
from ..execution.gpus import gpu_size_finder
from ..execution.interrupt import Interrupted, interruptible
from ..execution.lr_search import search_lr
from ..execution.notices import GracefulStop
from ..execution.progress import Progress
from ..execution.session import check_cluster, prepare_on_ray, ray_session
from ..execution.tune import TuneJob, run_trials
from ..spec import SignStopSpec, content_hash, lr_search_trials
from ..tracking.lease import Lease
from ..tracking.store import check_reachable
from .options import RunOptions
from .prepare import check_context_fits, summary_line
from .resolved import ResolvedSweep
from .sweep_plan import SweepPlan, data_hashes, where_of

Say = Callable[[str], None]


@dataclass
class RunOutcome:
    ran: list[Any]
    skipped: list[str]
    report: dict[str, Any]
    prepared: dict[str, tuple[str, bool, dict]]

    @property
    def failed(self) -> list[Any]:
        return [o for o in self.ran if not o.ok]


def run(sweep: ResolvedSweep, options: RunOptions | None = None, say: Say = print, **flags: Any) -> RunOutcome:
    """Run the sweep, resuming where an earlier run of it stopped (see `tune.run_trials`). `options` are the
    command line's (`flags`: the same as keywords, RunOptions' fields)."""
    opts = options or RunOptions(**flags)
    check_reachable(sweep.uri)  # before anything starts
    # one driver per sweep: a second is refused, naming the first; the lease's thread also watches the store, and
    # a driver that cannot keep its lease stops its trials (they checkpoint first) before the lease expires
    stopper = GracefulStop(say)
    run_spec = opts.run_spec(sweep.spec.run)
    with Lease(sweep.uri, sweep.name, patience_s=run_spec.tracking_patience_s, on_lost=stopper.stop) as lease:
        sweep.storage.check_writable()  # a read-only root is one line here, not a Ray task's traceback
        driver = _Driver(sweep=sweep, opts=opts, run_spec=run_spec, lease=lease, say=say, stopper=stopper)
        outcomes, skipped, prepared = driver.drive()
        result = aggregate.report(sweep.uri, sweep.name, sweep.storage.reports(sweep.name))
        return RunOutcome(ran=outcomes, skipped=skipped, report=result, prepared=prepared)


def stale_line(ids: list[str], trials: list[Any]) -> str:
    """The trials a data change made stale, with the datasets that changed, in one line."""
    by_id = {t.trial_id: t for t in trials}
    changed = sorted({where_of(by_id[i]) + (f"[{by_id[i].language}]" if by_id[i].language else "")
                      for i in ids if i in by_id})
    return (f"{len(ids)} finished trial(s) read data that has changed since they ran ({', '.join(changed)}): they "
            f"train again on the data of now; their old runs stay in MLflow with role 'superseded'")


@dataclass
class _Driver:
    """One `run` under its lease: Ray and the data, then the parent run, the lr search and Tune."""

    sweep: ResolvedSweep
    opts: RunOptions
    run_spec: Any
    lease: Any
    say: Say
    stopper: GracefulStop
    prepared: dict = field(default_factory=dict)  # data hash -> (path, built, manifest), once prepared
    own_ray: bool = True  # whether this driver started its Ray (else a cluster's, whose nodes may drain)

    def drive(self) -> tuple[list[Any], list[str], dict]:
        """(outcomes, skipped trial ids, prepared data)."""
        sp = self.sweep.plan()  # what `plan` showed; also fails fast on missing local files
        verbose, sweep = self.opts.verbose, self.sweep
        with ray_session(self.opts.address, self.opts.num_cpus, self.opts.num_gpus,
                         dashboard=any(t.resources.workers > 1 for t in sp.trials),
                         owner=content_hash([sweep.uri, sweep.name, sweep.storage.root]), say=self.say,
                         log_to_driver=verbose > 1) as own_ray:  # but --verbose: trainers' lines stay in Ray's logs
            self.own_ray = own_ray
            self._check_cluster(sp, own_ray)
            self.prepared = self._prepare(sp)
            self.lease.acquire()  # taken where the sweep's runs are opened: nothing before it writes to the store
            ctx = sweep.runs.start(sweep.text, fresh=self.opts.fresh)
            status, outcomes, skipped = "FINISHED", [], []
            try:
                outcomes, skipped = self._trials(ctx, sp)
                if any(not o.ok for o in outcomes):
                    status = "FAILED"
            except BaseException:
                status = "KILLED"  # interrupted or broken off: its unfinished runs resume on the next `run`
                raise
            finally:
                self._end(ctx, status)
        return outcomes, skipped, self.prepared

    def _check_cluster(self, sp: SweepPlan, own_ray: bool) -> None:
        check_cluster(self.sweep.storage, self.sweep.uri, self.run_spec.shared_storage)
        check_data_parallel_fits(sp.trials, own_ray or self.opts.fixed_cluster, self.say)
        unfit = sp.unfit(sp.memory_checks(gpu_size_finder()))  # the cluster's own GPU sizes
        if unfit:
            raise AotError(unfit)

    def _prepare(self, sp: SweepPlan) -> dict:
        prepared = prepare_on_ray({h: (w, d) for h, (w, d, _) in sp.datasets.items()}, self.sweep.storage,
                                  progress=self.opts.verbose > 0 and sys.stderr.isatty())
        for h, (path, built, manifest) in prepared.items():
            where, _, lang = sp.datasets[h]
            self.say(summary_line(where, lang, h, path, built, manifest))
        check_context_fits(sp.trials, sp.versions, {h: m for h, (_, _, m) in prepared.items()})
        return prepared

    def _trials(self, ctx: Any, sp: SweepPlan) -> tuple[list[Any], list[str]]:
        """The lr search (when the sweep has one), then the trials not done, through Tune."""
        if self.sweep.declared.lr_search is not None:
            self.sweep = self._search(ctx)
            sp = self.sweep.plan()  # the searched learning rates are part of the trials' identity
        ctx = replace(ctx, stop_on_sign=self.run_spec.stop_on_sign is not None,  # trials then poll for stops
                      system_metrics_s=self.run_spec.system_metrics_s, gpu_tflops=self.run_spec.gpu_tflops,
                      data_versions=sp.versions)
        rule = self.run_spec.stop_on_sign or SignStopSpec()
        tracking.record_sign_rule(ctx, rule.alpha, rule.after)  # the report repeats the test the run made
        standing = sp.standing(self.sweep.runs)
        if standing.stale:  # their corpus changed since they ran: they train again, from scratch, on the data of now
            self.say(stale_line(sorted(standing.stale_ids), sp.trials))
            self.sweep.runs.supersede(list(standing.stale), sp.versions)
        skipped = [t.trial_id for t in sp.trials if t.trial_id in standing.done]
        if skipped:
            self.say(f"{len(skipped)} of {len(sp.trials)} trials already finished in MLflow")
        pending = list(standing.pending)
        check_space(pending, self.sweep.storage)
        outcomes = self._tune(ctx, sp, pending, frozenset(standing.stale_ids))
        return [o for o in outcomes if o.trial_id not in standing.done or not o.ok], skipped

    def _tune(self, ctx: Any, sp: SweepPlan, pending: list, start_over: frozenset[str]) -> list[Any]:
        trials, spec = sp.trials, self.sweep.spec
        job = TuneJob(pending=pending, all_trials=trials, ctx=ctx, storage=self.sweep.storage,
                      data={t.trial_id: self.prepared[sp.versions[t.trial_id]][0] for t in trials},
                      experiment=f"{spec.name}-{ctx.parent_run_id[:8]}-"
                                 f"{content_hash(sorted(t.trial_id for t in trials))}",
                      run=self.run_spec, restart_errored=self.opts.restart_errored, verbose=self.opts.verbose,
                      say=self.say, start_over=start_over, stop=self.stopper, on_cluster=not self.own_ray)
        progress = Progress(ctx, trials, self.run_spec.progress_every_s, self.say, spec.run.gpu_tflops,
                            self.run_spec.stall_warning_s, live=self.opts.verbose == 1 and sys.stdout.isatty())
        progress.start()  # its own thread: Tune's loop never waits on it
        grace = self.run_spec.stop_grace_s
        try:
            # Ctrl-C or SIGTERM: every running trial checkpoints at its current step (within run.stop_grace_s),
            # then Tune stops; a second signal stops at once
            with interruptible(lambda signum: self.stopper.signalled(signum, grace)) as interrupted:
                outcomes, _ = run_trials(job)
        finally:
            progress.stop()
        self._raise_if_stopped(interrupted(), "interrupted: the sweep's unfinished runs are marked interrupted "
                                              "(status KILLED, tag aot.interrupted); run the same command again to "
                                              "resume them")
        return outcomes

    def _search(self, ctx: Any) -> ResolvedSweep:
        """The sweep with each preset's learning rate from its Optuna search: a search already recorded on the
        parent run is reused, so a resumed sweep keeps its trial ids. A search cut short (a signal, a lost store)
        records nothing: the next run resumes it from its finished candidates."""
        sweep = self.sweep
        lrs = sweep.runs.searched_lrs()
        with interruptible() as interrupted, self.stopper.tune():
            stopped = lambda: interrupted() or self.lease.lost is not None  # noqa: E731
            for preset in sweep.declared.grid.model:
                if preset in lrs:
                    self.say(f"lr for {preset}: {lrs[preset]:.3g} (searched earlier, kept)")
                    continue
                found = self._search_one(ctx, preset, stopped)
                if found is None:
                    break
                lrs[preset] = found
        self._raise_if_stopped(interrupted(), "interrupted during the learning-rate search; run the same command "
                                              "again to resume it (its finished candidates count)")
        return sweep.with_learning_rates(lrs)

    def _search_one(self, ctx: Any, preset: str, stopped: Callable[[], bool]) -> float | None:
        """One preset's search, recorded on the parent run; None when stopped before it ended."""
        declared, ls = self.sweep.declared, self.sweep.declared.lr_search
        probe = lr_search_trials(declared, preset, ls.low)[0]
        data = self.prepared[data_hashes([probe])[probe.trial_id]][0]
        try:
            lr, loss = search_lr(declared, preset, ctx, data=data, storage=self.sweep.storage,
                                 experiment=f"{declared.name}-{ctx.parent_run_id[:8]}-lr-{preset}", run=self.run_spec,
                                 verbose=self.opts.verbose)
        except AotError:
            if stopped():  # stopped before any candidate finished: the stop is the news, not the empty search
                return None
            raise
        if stopped():
            return None
        tracking.record_lr(ctx, preset, lr, loss, ls.trials)
        self.say(f"lr for {preset}: {lr:.3g} (best of {ls.trials} Optuna trials over [{ls.low:g}, {ls.high:g}], "
                 f"{'+'.join(ls.directions)} val loss {loss:.4f})")
        return lr

    def _raise_if_stopped(self, interrupted: bool, why: str) -> None:
        if self.lease.lost:
            raise TrackingError(f"the tracking store {self.sweep.uri} is lost: {self.lease.lost}; the sweep stopped, "
                                f"its checkpoints and its runs' last state are kept: bring the store back (or pass "
                                f"--tracking-uri of one that holds its runs) and run the same command to resume")
        if interrupted:
            raise Interrupted(why)

    def _end(self, ctx: Any, status: str) -> None:
        if self.lease.lost:  # a lost store takes no writes: the runs stay as they were, for the resume
            return
        try:
            tracking.end_sweep(ctx, status)
        except Exception as e:
            self.say(f"warning: the sweep's runs could not be closed in {self.sweep.uri} "
                     f"({str(e).splitlines()[0]})")
