"""Trainer throughput against a plain loop on the same model and data, in the same process.

    python -m aot_ray.bench                      # CPU: preset mini, context 128, batch 16, eager plain loop
    python -m aot_ray.bench --device cuda        # GPU: gpt-405m, context 256, global batch 180, bf16,
                                                 #      against a compiled plain loop (fused AdamW), with MFU
    python -m aot_ray.bench --device cuda --preset gpt-5m --pack 4 --memory
    python -m aot_ray.bench --device cuda --fsdp 0               # gpt-1.6b, FSDP2 over every GPU (sharded.py)

CPU: both sides train the same GPT-2 preset from the same initialisation on windows of the same prepared data;
the plain loop is forward, cross-entropy, backward, AdamW, eager. Runs alternate and the medians are compared
(about 3 minutes on 2 CPU cores). GPU: random tokens at `--vocab`; the plain loop is what a careful user would
write (torch.compile, fused AdamW, bf16 autocast, F.cross_entropy on full logits, the same micro-batches);
its compile is a warm-up, not timed, as the trainer keeps its own compile out of tokens/s. MFU = tokens/s x
(6 N + 12 L d T) / `--peak-tflops`. `--pack N` runs N trainer processes on one GPU at once, each with
`resources.gpu: 1/N`, and compares their summed tokens/s with one alone; `--memory` prints each trainer run's
predicted peak memory against `torch.cuda.max_memory_allocated`. The trainer's time covers its steps and
bookkeeping (data, clipping, schedule, logging), not validation. The last line is `trainer/plain = R`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import seeds
from ..data.prepare import Prepared, prepare
from ..data.tokenfile import dtype_for
from ..execution.notices import STOP_FILE, notice_check
from ..gpu_memory import gpu_budget_of, micro_batches, predict_trial
from ..models import build_model
from ..spec import expand, parse_sweep
from ..train import RecordingTracker, train
from ..train.device import autocast_for, scaler_for
from ..train.mfu import flops_per_token

H100_BF16_TFLOPS = 989.0  # dense bf16 peak of an H100 SXM
PERMUTED = "middle_out"  # the order the CPU benchmark times against forward (any permutation costs one gather)


def bench_trial(preset: str, context: int, batch: int, steps: int, device: str, micro: int | str | None = None,
                gpu: float = 0.0, vocab: int | None = None, order: str = "forward", fsdp: bool = False):
    data = {"kind": "primes", "digits": 3, "n_samples": 12000, "windows": "stream"}  # any context
    if vocab:  # stands for the random-token data the GPU mode builds (identity and memory model need a vocab)
        data = {"kind": "text", "paths": ["random"], "tokenizer": {"vocab_size": vocab}}
    raw = {
        "name": "bench",
        "data": {"d": data},
        "defaults": {
            "optim": {"lr": 1e-4 if vocab else 1e-3, "warmup_steps": 5},
            # one validation at the end (not timed), no checkpoints: pure training throughput
            "train": {"steps": steps, "batch_size": batch, "eval_every": steps, "log_every": 10,
                      "checkpoint_every": 0, "eval_windows": 8, "device": device, "micro_batch": micro},
            # FSDP's trial: sharded over the benchmark's process group, whatever its size (workers is its spec's)
            "resources": {"gpu": gpu, **({"workers": 2, "sharding": "fsdp"} if fsdp else {})},
        },
        "grid": {"dataset": ["d"], "model": [preset], "context_length": [context], "direction": [order]},
    }
    return expand(parse_sweep(raw))[0]


def random_data(vocab: int, tokens: int, root: str) -> Prepared:
    rng = np.random.default_rng(0)
    dtype = dtype_for(vocab)  # the token files' own rule
    train_t = rng.integers(1, vocab, tokens, dtype=np.int64).astype(dtype)
    val_t = rng.integers(1, vocab, tokens // 50, dtype=np.int64).astype(dtype)
    return Prepared(path=Path(root), train=train_t, val=val_t, vocab_size=vocab, bos_id=0, manifest={})


def plain_loop(trial, data, device: torch.device, micro: int, compiled: bool = False) -> float:
    """Tokens/s of the plain loop: random windows, forward, loss on full logits, backward, AdamW step."""
    tokens = torch.from_numpy(np.asarray(data.train, dtype=np.int64))
    L, G = trial.context_length, trial.train.batch_size * trial.train.grad_accum
    passes = G // micro
    torch.manual_seed(seeds.derive(trial.seed, seeds.MODEL_INIT))
    model = build_model(trial.model, data.vocab_size, L, data.bos_id).to(device)
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=trial.optim.lr, weight_decay=trial.optim.weight_decay,
                            fused=cuda or None)
    fwd = torch.compile(model) if compiled else model
    g = torch.Generator().manual_seed(0)

    def batch():
        starts = torch.randint(0, len(tokens) - L, (micro,), generator=g)
        w = torch.stack([tokens[s : s + L] for s in starts.tolist()])
        x = torch.cat([torch.zeros(micro, 1, dtype=torch.long), w[:, :-1]], dim=1)
        return x.to(device, non_blocking=True), w.to(device, non_blocking=True)

    # the trainer's precision rule (aot_ray.precision): bf16, or fp16 with loss scaling where the GPU has no bf16
    autocast, scaler = autocast_for(trial, device), scaler_for(trial, device)

    def step():
        for _ in range(passes):
            x, y = batch()
            with autocast():
                logits = fwd(input_ids=x).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            scaler.scale(loss / passes).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss

    model.train()
    if compiled:  # the compile and the first steps are a warm-up
        for _ in range(2):
            step()
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(trial.train.steps):
        loss = step()
    loss.item()
    if cuda:
        torch.cuda.synchronize(device)
    return trial.train.steps * G * L / (time.perf_counter() - t0)


def run_trainer(trial, data, memory: bool) -> dict:
    cuda = torch.cuda.is_available() and trial.train.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train(trial, RecordingTracker(), data=data)
    out = {"tokens_per_s": result.tokens_per_s, "compile_seconds": result.compile_seconds}
    if memory and cuda:
        budget = gpu_budget_of(trial, torch.cuda.get_device_properties(0).total_memory)
        micro, passes = micro_batches(trial, data.vocab_size, budget=budget)
        out.update(measured=torch.cuda.max_memory_allocated(),
                   predicted=predict_trial(trial, data.vocab_size, micro, passes).total, micro=micro, passes=passes)
    return out


def _packed_worker(trial, vocab: int, tokens: int, memory: bool, queue) -> None:
    data = random_data(vocab, tokens, tempfile.mkdtemp(prefix="aot-bench-"))
    queue.put(run_trainer(trial, data, memory))


def packed(trial, vocab: int, tokens: int, n: int, memory: bool) -> list[dict]:
    """N trainer processes on the GPU at once; each reports its own tokens/s (compile excluded)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_packed_worker, args=(trial, vocab, tokens, memory, q)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return out


def _mem_line(r: dict) -> str:
    if "measured" not in r:
        return ""
    return (f", peak {r['measured'] / 2**30:.2f} GiB measured vs {r['predicted'] / 2**30:.2f} GiB predicted "
            f"(ratio {r['predicted'] / r['measured']:.3f}, micro {r['micro']} x {r['passes']})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m aot_ray.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--preset")
    ap.add_argument("--context", type=int)
    ap.add_argument("--batch", type=int, help="global batch (windows per optimizer step)")
    ap.add_argument("--micro", default="auto", help="trainer micro-batch: auto or a number (GPU mode)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--vocab", type=int, default=50257, help="GPU mode: vocabulary of the random tokens")
    ap.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS)
    ap.add_argument("--pack", type=int, default=0, help="GPU mode: N trainer processes sharing the GPU")
    ap.add_argument("--memory", action="store_true", help="GPU mode: predicted against measured peak memory")
    ap.add_argument("--fsdp", type=int, metavar="N", help="the FSDP line (sharded.py): preset gpt-1.6b sharded over "
                    "N processes, one per GPU (0: every GPU); on the CPU, N gloo processes")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.fsdp is not None:
        fsdp_main(args, device)
    elif device.type == "cuda":
        gpu_main(args, device)
    else:
        cpu_main(args, device)


def fsdp_main(args, device: torch.device) -> None:
    from .sharded import PRESET, fsdp_line

    world = args.fsdp or (torch.cuda.device_count() if device.type == "cuda" else 2)
    preset, context, batch = args.preset or PRESET, args.context or 256, args.batch or 64
    steps = args.steps or 20
    micro = args.micro if args.micro == "auto" else int(args.micro)
    trial = bench_trial(preset, context, batch, steps, device.type, micro=micro if device.type == "cuda" else None,
                        vocab=args.vocab, fsdp=True)
    print(f"device {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}, preset {preset}, context "
          f"{context}, global batch {batch}, vocab {args.vocab}, {steps} steps, FSDP2 over {world}", flush=True)
    print(fsdp_line(trial, args.vocab, max(200_000, 4 * batch * context * steps), world, args.peak_tflops))


def cpu_main(args, device: torch.device) -> None:
    preset, context, batch = args.preset or "mini", args.context or 128, args.batch or 16
    steps, repeats = args.steps or 120, args.repeats or 5
    trial = bench_trial(preset, context, batch, steps, "cpu")
    # a permuted order (one gather per batch) against forward, in the same repeats: the target is >= 0.97
    permuted = bench_trial(preset, context, batch, steps, "cpu", order=PERMUTED)
    data, _ = prepare(trial.data, tempfile.mkdtemp(prefix="aot-bench-"))
    plain_loop(trial, data, device, batch)  # warm-up: allocator, kernels, lazy imports
    # the driver's stop notice looked for after every step (a real `notice_check` of a file never posted), against
    # the trainer without it, in the same repeats: the target is >= 0.99
    notice = notice_check(os.path.join(tempfile.mkdtemp(prefix="aot-bench-"), STOP_FILE))
    trainer_tps, plain_tps, permuted_tps, watched_tps = [], [], [], []
    for r in range(repeats):
        plain_tps.append(plain_loop(trial, data, device, batch))
        trainer_tps.append(train(trial, RecordingTracker(), data=data).tokens_per_s)
        permuted_tps.append(train(permuted, RecordingTracker(), data=data).tokens_per_s)
        watched_tps.append(train(trial, RecordingTracker(), data=data, stop_notice=notice).tokens_per_s)
        print(f"repeat {r + 1}: plain {plain_tps[-1]:,.0f} tok/s, trainer {trainer_tps[-1]:,.0f} tok/s, "
              f"{PERMUTED} {permuted_tps[-1]:,.0f} tok/s, watched {watched_tps[-1]:,.0f} tok/s", flush=True)
    p, t = (statistics.median(x) for x in (plain_tps, trainer_tps))
    print(f"device {device}, preset {preset}, context {context}, batch {batch}, "
          f"{steps} steps x {repeats} repeats, torch threads {torch.get_num_threads()}")
    print(f"plain loop: {p:,.0f} tokens/s (median)")
    print(f"trainer:    {t:,.0f} tokens/s (median)")
    print(f"trainer/plain = {t / p:.3f}")
    # each ratio is the median over repeats of that repeat's own ratio (its runs back to back, on the same machine
    # state): this 2-core machine drifts by several percent between repeats, more than a gather costs
    po = statistics.median(a / b for a, b in zip(permuted_tps, trainer_tps))
    pw = statistics.median(a / b for a, b in zip(watched_tps, trainer_tps))
    print(f"{PERMUTED}/forward = {po:.3f} (median of per-repeat ratios; target >= 0.97, met: {po >= 0.97})")
    print(f"stop notice looked for after every step / not looked for = {pw:.3f} (median of per-repeat ratios; "
          f"target >= 0.99, met: {pw >= 0.99})")


def gpu_main(args, device: torch.device) -> None:
    preset, context, batch = args.preset or "gpt-405m", args.context or 256, args.batch or 180
    steps, repeats = args.steps or 30, args.repeats or 2
    micro = args.micro if args.micro == "auto" else int(args.micro)
    share = 1.0 / args.pack if args.pack > 1 else 0.0
    trial = bench_trial(preset, context, batch, steps, "cuda", micro=micro, gpu=share, vocab=args.vocab)
    tokens = max(2_000_000, 4 * batch * context * steps)
    data = random_data(args.vocab, tokens, tempfile.mkdtemp(prefix="aot-bench-"))
    fpt = flops_per_token(trial, args.vocab)
    mfu = lambda tps: tps * fpt / (args.peak_tflops * 1e12)  # noqa: E731
    print(f"device {torch.cuda.get_device_name(0)}, preset {preset}, context {context}, global batch {batch}, "
          f"vocab {args.vocab}, {steps} steps x {repeats} repeats", flush=True)
    if args.pack > 1:
        alone = run_trainer(trial, data, args.memory)
        print(f"one trainer alone (gpu {share:g}): {alone['tokens_per_s']:,.0f} tok/s{_mem_line(alone)}", flush=True)
        together = packed(trial, args.vocab, tokens, args.pack, args.memory)
        for i, r in enumerate(together):
            print(f"packed trainer {i + 1}: {r['tokens_per_s']:,.0f} tok/s{_mem_line(r)}", flush=True)
        total = sum(r["tokens_per_s"] for r in together)
        print(f"{args.pack} packed: {total:,.0f} tok/s together, MFU {mfu(total):.1%}")
        print(f"packed/alone = {total / alone['tokens_per_s']:.3f}")
        return
    budget = torch.cuda.get_device_properties(0).total_memory
    m, _ = micro_batches(trial, args.vocab, budget=budget)
    plain_micro = m if micro == "auto" else micro
    trainer_tps, plain_tps = [], []
    for r in range(repeats):
        plain_tps.append(plain_loop(trial, data, device, plain_micro, compiled=True))
        res = run_trainer(trial, data, args.memory)
        trainer_tps.append(res["tokens_per_s"])
        print(f"repeat {r + 1}: compiled plain loop {plain_tps[-1]:,.0f} tok/s (MFU {mfu(plain_tps[-1]):.1%}), "
              f"trainer {trainer_tps[-1]:,.0f} tok/s (MFU {mfu(trainer_tps[-1]):.1%}, compile "
              f"{res['compile_seconds']:.1f} s){_mem_line(res)}", flush=True)
        torch.cuda.empty_cache()
    p, t = statistics.median(plain_tps), statistics.median(trainer_tps)
    print(f"compiled plain loop (micro {plain_micro}): {p:,.0f} tokens/s, MFU {mfu(p):.1%}")
    print(f"trainer:                {t:,.0f} tokens/s, MFU {mfu(t):.1%}")
    print(f"trainer/plain = {t / p:.3f}")


if __name__ == "__main__":
    main()
