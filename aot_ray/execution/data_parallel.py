"""Data-parallel trials (resources.workers > 1): a Ray Train `TorchTrainer` inside the Tune trial, DDP over NCCL
on GPUs or gloo on CPUs. The Tune side (`tune._trainable`) calls `run_data_parallel`; its metrics reach Tune through
Ray Train's `TuneReportCallback`. Rank 0 writes the trial's MLflow run and its checkpoints."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import AotError, StopRequested
from ..spec.schema import TrialSpec
from ..tracking import NODE, WORKERS, SweepContext, TrialTracker, client, run_holds
from .drains import trial_notice
from .notices import wait_to_be_stopped


def worker_resources(trial: TrialSpec) -> dict[str, float]:
    """Ray Train's `resources_per_worker` for a data-parallel trial."""
    r = trial.resources
    return {"CPU": r.cpu, **({"GPU": r.gpu} if r.gpu else {}), **r.custom}


def check_data_parallel_fits(trials: list[TrialSpec], own_ray: bool, say: Any = print) -> None:
    """Every trial must be able to run: a single-process trial on one node, a data-parallel trial's workers on
    the cluster at once. On a Ray this process started, nothing can grow it: refuse before anything starts (a
    trial that can never be placed would wait forever); on a cluster, say so (an autoscaler may add nodes)."""
    import ray

    have = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for trial in trials:
        if trial.resources.workers == 1:
            need = worker_resources(trial)
            if any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
                continue
            best = max(nodes, key=lambda node: node.get("CPU", 0), default={})
            what = ", ".join(f"{v:g} {k}" for k, v in need.items() if best.get(k, 0) < v)
            where = ", ".join(f"{best.get(k, 0):g} {k}" for k, v in need.items() if best.get(k, 0) < v)
            msg = f"trial {trial.trial_id} needs {what} on one node; the largest node has {where}"
            if own_ray:
                raise AotError(f"{msg}: it could never start; lower resources.cpu/gpu (per_model or defaults), or "
                               f"pass --num-cpus/--num-gpus or --address of a larger cluster")
            say(f"warning: {msg}; it waits until the autoscaler adds such a node")
            continue
        need = {k: v * trial.resources.workers for k, v in worker_resources(trial).items()}
        short = {k: v for k, v in need.items() if have.get(k, 0) < v}
        if not short:
            continue
        what = ", ".join(f"{v:g} {k} (has {have.get(k, 0):g})" for k, v in short.items())
        msg = f"trial {trial.trial_id} needs {trial.resources.workers} workers: {what}"
        if own_ray:
            raise AotError(f"{msg}; lower resources.workers or per-worker resources, or pass --num-cpus/--num-gpus "
                           f"or --address of a larger cluster")
        say(f"warning: {msg}; it waits until the autoscaler adds nodes")
    return None


def _dp_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial: torch.distributed is set up by TorchTrainer, so `train`
    shards the batch and wraps the model in DDP; rank 0 logs to MLflow and writes the checkpoints."""
    import ray
    import ray.train

    from ..train import RecordingTracker  # torch: in Ray Train's worker processes only, never the driver
    from ..train.tracked_run import train_tracked

    trial: TrialSpec = config["trial"]
    # Ray Train sets the workers' root logger to INFO, where it logs every report of every rank (its logger is
    # named by file path, so LoggingConfig does not reach it); progress is in MLflow and Tune's table
    logging.getLogger().setLevel(logging.WARNING)
    rank = ray.train.get_context().get_world_rank()
    tracker: Any = TrialTracker(config["ctx"], trial) if rank == 0 else RecordingTracker()
    if rank == 0:
        tracker.extra_tags[NODE] = ray.get_runtime_context().get_node_id()
        tracker.extra_tags[WORKERS] = str(trial.resources.workers)

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(path)) if path is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)  # every rank calls it: it is a collective

    checkpoint = ray.train.get_checkpoint()
    root = config.get("root", "")
    notice = trial_notice(root, ray.get_runtime_context().get_node_id(), config.get("host_node")) if root else None
    run = functools.partial(train_tracked, trial, tracker, data=config["data"], on_report=report,
                            interrupts_resume=False, closes_run=rank == 0,  # the other ranks' trackers only follow
                            stop_notice=notice)
    try:
        if checkpoint is not None:
            with checkpoint.as_directory() as resume_from:
                # every rank decides alike (from the same MLflow run) whether the checkpoint may be resumed from
                try:
                    meta = json.loads((Path(resume_from) / "meta.json").read_text())
                    held = run_holds(client(config["ctx"].uri), meta.get("run_id"),
                                     int(meta.get("confirmed", meta["step"])))
                except (OSError, ValueError, KeyError):
                    held = True  # an unreadable checkpoint is the trainer's to refuse, on every rank alike
                run([resume_from] if held else None)
        else:
            run(None)
    except StopRequested:
        wait_to_be_stopped()


def run_data_parallel(trial: TrialSpec, ctx: SweepContext, data: str, dp_root: str, root: str = "",
                      host_node: str | None = None) -> None:
    """A data-parallel trial: a Ray Train run named after the trial under `dp_root`, its metrics forwarded to
    Tune. A retry of the Tune trial (or a resumed sweep, or a move off a draining node) starts a run of the same
    name, which Ray Train resumes from its latest checkpoint; the sweep's `max_failures` is spent by Tune alone.
    `root`: the Tune experiment's folder, where the notices are; `host_node`: the node of this Tune process."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = TorchTrainer(
        _dp_worker,
        train_loop_config={"trial": trial, "ctx": ctx, "data": data, "root": root, "host_node": host_node},
        torch_config=TorchConfig(backend="nccl" if trial.resources.gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=trial.resources.workers, use_gpu=bool(trial.resources.gpu),
            resources_per_worker=worker_resources(trial)),
        run_config=ray.train.RunConfig(
            name=trial.trial_id,
            storage_path=dp_root,
            failure_config=ray.train.FailureConfig(max_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=trial.train.keep_checkpoints),
            callbacks=[TuneReportCallback()],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # not a line per report per worker
        ),
    )
    trainer.fit()


def drop_data_parallel_runs(dp_root: str, trial_ids: list[str]) -> None:
    """Delete the Ray Train runs of these trials, so that they start over instead of resuming."""

    for tid in trial_ids:
        storage.remove_tree(storage.under(dp_root, tid, what="trial id"))
