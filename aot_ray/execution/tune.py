"""The module that drives Ray Tune's grid: one Tune trial per expanded trial, resources from the spec (Ray's
session is `session`; the Optuna learning-rate search that can precede the grid is `lr_search`).

The expanded trials travel once through the object store (`tune.with_parameters`); each Tune trial's config
holds only its trial id, so Tune's tables and folders are named by it. The trainer stays Ray-free: `_trainable`
adapts it to `tune.report` / `tune.get_checkpoint`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..costs import resources_of
from ..errors import StopRequested, disk_full
from ..spec.schema import RunSpec, TrialSpec
from ..storage import Storage, under
from ..tracking import ERROR, NODE, SweepContext, SweepRuns, TrialTracker, find_trial_run, retry
from . import tune_state
from .data_parallel import drop_data_parallel_runs, run_data_parallel
from .drains import DrainWatch, pause_on_notice, trial_notice
from .notices import GracefulStop, StopNotice, trial_notes, wait_to_be_stopped
from .tune_state import trial_checkpoints


@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    ok: bool
    error: str | None
    val_loss: float | None


DRIVER_MEMORY = 256 * 2**20  # bytes: a Tune function process that imports ray.train, not torch


def tune_resources(trial: TrialSpec) -> dict[str, float]:
    """What the Tune trial itself holds. A data-parallel trial's Tune function only waits on its Ray Train run,
    whose workers hold the real resources. Tune refuses an empty request and any CPU share would keep the
    workers of a cluster-sized trial from ever fitting, so it asks for the memory its process uses instead."""
    if trial.resources.workers > 1:
        return {"memory": DRIVER_MEMORY}
    return {k: v for k, v in resources_of(trial).items() if k != "workers"}


def _trainable(config: dict[str, Any], trials: dict[str, TrialSpec], ctx: SweepContext, data: dict[str, str],
               dp_root: str = "", root: str = "", from_storage: frozenset[str] = frozenset()) -> None:
    """One Tune trial. `root`: the experiment's folder in storage, where each trial's checkpoints are found
    again; `from_storage`: the trials that resume from those checkpoints even though Tune offers none (its state
    was rebuilt)."""
    from ray import tune

    from ..train.tracked_run import train_tracked  # torch: in the trainer's process only

    trial = trials[config["trial_id"]]
    done = finished_run(ctx, trial)
    if done is not None:
        # finished in MLflow but not in Tune's record (a driver killed in between): final, never rerun or reopened
        m = done.data.metrics
        tune.report({"step": int(m.get("stopped_at_step", trial.train.steps)),
                     "val_loss": m.get("final_val_loss", m.get("val_loss")), "finished_earlier": 1})
        return
    import ray

    node = ray.get_runtime_context().get_node_id()
    if trial.resources.workers > 1:
        run_data_parallel(trial, ctx, data[trial.trial_id], dp_root, root, node)
        return
    notice = trial_notice(root, node) if root else None  # the sweep's stop notice, and its node's drain notice
    tracker = TrialTracker(ctx, trial)
    tracker.extra_tags[NODE] = node
    where = under(root, trial.trial_id, what="trial id")

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(path)) if path is not None else None
        try:
            tune.report(metrics, checkpoint=checkpoint)
        except OSError as e:  # Tune persists the checkpoint into storage here
            size = sum(f.stat().st_size for f in Path(path).iterdir()) if path is not None else None
            full = disk_full(e, where, size)
            if full is None:
                raise
            raise full from None

    registered = tune.get_checkpoint()
    resume = registered is not None or trial.trial_id in from_storage
    # every checkpoint of the trial in storage, newest step first: an unreadable one falls back to the next
    on_disk = trial_checkpoints(root, trial.trial_id) if resume and root else []
    run = functools.partial(train_tracked, trial, tracker, data=data[trial.trial_id], on_report=report,
                            stop_notice=notice)
    try:
        if on_disk:
            run(on_disk)
        elif registered is not None:
            with registered.as_directory() as resume_from:
                run([resume_from])
        else:
            run(None)
    except StopRequested:
        wait_to_be_stopped()


def finished_run(ctx: SweepContext, trial: TrialSpec) -> Any:
    """The trial's MLflow run under this sweep's parent run when it is FINISHED, else None."""
    run = retry(lambda: find_trial_run(ctx.uri, ctx.experiment_id, trial.trial_id, ctx.parent_run_id))
    return run if run is not None and run.info.status == "FINISHED" else None


def tune_output(verbose: int) -> dict[str, str]:
    """What Tune prints, for one fit (so that nothing else in the process, a test's next driver say, inherits it):
    below --verbose, the driver's progress is all that is printed while the sweep runs (Tune's legacy reporter
    prints nothing at verbose 0; the new one still prints its experiment box and result paths). Tune's own
    loggers (JSON, CSV, TensorBoard) are off at every level: the runs' metrics are MLflow's, and Tune would print
    a TensorBoard hint that does not apply."""
    out = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    if verbose < 2:
        out.update({"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"})
    return out


def tune_loggers() -> list:
    """Tune's per-trial result.json, which its results (`ResultGrid`) read back: the one logger of its defaults
    kept (`tune_output` turns the defaults off, TensorBoard's with them)."""
    from ray.tune.logger import JsonLoggerCallback

    return [JsonLoggerCallback()]


def tune_verbosity(verbose: int) -> int:
    """Tune's own verbosity: its trial tables only with --verbose."""
    return 1 if verbose >= 2 else 0


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True, kw_only=True)
class TuneJob:
    """One Tune experiment of a sweep: the `pending` trials (those of `all_trials` not finished in MLflow), run
    as `storage/experiment`. `data`: trial id -> its prepared data. `start_over`: trials that begin from step 0
    whatever checkpoints they have (those whose data changed since their last run); `restart_errored`: errored
    ones too. `stop`: the driver's own stop of the sweep (a lost lease), which posts the experiment's stop notice
    to the trials."""

    pending: list[TrialSpec]
    all_trials: list[TrialSpec]
    ctx: SweepContext
    data: dict[str, str]
    storage: Storage
    experiment: str
    run: RunSpec
    restart_errored: bool = False
    verbose: int = 1
    say: Any = print
    start_over: frozenset[str] = frozenset()
    stop: GracefulStop | None = None
    on_cluster: bool = False

    @property
    def path(self) -> str:
        return self.storage.experiment(self.experiment)

    @property
    def by_id(self) -> dict[str, TrialSpec]:
        return {t.trial_id: t for t in self.all_trials}


def run_trials(job: TuneJob) -> tuple[list[TrialOutcome], bool]:
    """Run the job's trials. Returns (outcomes, resumed: whether an earlier run of it left state behind).

    Tune's saved state is a cache, never restored: MLflow says which trials are finished (they are not pending)
    and the checkpoints in storage where the others stand. So a resumed sweep continues each unfinished or
    errored trial from its newest readable checkpoint (errored ones start over with `restart_errored`), runs
    with this run's callbacks and verbosity, and an unreadable state (a disk that filled up while Tune saved it)
    costs one line: it is set aside and the experiment goes on."""
    from ray import tune

    resumed = tune.Tuner.can_restore(job.path)
    if resumed:
        _set_aside_unreadable(job.path, job.say)
    if not job.pending:
        return [], resumed
    notice = StopNotice(job.path)
    notice.clear()  # one an earlier driver posted: its trials are gone, and this driver's must not stop
    from_storage = _resume_from_storage(job, resumed)
    one_line_tune_errors()
    try:
        with environ(tune_output(job.verbose)), quiet_tune_stop(job.verbose), \
                (job.stop.tune(notice) if job.stop else contextlib.nullcontext()), _drain_watch(job):
            grid = _tuner(job, from_storage, notice).fit()
    except Exception as e:  # Tune's own records unreadable (its error files cut off by a full disk, say)
        job.say(f"Tune's results could not be read ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); the trials' outcomes are MLflow's")
        return outcomes_from_mlflow(job.ctx, job.pending), resumed
    return [_outcome(result) for result in grid], resumed


def _drain_watch(job: TuneJob) -> Any:
    """On a cluster, the watch over its nodes' drains while the grid runs."""
    if not job.on_cluster:
        return contextlib.nullcontext()
    import ray

    return DrainWatch(job.path, ray.get_runtime_context().gcs_address, job.say)


def _set_aside_unreadable(path: str, say: Any) -> None:
    bad = tune_state.problem(path)
    if bad is not None:
        aside = tune_state.set_aside(path)
        say(f"Tune state at {path} is unreadable ({bad}); set aside in {aside}; rebuilt from MLflow (finished "
            f"trials are kept) and the checkpoints in storage")


def _resume_from_storage(job: TuneJob, resumed: bool) -> frozenset[str]:
    """The pending trials that continue from their checkpoints in storage; the checkpoints (and Ray Train runs)
    of those that start over are dropped first."""
    by_id = job.by_id
    errored = failed_trial_ids(job.ctx, job.pending) if job.restart_errored and resumed else set()
    errored |= {t.trial_id for t in job.pending} & set(job.start_over)
    drop_data_parallel_runs(_dp_root(job.path), [t for t in errored if by_id[t].resources.workers > 1])
    tune_state.drop_trial_checkpoints(job.path, sorted(errored))
    if not resumed:
        return frozenset()
    from_storage = frozenset(t.trial_id for t in job.pending if t.trial_id not in errored)
    job.say(f"resuming {len(from_storage)} unfinished trial(s) of {job.path} from their newest checkpoints"
            + (f"; {len(errored)} trial(s) start over (errored, or their data changed)" if errored else ""))
    return from_storage


def _dp_root(path: str) -> str:
    return f"{path}/data-parallel"  # Ray Train runs of data-parallel trials, one folder per trial id


def _tuner(job: TuneJob, from_storage: frozenset[str], notice: StopNotice) -> Any:
    from ray import tune

    # the driver's side only: trainer processes import this module too, and need neither the report's reader
    # nor the sign test (scipy, the aggregate package)
    from ..aggregate.read import Reader
    from ..signs import expected_pairs
    from .sign_callback import SignCallback  # Tune's Callback: Ray on the driver's side only

    by_id, ctx, run = job.by_id, job.ctx, job.run
    trainable = tune.with_parameters(_trainable, trials=by_id, ctx=ctx, data=job.data, dp_root=_dp_root(job.path),
                                     root=job.path, from_storage=from_storage)
    trainable = tune.with_resources(trainable, resources=lambda config: tune_resources(by_id[config["trial_id"]]))
    name_of = lambda t: t.config["trial_id"]  # noqa: E731
    signs = SignCallback(functools.partial(Reader, ctx.uri, ctx.sweep, ctx.parent_run_id), run.sign_interval_s,
                          run.stop_on_sign, expected_pairs(job.all_trials))
    return tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search([t.trial_id for t in job.pending])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=run.max_concurrent_trials,
            # saves the torch/transformers import per trial; not on a cluster, where the actor a trial leaves
            # might be on a draining node and Tune would start the next trial (or the same one) there
            reuse_actors=not job.on_cluster,
            scheduler=pause_on_notice(),
            trial_name_creator=name_of,
            trial_dirname_creator=name_of,
        ),
        run_config=tune.RunConfig(
            name=job.experiment,
            storage_path=job.storage.root,
            failure_config=tune.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=max(t.train.keep_checkpoints for t in job.pending)),
            verbose=tune_verbosity(job.verbose),
            callbacks=[signs, trial_notes(job.say, notice), *tune_loggers()],
        ),
    )


def _outcome(result: Any) -> TrialOutcome:
    err = None
    if result.error is not None:
        text = str(result.error).strip()
        err = text.splitlines()[-1] if text else type(result.error).__name__
    loss = (result.metrics or {}).get("val_loss")
    return TrialOutcome(result.config["trial_id"], result.error is None, err, loss)


class _OneLine(logging.Filter):
    """Tune logs a failed trial, or a failed save of its state, with the whole traceback. Where the cause is one
    of ours (an AotError says what to do in one line) or a full disk, the line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        text = str(exc) if exc is not None else record.getMessage()
        if "aot_ray.errors." in text or "No space left on device" in text:
            lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
            head = record.getMessage().strip().splitlines()
            record.msg = f"{head[0] if head else ''} {lines[-1] if lines else ''}".strip()
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


class _StopSaid(logging.Filter):
    """What Tune logs when it is stopped (the signal, the trials it leaves unfinished, `Tuner.restore(...)` to
    resume): the driver has said what each trial kept and that the same command resumes, so below --verbose
    Tune's own account, with its resume advice that does not apply, is left out."""

    LINES = ("Stop signal received", "Trials did not complete", "Experiment has been interrupted",
             "Training has been interrupted")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.LINES)


@contextlib.contextmanager
def quiet_tune_stop(verbose: int) -> Iterator[None]:
    """`_StopSaid` on Tune's own logger for one fit, below --verbose."""
    log, quiet = logging.getLogger("ray.tune.tune"), _StopSaid()
    if verbose < 2:
        log.addFilter(quiet)
    try:
        yield
    finally:
        log.removeFilter(quiet)


def one_line_tune_errors() -> None:
    """Put `_OneLine` on the loggers of Tune's controller, its experiment state and its storage sync (once)."""
    for name in ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state",
                 "ray.train._internal.syncer"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in log.filters):
            log.addFilter(_OneLine())


def failed_trial_ids(ctx: SweepContext, trials: list[TrialSpec]) -> set[str]:
    """The trials whose run under this sweep's parent run ended FAILED."""
    ids = {t.trial_id for t in trials}
    return {r.data.tags.get("trial_id") for r in SweepRuns(ctx.uri, ctx.sweep, ctx.parent_run_id).trials("FAILED")
            if r.data.tags.get("trial_id") in ids}


def outcomes_from_mlflow(ctx: SweepContext, trials: list[TrialSpec]) -> list[TrialOutcome]:
    """Each trial's outcome as its MLflow run records it (where Tune's own record cannot be read)."""
    runs: dict[str, Any] = {}
    for r in SweepRuns(ctx.uri, ctx.sweep, ctx.parent_run_id).trials():  # newest first
        runs.setdefault(r.data.tags.get("trial_id"), r)
    out = []
    for t in trials:
        r = runs.get(t.trial_id)
        if r is not None and r.info.status == "FINISHED":
            m = r.data.metrics
            out.append(TrialOutcome(t.trial_id, True, None, m.get("final_val_loss", m.get("val_loss"))))
        else:
            why = (r.data.tags.get(ERROR) if r is not None else None) or \
                f"did not finish ({r.info.status if r is not None else 'never started'})"
            out.append(TrialOutcome(t.trial_id, False, why.strip().splitlines()[-1], None))
    return out
