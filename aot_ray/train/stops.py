"""How a trial ends before its last step, and the checkpoint it leaves: the sweep's sign test settled its pair (a
tag its tracker reads, at an evaluation), or its driver asks it to stop (`stop_notice`: the sweep stops, on a
signal or a lost tracking store, or the trial's node is draining and the trial moves; the trial checkpoints at
once, reports why and raises StopRequested). `save` writes a trial's checkpoint, with
what its tracker has not yet seen confirmed in the store, so that a resume leaves no gap in the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..errors import StopRequested
from . import checkpoint as ckpt
from .tracker_api import NOTICE_MOVE, STOP_WHY, STOPPED_AT, Tracker

Report = Callable[[dict[str, Any], "Path | None"], None]


def sign_stop_at(tracker: Tracker, n_workers: int, device: torch.device) -> int | None:
    """Rank 0 asks its tracker; under data parallelism it tells the other ranks, so all stop at the same step."""
    at = tracker.stop_requested()
    if n_workers > 1:
        flag = torch.tensor([-1 if at is None else at], dtype=torch.long, device=device)
        dist.broadcast(flag, src=0)
        at = None if int(flag.item()) < 0 else int(flag.item())
    return at


def notice_posted(r: Any, stop_notice: Callable[[], int]) -> int:
    """What the driver asks of the trial (0: nothing; NOTICE_MOVE or NOTICE_STOP): every rank looks (a drain
    notice is its own node's), and under data parallelism the largest code wins on all ranks (all stop alike)."""
    posted = int(stop_notice())
    if r.hw.n_workers > 1:
        flag = torch.tensor([posted], dtype=torch.long, device=r.hw.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        posted = int(flag.item())
    return posted


def save(r: Any, step: int, loss: float | None, on_report: Report | None, local_dir: Path | None,
          scratch: Path) -> Path | None:
    """Rank 0 writes a checkpoint at `step` (into `scratch` for `on_report` to persist, else into `local_dir`,
    pruned there); it carries what the tracker has not yet seen confirmed in the store. A sharded (FSDP) trial's
    workers all write theirs (each its own shards), and each returns its folder."""
    if (r.hw.rank != 0 and not r.learner.sharded) or (on_report is None and local_dir is None):
        return None
    carried = r.tracker.carry()
    learner = r.learner
    state = {"scheduler": learner.sched.state_dict(), "scaler": r.hw.scaler.state_dict(), "rng": ckpt.rng_state(),
             "carried": carried}
    meta = {"trial_id": r.trial.trial_id, "step": step, "samples_seen": step * r.batching.global_batch,
            "tokens": step * r.batching.tokens_per_step, "run_id": r.tracker.run_id, "val_loss": loss}
    if carried is not None:
        meta["confirmed"] = carried["confirmed"]
    dest = (scratch if on_report is not None else local_dir) / f"step-{step:08d}"
    if learner.sharded:
        path = ckpt.write_sharded(dest, learner.model, learner.opt, state, meta, r.hw.rank,
                                  shared=on_report is None)
    else:
        path = ckpt.write(dest, {"model": learner.model.state_dict(), "optimizer": learner.opt.state_dict(),
                                 **state}, meta)
    if on_report is None and r.hw.rank == 0:
        ckpt.prune(local_dir, r.trial.train.keep_checkpoints)
    return path


def stop_now(r: Any, step: int, why: int, on_report: Report | None, local_dir: Path | None,
             scratch: Path) -> None:
    """The driver asked the trial to stop (`stop_notice` said `why`): checkpoint at this step, hand it over with
    the reason, and stop."""
    r.tracker.flush()  # what the store still takes; the checkpoint carries the rest
    path = save(r, step, None, on_report, local_dir, scratch)
    if on_report is not None:
        # the driver says it
        on_report({"step": step, "tokens": step * r.batching.tokens_per_step, STOPPED_AT: step, STOP_WHY: why},
                  path)
    what = "its node is draining; it moves" if why == NOTICE_MOVE else "as its driver asked"
    raise StopRequested(f"trial {r.trial.trial_id} stopped at step {step}, {what} (checkpointed)")
