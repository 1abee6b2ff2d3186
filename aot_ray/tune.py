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
    out.update(trial.resources.custom)
    return out


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


def _trainable(config: dict[str, Any], trials: dict[str, TrialSpec], ctx: SweepContext, data: dict[str, str]) -> None:
    import torch
    from ray import tune

    from .tracking import TrialTracker
    from .train import train

    trial = trials[config["trial_id"]]
    torch.set_num_threads(trial.train.threads or max(1, int(trial.resources.cpu)))
    tracker = TrialTracker(ctx, trial)
    import ray

    tracker.extra_tags["aot.node"] = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(path)) if path is not None else None
        tune.report(metrics, checkpoint=checkpoint)

    try:
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as resume_from:
                # older persisted checkpoints are the fallback if the latest turns out unreadable
                train(trial, tracker, [resume_from, *_older_checkpoints(checkpoint)], data=data[trial.trial_id],
                      on_report=report)
        else:
            train(trial, tracker, None, data=data[trial.trial_id], on_report=report)
    except BaseException as e:
        with contextlib.suppress(Exception):  # the trial's own error is the one to report
            if tracker.run_id is not None:
                tracker.finish("FAILED", error=f"{type(e).__name__}: {e}", patience_s=30)
        raise
    tracker.finish("FINISHED")


def _older_checkpoints(latest: Any) -> list[str]:
    """Sibling checkpoint folders of the latest one, newest first (local storage only)."""
    path = Path(latest.path)
    if "://" in str(latest.path) or not path.parent.is_dir():
        return []
    return [str(p) for p in sorted(path.parent.glob("checkpoint_*"), reverse=True) if p != path]


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
    launch: list[TrialSpec],
    every: list[TrialSpec],
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
    over with `restart_errored`), else launch `launch`. Returns (outcomes, restored)."""
    from ray import tune

    by_id = {t.trial_id: t for t in every}
    trainable = tune.with_parameters(_trainable, trials=by_id, ctx=ctx, data=data)
    trainable = tune.with_resources(trainable, resources=lambda config: resources_of(by_id[config["trial_id"]]))
    path = f"{storage.rstrip('/')}/{experiment}"
    restored = tune.Tuner.can_restore(path)
    if restored:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=not restart_errored,
                                   restart_errored=restart_errored)
    elif not launch:
        return [], False
    else:
        name_of = lambda t: t.config["trial_id"]  # noqa: E731
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search([t.trial_id for t in launch])},
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
                checkpoint_config=tune.CheckpointConfig(num_to_keep=max(t.train.keep_checkpoints for t in launch)),
                verbose=verbose,
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
