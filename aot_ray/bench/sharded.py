"""The benchmark's FSDP line: the paper's largest size (gpt-1.6b) trained as a `sharding: fsdp` trial, with
FSDP2 over N processes of this machine, one per GPU (NCCL), as Ray Train's workers run it.

    python -m aot_ray.bench --device cuda --fsdp 0          # every GPU of the machine (one: no communication)
    python -m aot_ray.bench --device cpu --fsdp 2 --preset tiny --context 32 --batch 8 --steps 3   # gloo

Each rank reports its tokens/s (its own slice of every global batch, compile excluded) and its peak memory
against the memory model's prediction for N shards; the line gives the total, tokens/s per GPU, MFU per GPU and
the worst rank's measured against predicted peak. On one GPU the model is sharded over one rank: FSDP2's code
path and memory without communication, which N GPUs add.
"""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..gpu_memory import gpu_budget_of, micro_batches, predict_trial
from ..train import RecordingTracker, train
from ..train.mfu import flops_per_token

PRESET = "gpt-1.6b"


def _rank(rank: int, world: int, port: int, trial, vocab: int, tokens: int, queue) -> None:
    from .trainer import random_data  # the same random tokens on every rank (one seed)

    cuda = trial.train.device == "cuda"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        data = random_data(vocab, tokens, tempfile.mkdtemp(prefix="aot-bench-"))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = train(trial, RecordingTracker(), data=data)
        out = {"rank": rank, "tokens_per_s": result.tokens_per_s}
        if cuda:
            budget = gpu_budget_of(trial, torch.cuda.get_device_properties(rank).total_memory)
            micro, passes = micro_batches(trial, vocab, workers=world, budget=budget)
            out.update(measured=torch.cuda.max_memory_allocated(), micro=micro, passes=passes,
                       predicted=predict_trial(trial, vocab, micro, passes, workers=world).total)
        queue.put(out)
    finally:
        dist.destroy_process_group()


def fsdp_line(trial, vocab: int, tokens: int, world: int, peak_tflops: float) -> str:
    """Train `trial` (a `sharding: fsdp` trial) over `world` processes; one line of figures."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as sock:  # a free port for the process group's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [ctx.Process(target=_rank, args=(r, world, port, trial, vocab, tokens, queue)) for r in range(world)]
    for p in procs:
        p.start()
    got = sorted((queue.get() for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
    # every rank times the same steps of the same global batch: the trial's rate is any rank's (their mean)
    tps = sum(r["tokens_per_s"] for r in got) / world
    per_gpu = tps / world
    mfu = per_gpu * flops_per_token(trial, vocab) / (peak_tflops * 1e12)
    on_gpu = trial.train.device == "cuda"
    unit = ("GPU" if world == 1 else "GPUs") if on_gpu else ("process" if world == 1 else "processes")
    line = f"{trial.model.preset} FSDP over {world} {unit}: {tps:,.0f} tokens/s, {per_gpu:,.0f} per worker"
    if on_gpu:
        line += f", MFU {mfu:.1%} per GPU"
    if "measured" in got[0]:
        worst = max(got, key=lambda r: r["measured"])
        line += (f"; peak {worst['measured'] / 2**30:.2f} GiB measured vs {worst['predicted'] / 2**30:.2f} GiB "
                 f"predicted for {world} shard(s) (ratio {worst['predicted'] / worst['measured']:.3f}, micro "
                 f"{worst['micro']} x {worst['passes']})")
    return line
