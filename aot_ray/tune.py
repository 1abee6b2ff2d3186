"""The only module that drives Ray Tune: one Tune trial per expanded trial, resources from the spec, and the
Optuna learning-rate search (`search_lr`, Tune's OptunaSearch) that can precede the grid.

The expanded trials travel once through the object store (`tune.with_parameters`); each Tune trial's config
holds only its trial id, so Tune's tables and folders are named by it. The trainer stays Ray-free: `_trainable`
adapts it to `tune.report` / `tune.get_checkpoint`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .data_parallel import drop_data_parallel_runs, run_data_parallel
from .errors import AotError
from .spec.schema import RunSpec, TrialSpec
from .tracking import LR_SEARCH, NODE, SweepContext

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    ok: bool
    error: str | None
    val_loss: float | None


def resources_of(trial: TrialSpec) -> dict[str, float]:
    """What the trial asks for in all: per worker, times `workers` for a data-parallel trial (shown by `plan`)."""
    r = trial.resources
    out: dict[str, float] = {"workers": r.workers} if r.workers > 1 else {}
    out["cpu"] = r.cpu
    if r.gpu:
        out["gpu"] = r.gpu
    out.update(r.custom)
    return out


DRIVER_MEMORY = 256 * 2**20  # bytes: a Tune function process that imports ray.train, not torch


def tune_resources(trial: TrialSpec) -> dict[str, float]:
    """What the Tune trial itself holds. A data-parallel trial's Tune function only waits on its Ray Train run,
    whose workers hold the real resources. Tune refuses an empty request and any CPU share would keep the
    workers of a cluster-sized trial from ever fitting, so it asks for the memory its process uses instead."""
    if trial.resources.workers > 1:
        return {"memory": DRIVER_MEMORY}
    return {k: v for k, v in resources_of(trial).items() if k != "workers"}


def check_cluster(storage: str, uri: str, shared_storage: bool) -> int:
    """On more than one node, refuse storage or tracking that only one node can reach; returns the node count."""
    import ray

    from .errors import AotError

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        if "://" not in storage and not shared_storage:
            raise AotError(
                f"storage {storage} is a local path and the cluster has {len(nodes)} nodes: trials on other nodes "
                f"could not read its prepared data or checkpoints; use s3://... or gs://..., or a shared file system "
                f"path with --shared-storage")
        if uri.startswith("sqlite:") and not shared_storage:
            raise AotError(
                f"tracking URI {uri} is a local SQLite file and the cluster has {len(nodes)} nodes; start an MLflow "
                f"server on the head and pass --tracking-uri http://HEAD:5000")
    return len(nodes)


def _trainable(config: dict[str, Any], trials: dict[str, TrialSpec], ctx: SweepContext, data: dict[str, str],
               dp_root: str = "") -> None:
    from ray import tune

    from .tracking import TrialTracker
    from .train.tracked import train_tracked

    trial = trials[config["trial_id"]]
    done = finished_run(ctx, trial)
    if done is not None:
        # finished in MLflow but not in Tune's record (a driver killed in between): final, never rerun or reopened
        m = done.data.metrics
        tune.report({"step": int(m.get("stopped_at_step", trial.train.steps)),
                     "val_loss": m.get("final_val_loss", m.get("val_loss")), "finished_earlier": 1})
        return
    if trial.resources.workers > 1:
        run_data_parallel(trial, ctx, data[trial.trial_id], dp_root)
        return
    tracker = TrialTracker(ctx, trial)
    import ray

    tracker.extra_tags[NODE] = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(path)) if path is not None else None
        tune.report(metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    on_disk = checkpoint_candidates(checkpoint) if checkpoint is not None else []
    if on_disk:  # every checkpoint of the trial, newest first: an unreadable one falls back to the next
        train_tracked(trial, tracker, on_disk, data=data[trial.trial_id], on_report=report)
    elif checkpoint is not None:
        with checkpoint.as_directory() as resume_from:
            train_tracked(trial, tracker, [resume_from], data=data[trial.trial_id], on_report=report)
    else:
        train_tracked(trial, tracker, None, data=data[trial.trial_id], on_report=report)


def finished_run(ctx: SweepContext, trial: TrialSpec) -> Any:
    """The trial's MLflow run under this sweep's parent run when it is FINISHED, else None."""
    from .tracking import find_trial_run, retry

    run = retry(lambda: find_trial_run(ctx.uri, ctx.experiment_id, trial.trial_id, ctx.parent_run_id))
    return run if run is not None and run.info.status == "FINISHED" else None


def _lr_trainable(config: dict[str, Any], spec: Any, preset: str, ctx: SweepContext, data: str) -> None:
    """One Optuna candidate: short runs at config["lr"] in each searched direction (one MLflow run each, role
    lr-search); the objective is their mean final validation loss."""
    from ray import tune

    from .spec import lr_search_trials
    from .tracking import TrialTracker
    from .train.tracked import train_tracked

    losses = []
    for trial in lr_search_trials(spec, preset, config["lr"]):
        tracker = TrialTracker(ctx, trial, role="lr-search")
        tracker.extra_tags[LR_SEARCH] = preset
        losses.append(train_tracked(trial, tracker, None, data=data, interrupts_resume=False).val_loss)
    tune.report({"val_loss": sum(losses) / len(losses), "lr": config["lr"]})


def search_lr(spec: Any, preset: str, ctx: SweepContext, *, data: str, storage: str, experiment: str,
              run: RunSpec, verbose: int = 1) -> tuple[float, float]:
    """Ray Tune with Optuna's TPE sampler over log-uniform lr for one preset; returns (best lr, its loss)."""
    from ray import tune

    from .spec import lr_search_trials

    ls = spec.lr_search
    probe = lr_search_trials(spec, preset, ls.low)[0]
    trainable = tune.with_parameters(_lr_trainable, spec=spec, preset=preset, ctx=ctx, data=data)
    trainable = tune.with_resources(trainable, tune_resources(probe))
    path = f"{storage.rstrip('/')}/{experiment}"
    if tune.Tuner.can_restore(path):  # an interrupted search continues, with its sampler's state
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = _new_search(trainable, ls, run, experiment, storage, verbose)
    grid = tuner.fit()
    ok = [r for r in grid if r.error is None and r.metrics and r.metrics.get("val_loss") is not None]
    if not ok:
        errors = "; ".join(str(r.error).strip().splitlines()[-1] for r in grid if r.error is not None)
        raise AotError(f"the learning-rate search for {preset} had no successful trial ({errors or 'no results'})")
    best = min(ok, key=lambda r: r.metrics["val_loss"])
    return float(best.config["lr"]), float(best.metrics["val_loss"])


def _new_search(trainable: Any, ls: Any, run: RunSpec, experiment: str, storage: str, verbose: int) -> Any:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    return tune.Tuner(
        trainable,
        param_space={"lr": tune.loguniform(ls.low, ls.high)},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="val_loss", mode="min", sampler=optuna.samplers.TPESampler(seed=ls.seed)),
            num_samples=ls.trials,
            max_concurrent_trials=run.max_concurrent_trials,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=experiment, storage_path=storage, verbose=verbose,
                                  failure_config=tune.FailureConfig(max_failures=run.max_failures)),
    )


def checkpoint_candidates(registered: Any) -> list[str]:
    """All checkpoint folders of the trial on local storage, newest first: Tune's experiment state may name an
    older one than the newest on disk (its state is saved less often than checkpoints are), or one since
    deleted. Empty for remote storage (Tune's registered checkpoint is then the one)."""
    path = Path(registered.path)
    if "://" in str(registered.path) or not path.parent.is_dir():
        return []
    return [str(p) for p in sorted(path.parent.glob("checkpoint_*"), reverse=True) if p.is_dir()]


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, dashboard: bool = False) -> bool:
    """Connect to `address` (else $RAY_ADDRESS) or start a local Ray of our own; False when Ray was already
    initialised by the caller.
    A local Ray gets its dashboard (on 127.0.0.1) only with `dashboard`: Ray Train's placement-group cleaner
    asks the state API behind it whether a data-parallel run's controller is still alive."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": dashboard, "configure_logging": True, "logging_level": "WARNING"}
    address = address or os.environ.get("RAY_ADDRESS")  # set for drivers started by `ray job submit`
    if address:
        kwargs["address"] = address
    else:
        # "local": a Ray of our own, never whichever other Ray on this machine started last
        kwargs.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus)
    ray.init(**kwargs)
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                dashboard: bool = False) -> Iterator[bool]:
    """Ray for the duration of a sweep: connect or start, and shut down only what this call started.
    Yields whether this call started a Ray of its own (no autoscaler can add nodes to it)."""
    import ray

    started = init_ray(address, num_cpus, num_gpus, dashboard)
    try:
        yield started and not (address or os.environ.get("RAY_ADDRESS"))
    finally:
        if started:
            ray.shutdown()


def prepare_on_ray(items: dict[str, tuple[str, Any]], storage: str, progress: bool) -> dict[str, tuple[str, bool, dict]]:
    """Prepare distinct datasets in parallel, one Ray task each: {hash: (where, spec)} -> {hash: (path, built, manifest)}."""
    import ray
    from ray.exceptions import RayTaskError

    from .data.prepare import prepare

    @ray.remote(num_cpus=1)
    def _prepare(data: Any, where: str) -> tuple[str, bool, dict]:
        prepared, built = prepare(data, storage, where, progress=progress)
        return prepared.location, built, prepared.manifest

    refs = {h: _prepare.remote(data, where) for h, (where, data) in items.items()}
    out = {}
    for h, ref in refs.items():
        try:
            out[h] = ray.get(ref)
        except RayTaskError as e:
            if isinstance(e.cause, AotError):
                raise e.cause from None
            raise
    return out


def sign_callback(uri: str, sweep: str, every_s: float = 30.0, stop: Any | None = None) -> Any:
    """A Tune callback that refreshes the sequential sign test over seeds (`signs.update`: metrics aot_sign* on
    the trial runs) while the sweep runs, at most every `every_s` seconds, and once more at the end; with `stop`
    (a SignStopSpec) it also asks settled cells to stop (their trainers see the request at their next
    evaluation). A failure only warns."""
    import warnings

    from ray.tune import Callback

    from . import signs
    from .aggregate.read import Reader

    class SignCallback(Callback):
        def __init__(self) -> None:
            self.last = 0.0
            self.reader: Reader | None = None

        def _update(self) -> None:
            try:
                self.reader = self.reader or Reader(uri, sweep)
                signs.update(self.reader, stop)
            except Exception as e:  # tracking hiccups must not stop the sweep
                warnings.warn(f"sign test not updated: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            self.last = time.monotonic()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if time.monotonic() - self.last >= every_s:
                self._update()

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self._update()
            if self.reader is not None:
                self.reader.close()

    return SignCallback()


def run_trials(
    pending: list[TrialSpec],
    all_trials: list[TrialSpec],
    ctx: SweepContext,
    *,
    data: dict[str, str],
    storage: str,
    experiment: str,
    run: RunSpec,
    restart_errored: bool = False,
    verbose: int = 1,
) -> tuple[list[TrialOutcome], bool]:
    """Run the sweep's Tune experiment `storage/experiment`: restore it when its state exists (finished
    trials stay finished; unfinished and errored ones continue from their checkpoints, or errored ones start
    over with `restart_errored`), else launch the `pending` trials (those of `all_trials` not finished in
    MLflow). Returns (outcomes, restored)."""
    from ray import tune

    by_id = {t.trial_id: t for t in all_trials}
    path = f"{storage.rstrip('/')}/{experiment}"
    dp_root = f"{path}/data-parallel"  # Ray Train runs of data-parallel trials, one folder per trial id
    trainable = tune.with_parameters(_trainable, trials=by_id, ctx=ctx, data=data, dp_root=dp_root)
    trainable = tune.with_resources(trainable, resources=lambda config: tune_resources(by_id[config["trial_id"]]))
    restored = tune.Tuner.can_restore(path)
    callbacks = [sign_callback(ctx.uri, ctx.sweep, run.sign_interval_s, run.stop_on_sign)]
    if restored:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=not restart_errored,
                                   restart_errored=restart_errored)
        # a restored Tuner keeps the callbacks it was created with; this run's sign settings (--stop-on-sign
        # given on resume, say) must apply, and Tuner.restore has no argument for them
        with contextlib.suppress(AttributeError):
            tuner._local_tuner.get_run_config().callbacks = callbacks
            tuner._local_tuner.get_run_config().verbose = verbose  # this run's --quiet, not the first run's
        if restart_errored and any(t.resources.workers > 1 for t in all_trials):
            # a restored result may lack its config; its folder is named by trial id (trial_dirname_creator)
            errored = [(r.config or {}).get("trial_id") or Path(r.path).name
                       for r in tuner.get_results() if r.error is not None]
            drop_data_parallel_runs(dp_root, [t for t in errored if t in by_id and by_id[t].resources.workers > 1])
    elif not pending:
        return [], False
    else:
        name_of = lambda t: t.config["trial_id"]  # noqa: E731
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search([t.trial_id for t in pending])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=run.max_concurrent_trials,
                reuse_actors=True,  # saves the torch/transformers import per trial
                trial_name_creator=name_of,
                trial_dirname_creator=name_of,
            ),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=run.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=max(t.train.keep_checkpoints for t in pending)),
                verbose=verbose,
                callbacks=callbacks,
            ),
        )
    grid = tuner.fit()
    outcomes = []
    for result in grid:
        err = None
        if result.error is not None:
            text = str(result.error).strip()
            err = text.splitlines()[-1] if text else type(result.error).__name__
        loss = (result.metrics or {}).get("val_loss")
        outcomes.append(TrialOutcome(result.config["trial_id"], result.error is None, err, loss))
    return outcomes, restored
