"""The only module that drives Ray Tune: one Tune trial per expanded trial, resources from the spec.

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

from .errors import AotError
from .spec.schema import RunSpec, TrialSpec
from .tracking import SweepContext

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@dataclass(frozen=True)
class TrialOutcome:
    trial_id: str
    ok: bool
    error: str | None
    val_loss: float | None


def resources_of(trial: TrialSpec) -> dict[str, float]:
    out = {"cpu": trial.resources.cpu}
    if trial.resources.gpu:
        out["gpu"] = trial.resources.gpu
    return out


def _trainable(config: dict[str, Any], trials: dict[str, TrialSpec], ctx: SweepContext, data: dict[str, str]) -> None:
    import torch
    from ray import tune

    from .tracking import TrialTracker
    from .train import train

    trial = trials[config["trial_id"]]
    torch.set_num_threads(trial.train.threads or max(1, int(trial.resources.cpu)))
    tracker = TrialTracker(ctx, trial)

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(path)) if path is not None else None
        tune.report(metrics, checkpoint=checkpoint)

    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as resume_from:
                train(trial, tracker, resume_from, data=data[trial.trial_id], on_report=report)
        else:
            train(trial, tracker, None, data=data[trial.trial_id], on_report=report)
    except BaseException as e:
        with contextlib.suppress(Exception):  # the trial's own error is the one to report
            if tracker.run_id is not None:
                tracker.finish("FAILED", error=f"{type(e).__name__}: {e}", patience_s=30)
        raise
    tracker.finish("FINISHED")


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None) -> bool:
    """Connect to `address` or start a local Ray; False when Ray was already initialised by the caller."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": True, "logging_level": "WARNING"}
    if address:
        kwargs["address"] = address
    else:
        kwargs["num_cpus"] = num_cpus
        kwargs["num_gpus"] = num_gpus
    ray.init(**kwargs)
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of a sweep: connect or start, and shut down only what this call started."""
    import ray

    started = init_ray(address, num_cpus, num_gpus)
    try:
        yield
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


def run_trials(
    trials: list[TrialSpec],
    ctx: SweepContext,
    *,
    data: dict[str, str],
    storage: str,
    run: RunSpec,
    verbose: int = 1,
) -> list[TrialOutcome]:
    """Run `trials` (each reading the prepared folder `data[trial_id]`) as one Tune experiment under `storage`."""
    from ray import tune

    by_id = {t.trial_id: t for t in trials}
    trainable = tune.with_parameters(_trainable, trials=by_id, ctx=ctx, data=data)
    trainable = tune.with_resources(trainable, resources=lambda config: resources_of(by_id[config["trial_id"]]))
    name_of = lambda t: t.config["trial_id"]  # noqa: E731
    tuner = tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search(list(by_id))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=run.max_concurrent_trials,
            reuse_actors=True,  # saves the torch/transformers import per trial
            trial_name_creator=name_of,
            trial_dirname_creator=name_of,
        ),
        run_config=tune.RunConfig(
            name=f"{ctx.sweep}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=run.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=verbose,
        ),
    )
    grid = tuner.fit()
    outcomes = []
    for result in grid:
        trial_id = result.config["trial_id"]
        err = None
        if result.error is not None:
            err = str(result.error).strip().splitlines()[-1] if str(result.error).strip() else type(result.error).__name__
        loss = (result.metrics or {}).get("val_loss")
        outcomes.append(TrialOutcome(trial_id, result.error is None, err, loss))
    return outcomes
