"""Trainer throughput against a minimal plain-torch loop on the same model and data, in the same process.

    python -m aot_ray.bench [--preset mini] [--context 128] [--batch 16] [--steps 120] [--repeats 5]

Both sides train the same GPT-2 preset from the same initialisation on windows of the same prepared data.
The trainer's time covers its steps and per-step bookkeeping (data, clipping, schedule, logging), not its
validation passes; the plain loop is forward, cross-entropy, backward, AdamW. Runs alternate and the median
of each side is compared (single runs vary by several percent on a busy
laptop; about 3 minutes on 2 CPU cores). The last line is `trainer/plain = R`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import seeds
from .data.prepare import prepare
from .models import build_model
from .spec import expand, parse_sweep
from .train import MemoryTracker, train


def bench_trial(preset: str, context: int, batch: int, steps: int, device: str):
    raw = {
        "name": "bench",
        "data": {"primes": {"kind": "primes", "digits": 3, "n_samples": 12000}},
        "defaults": {
            "optim": {"lr": 1e-3, "warmup_steps": 5},
            # one validation at the end (not timed), no checkpoints: pure training throughput
            "train": {"steps": steps, "batch_size": batch, "eval_every": steps, "log_every": 10,
                      "checkpoint_every": 0, "eval_windows": 8, "device": device},
        },
        "grid": {"dataset": ["primes"], "model": [preset], "context_length": [context], "direction": ["forward"]},
    }
    return expand(parse_sweep(raw))[0]


def plain_loop(trial, data, device: torch.device) -> float:
    """Tokens/s of the minimal loop: random windows, forward, loss, backward, AdamW step."""
    tokens = torch.from_numpy(np.asarray(data.train, dtype=np.int64))
    L, B = trial.context_length, trial.train.batch_size
    torch.manual_seed(seeds.derive(trial.seed, seeds.MODEL_INIT))
    model = build_model(trial.model, data.vocab_size, L, data.bos_id).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=trial.optim.lr, weight_decay=trial.optim.weight_decay)
    g = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for _ in range(trial.train.steps):
        starts = torch.randint(0, len(tokens) - L, (B,), generator=g)
        w = torch.stack([tokens[s : s + L] for s in starts.tolist()])
        x = torch.cat([torch.zeros(B, 1, dtype=torch.long), w[:, :-1]], dim=1).to(device)
        y = w.to(device)
        loss = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return trial.train.steps * B * L / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)

    trial = bench_trial(args.preset, args.context, args.batch, args.steps, args.device)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    root = tempfile.mkdtemp(prefix="aot-bench-")
    data, _ = prepare(trial.data, root)
    plain_loop(trial, data, device)  # warm-up: allocator, kernels, lazy imports
    trainer_tps, plain_tps = [], []
    for r in range(args.repeats):
        plain_tps.append(plain_loop(trial, data, device))
        trainer_tps.append(train(trial, MemoryTracker(), data=data).tokens_per_s)
        print(f"repeat {r + 1}: plain {plain_tps[-1]:,.0f} tok/s, trainer {trainer_tps[-1]:,.0f} tok/s", flush=True)
    p, t = statistics.median(plain_tps), statistics.median(trainer_tps)
    print(f"device {device}, preset {args.preset}, context {args.context}, batch {args.batch}, "
          f"{args.steps} steps x {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(f"plain loop: {p:,.0f} tokens/s (median)")
    print(f"trainer:    {t:,.0f} tokens/s (median)")
    print(f"trainer/plain = {t / p:.3f}")


if __name__ == "__main__":
    main()
