"""Data parallel without Ray: 2 gloo workers train the same trial as 1 process (the batch is global and each
worker takes its slice of the per-sample batch order), and only rank 0 logs and writes checkpoints."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aot_ray.data.prepare import prepare
from aot_ray.spec import expand, parse_sweep
from aot_ray.train import RecordingTracker, train

from specs import tiny_sweep

pytestmark = pytest.mark.slow  # real training in several processes: kept out of the fast loop

SPEC = tiny_sweep("ddp", data={"val_fraction": 0.25}, optim={"warmup_steps": 3},
                  train={"steps": 20, "grad_accum": 2, "eval_every": 10}, grid={"direction": ["backward"]})


def _worker(rank: int, world: int, tmp: str, stop_at: int | None = None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        (trial,) = expand(parse_sweep(SPEC))
        data = prepare(trial.data, Path(tmp) / "store")[0]
        tracker = RecordingTracker()
        tracker.stop_at = stop_at if rank == 0 else None  # only rank 0 has the real tracker
        result = train(trial, tracker, data=data, workdir=Path(tmp) / f"ckpt-{rank}")
        Path(tmp, f"rank{rank}.json").write_text(json.dumps({
            "val_loss": result.val_loss, "steps": result.steps, "per_window": result.per_window.tolist(),
            "logged": sorted(tracker.metrics), "train_loss": tracker.metrics.get("train_loss", []),
        }))
    finally:
        dist.destroy_process_group()


def test_two_workers_match_one_process(tmp_path):
    (trial,) = expand(parse_sweep(SPEC))
    data = prepare(trial.data, tmp_path / "store")[0]
    single_tracker = RecordingTracker()
    single = train(trial, single_tracker, data=data)

    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert abs(r0["val_loss"] - single.val_loss) < 1e-4, (r0["val_loss"], single.val_loss)
    np.testing.assert_allclose(r0["per_window"], single.per_window, atol=1e-4)
    assert r0["val_loss"] == r1["val_loss"]  # every worker holds the same model
    train_single = [v for _, v in single_tracker.metrics["train_loss"]]
    np.testing.assert_allclose([v for _, v in r0["train_loss"]], train_single, atol=1e-4)  # all-reduced
    assert "val_loss" in r0["logged"] and r1["logged"] == []  # rank 1 logs nothing
    assert sorted(p.name for p in (tmp_path / "ckpt-0").iterdir()) == ["step-00000010", "step-00000020"]
    assert not (tmp_path / "ckpt-1").exists()  # rank 1 writes no checkpoint


def test_a_stop_request_seen_by_rank_0_stops_every_worker(tmp_path):
    """Rank 0 alone reads the sweep's stop request; it broadcasts it, so both workers end at the same evaluation
    (a worker that kept going would wait forever in the next all-reduce)."""
    procs = mp.spawn(_worker, args=(2, str(tmp_path), 10), nprocs=2, join=False)
    deadline = 120
    while not procs.join(timeout=5):
        deadline -= 5
        if deadline <= 0:
            for p in procs.processes:
                p.kill()
            raise AssertionError("the workers did not stop together (a rank is blocked in a collective)")
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["steps"] == r1["steps"] == 10
    assert r0["val_loss"] == r1["val_loss"]


def _drained_worker(rank: int, world: int, tmp: str) -> None:
    """Rank 1 alone is on a draining node: its drain notice appears after its 7th step."""
    from aot_ray.errors import StopRequested
    from aot_ray.train.tracker_api import NOTICE_MOVE, STOP_WHY, STOPPED_AT

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    calls = {"n": 0}

    def notice() -> int:
        calls["n"] += 1
        return NOTICE_MOVE if rank == 1 and calls["n"] >= 7 else 0

    reports = []
    try:
        (trial,) = expand(parse_sweep(SPEC))
        data = prepare(trial.data, Path(tmp) / "store")[0]
        try:
            train(trial, RecordingTracker(), data=data, on_report=lambda m, p: reports.append(m), stop_notice=notice)
        except StopRequested as e:
            stopped = str(e)
        last = reports[-1]
        Path(tmp, f"rank{rank}.json").write_text(json.dumps({
            "stopped_at": last.get(STOPPED_AT), "why": last.get(STOP_WHY), "said": stopped}))
    finally:
        dist.destroy_process_group()


def test_a_drain_notice_seen_by_any_rank_stops_every_worker_at_the_same_step(tmp_path):
    """Each worker looks for the drain notice of its own node: the one that sees it tells the others (the largest
    code wins), so all checkpoint at the same step and report that the trial moves."""
    from aot_ray.train.tracker_api import NOTICE_MOVE

    mp.spawn(_drained_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["stopped_at"] == r1["stopped_at"] == 7 and r0["why"] == r1["why"] == NOTICE_MOVE
    assert "its node is draining" in r0["said"]
