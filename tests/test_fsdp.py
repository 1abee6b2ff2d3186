"""Sharded data parallel (FSDP2's `fully_shard`) without Ray, on CPU over gloo: 2 workers train the same curve as
one process; a sharded checkpoint resumes exactly, at the same worker count and in one process."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from aot_ray.data.prepare import prepare
from aot_ray.spec import expand, parse_sweep
from aot_ray.train import RecordingTracker, train

from specs import tiny_sweep

pytestmark = pytest.mark.slow  # real training in several processes: kept out of the fast loop

SPEC = tiny_sweep("fsdp", data={"val_fraction": 0.25}, optim={"warmup_steps": 3},
                  train={"steps": 20, "grad_accum": 2, "eval_every": 10, "checkpoint_every": 10},
                  grid={"direction": ["backward"]})
SPEC["defaults"]["resources"] = {"workers": 2, "sharding": "fsdp"}


def trial_and_data(tmp: Path):
    (trial,) = expand(parse_sweep(SPEC))
    return trial, prepare(trial.data, tmp / "store")[0]


def _worker(rank: int, world: int, tmp: str, resume: str | None, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg-{out}", rank=rank, world_size=world)
    try:
        trial, data = trial_and_data(Path(tmp))
        tracker = RecordingTracker()
        result = train(trial, tracker, [resume] if resume else None, data=data, workdir=Path(tmp) / f"ckpt-{out}")
        Path(tmp, f"{out}-rank{rank}.json").write_text(json.dumps({
            "val_loss": result.val_loss, "per_window": result.per_window.tolist(),
            "train_loss": tracker.metrics.get("train_loss", [])}))
    finally:
        dist.destroy_process_group()


def sharded_run(tmp: Path, out: str, resume: str | None = None) -> dict:
    mp.spawn(_worker, args=(2, str(tmp), resume, out), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp / f"{out}-rank{r}.json").read_text()) for r in (0, 1))
    assert r0["val_loss"] == r1["val_loss"]  # every worker evaluates the same (gathered) model
    return r0


def test_two_sharded_workers_train_the_single_process_curve(tmp_path):
    trial, data = trial_and_data(tmp_path)
    single_tracker = RecordingTracker()
    single = train(trial, single_tracker, data=data)
    r0 = sharded_run(tmp_path, "fsdp")
    assert abs(r0["val_loss"] - single.val_loss) < 1e-4, (r0["val_loss"], single.val_loss)
    np.testing.assert_allclose(r0["per_window"], single.per_window, atol=1e-4)
    np.testing.assert_allclose([v for _, v in r0["train_loss"]],
                               [v for _, v in single_tracker.metrics["train_loss"]], atol=1e-4)
    # one checkpoint per due step: the shards of both workers and their index, the rest written once
    folder = tmp_path / "ckpt-fsdp" / "step-00000010"
    assert sorted(p.name for p in (folder / "shards").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert json.loads((folder / "meta.json").read_text())["sharded"] is True


def test_a_sharded_checkpoint_resumes_exactly_with_two_workers_and_in_one_process(tmp_path):
    trial, data = trial_and_data(tmp_path)
    straight = sharded_run(tmp_path, "straight")
    at_10 = str(tmp_path / "ckpt-straight" / "step-00000010")
    resumed = sharded_run(tmp_path, "resumed", resume=at_10)  # steps 11-20 after a resume at 10
    assert abs(resumed["val_loss"] - straight["val_loss"]) < 1e-5
    np.testing.assert_allclose(resumed["per_window"], straight["per_window"], atol=1e-5)
    # another worker count: one process, not sharded, reads the two workers' shards
    tracker = RecordingTracker()
    one = train(trial, tracker, [at_10], data=data, workdir=tmp_path / "ckpt-one")
    assert abs(one.val_loss - straight["val_loss"]) < 1e-4
    assert [s for s, _ in tracker.metrics["resumed_from_step"]] == [10]


def test_the_benchmark_s_fsdp_line_runs_on_cpu_processes():
    """`python -m aot_ray.bench --fsdp N`: the GPU benchmark's FSDP line (gpt-1.6b over the machine's GPUs, NCCL),
    here with gloo over 2 CPU processes and a small preset: the same code path, a line with its figures."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "aot_ray.bench", "--device", "cpu", "--fsdp", "2", "--preset", "tiny",
                        "--context", "32", "--batch", "8", "--steps", "8", "--vocab", "500"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    line = p.stdout.strip().splitlines()[-1]
    assert line.startswith("tiny FSDP over 2 processes: ") and " per worker" in line, p.stdout
    assert float(line.split(": ")[1].split(" tokens/s")[0].replace(",", "")) > 0
