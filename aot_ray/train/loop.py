"""train(trial, tracker, checkpoint) -> TrainResult: plain torch, no Ray.

The batch at step s is a pure function of (data seed, s), so a resumed run draws exactly the batches the
uninterrupted one would have. Validation uses a fixed window set shared by every trial of the dataset.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from .. import seeds
from ..data.prepare import Prepared, load
from ..data.windows import BatchOrder, Windows, eval_indices, orient, with_bos
from ..memory import micro_batches
from ..models import arch_of, build_model
from ..spec.expand import flatten
from ..spec.schema import TrialSpec
from . import checkpoint as ckpt
from .batches import Prefetcher
from .evaluate import evaluate
from .loss import LMObjective
from .schedule import make_scheduler
from .tracker import MemoryTracker, Tracker

Report = Callable[[dict[str, Any], "Path | None"], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message names batch size, context and model."""


@dataclass
class TrainResult:
    trial_id: str
    steps: int
    tokens: int
    n_params: int
    val_loss: float
    train_loss: float
    train_seconds: float
    tokens_per_s: float
    per_window: np.ndarray
    per_position: np.ndarray
    compile_seconds: float = 0.0


def pick_device(trial: TrialSpec) -> torch.device:
    want = trial.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_for(trial: TrialSpec, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    bf16 = trial.train.precision == "bf16" or (
        trial.train.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def compile_for(trial: TrialSpec, device: torch.device) -> bool:
    """`train.compile`: `auto` compiles GPT models on CUDA (LSTM/GRU keep cuDNN's fused kernels)."""
    c = trial.train.compile
    if c == "auto":
        return device.type == "cuda" and arch_of(trial.model.preset) == "gpt2"
    return bool(c)


def gpu_budget(trial: TrialSpec, device: torch.device) -> int | None:
    """Bytes of this GPU the trial may use: its `resources.gpu` share of the device (all of it when 0 or >= 1)."""
    if device.type != "cuda":
        return None
    total = torch.cuda.get_device_properties(device).total_memory
    share = trial.resources.gpu
    return int(total * share) if 0 < share < 1 else total


def world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _stop_requested(tracker: Tracker, n_workers: int, device: torch.device) -> int | None:
    """Rank 0 asks its tracker; under data parallelism it tells the other ranks, so all stop at the same step."""
    at = tracker.stop_requested()
    if n_workers > 1:
        flag = torch.tensor([-1 if at is None else at], dtype=torch.long, device=device)
        dist.broadcast(flag, src=0)
        at = None if int(flag.item()) < 0 else int(flag.item())
    return at


def _optimizer(model: torch.nn.Module, trial: TrialSpec) -> torch.optim.Optimizer:
    # weight decay on matrices only (not biases, layer norms), as in nanoGPT
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": trial.optim.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    o = trial.optim
    # the fused kernel: one launch for all parameters, no per-parameter temporaries (CPU and CUDA)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)


def train(
    trial: TrialSpec,
    tracker: Tracker,
    checkpoint: str | Path | list[str | Path] | None = None,
    *,
    data: Prepared | str | Path,
    on_report: Report | None = None,
    workdir: str | Path | None = None,
) -> TrainResult:
    """Train one trial on prepared `data` (a folder made by `data.prepare`); resume from `checkpoint` when given
    (a folder, or candidate folders newest first: an unreadable one falls back to the next).

    Under an initialised torch.distributed process group the model is wrapped in DDP and each worker takes its
    slice of every batch (`train.batch_size` is the global batch, so results do not depend on the worker count);
    rank 0 alone logs and writes checkpoints, and every rank calls `on_report`. Validation metrics go to `on_report` with a
    checkpoint folder (Ray Tune's adapter persists it); without `on_report`, checkpoints go under `workdir`."""
    t = trial.train
    if t.threads:
        torch.set_num_threads(t.threads)
    rank, n_workers = world()
    if t.batch_size % n_workers:
        raise ValueError(f"train.batch_size {t.batch_size} is not divisible by {n_workers} data-parallel workers")
    if rank != 0:
        tracker = MemoryTracker()  # one writer per trial: rank 0
    device = pick_device(trial)
    if device.type == "cuda" and n_workers > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    autocast = autocast_for(trial, device)
    if not isinstance(data, Prepared):
        data = load(data)
    train_w = Windows(data.train, trial.context_length, trial.stride)
    val_w = Windows(data.val, trial.context_length, trial.context_length)
    order = BatchOrder(len(train_w), seeds.derive(trial.seed, seeds.DATA_ORDER))

    val_idx = eval_indices(len(val_w), t.eval_windows)
    vx, vy = with_bos(orient(val_w.get(val_idx), trial.direction), data.bos_id)
    val_inputs, val_targets = torch.from_numpy(vx).to(device), torch.from_numpy(vy).to(device)

    torch.manual_seed(seeds.derive(trial.seed, seeds.MODEL_INIT))
    model = build_model(trial.model, data.vocab_size, trial.context_length, data.bos_id).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    compiled = compile_for(trial, device)
    objective = LMObjective(model, compile=compiled)
    net: torch.nn.Module = objective
    if n_workers > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    opt = _optimizer(model, trial)
    sched = make_scheduler(opt, trial.optim, t.steps)
    torch.manual_seed(seeds.derive(trial.seed, seeds.DROPOUT))

    step = 0
    candidates = [] if checkpoint is None else checkpoint if isinstance(checkpoint, list) else [checkpoint]
    found = ckpt.read_first_valid(candidates)
    if found is not None:
        state, meta, _ = found
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        step = int(meta["step"])
        tracker.begin(step, meta.get("run_id"))
        tracker.log_metrics({"resumed_from_step": step}, step=step)
    else:
        tracker.begin(None)
        tracker.log_params({**flatten(trial), "n_params": n_params, "vocab_size": data.vocab_size})
        tracker.log_metrics({"n_params": n_params}, step=0)

    micro, passes = micro_batches(trial, data.vocab_size, workers=n_workers, budget=gpu_budget(trial, device),
                                  backend=device.type)
    global_batch = t.batch_size * t.grad_accum
    tokens_per_step = global_batch * trial.context_length
    # metrics, not params: a retry on another GPU may resolve `auto` differently, and MLflow params are immutable
    tracker.log_metrics({"micro_batch": micro, "passes": passes, "compiled": int(compiled)}, step=step)

    def make_batch(s: int, p: int) -> tuple[np.ndarray, np.ndarray]:
        # the step's global batch in order; this pass's slice of it, this worker's part of that slice
        idx = order.indices(s * global_batch + p * micro * n_workers, micro * n_workers)[rank * micro:(rank + 1) * micro]
        return with_bos(orient(train_w.get(idx), trial.direction), data.bos_id)

    batches = Prefetcher(make_batch, step, t.steps, passes, device)
    local_dir = Path(workdir) if workdir else None
    scratch = Path(tempfile.mkdtemp(prefix="aot-ckpt-"))
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    last_train = float("nan")
    last_eval = None
    train_seconds = 0.0
    timed_steps = 0
    compile_seconds = None if compiled else 0.0
    model.train()
    score = objective.per_token

    def now() -> float:
        # steps are queued on the GPU without a host sync; the clock is read only where the queue is drained
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    segment = time.perf_counter()  # training time runs in segments between evaluations
    try:
        while step < t.steps:
            for m in range(passes):
                x, y = batches.get(step, m)
                # gradients are averaged across workers once per optimizer step, not per micro-batch
                sync = net.no_sync() if n_workers > 1 and m < passes - 1 else contextlib.nullcontext()
                try:
                    with sync:
                        with autocast():
                            loss = net(x, y)
                        (loss / passes).backward()
                except torch.OutOfMemoryError:
                    raise OutOfMemory(
                        f"{device.type} out of memory at step {step + 1} of trial {trial.trial_id}: micro-batch "
                        f"{micro} x context {trial.context_length} on model {trial.model.preset}; set "
                        f"train.micro_batch: auto, or a smaller train.micro_batch (same global batch)") from None
                if t.debug_nan_at_step is not None and step + 1 >= t.debug_nan_at_step:
                    loss = loss * float("nan")
                loss_sum += loss.detach()
                loss_count += 1
            if trial.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), trial.optim.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1

            if step % t.log_every == 0 or step == t.steps:
                if n_workers > 1:
                    dist.all_reduce(loss_sum)
                    loss_sum /= n_workers
                last_train = loss_sum.item() / loss_count
                loss_sum.zero_()
                first = step - loss_count // passes + 1
                loss_count = 0
                if not math.isfinite(last_train):
                    # checked where the loss is read anyway (every log_every steps), not with a sync per step
                    where = f"step {step}" if first == step else f"steps {first}-{step}"
                    raise TrainingDiverged(f"training loss became {last_train} at {where} of trial {trial.trial_id}")
                tracker.log_metrics({"train_loss": last_train, "lr": sched.get_last_lr()[0]}, step=step)
            if compile_seconds is None:
                # the first step compiles the model: its time is logged apart and kept out of tokens/s
                compile_seconds = now() - segment
                tracker.log_metrics({"compile_seconds": compile_seconds}, step=step)
                segment = time.perf_counter()
            else:
                timed_steps += 1

            if step % t.eval_every == 0 or step == t.steps:
                train_seconds += now() - segment  # steps and their logging; validation is not training
                last_eval = evaluate(model, score, val_inputs, val_targets, t.eval_batch_size, autocast)
                metrics = {
                    "step": step,
                    "tokens": step * tokens_per_step,
                    "val_loss": last_eval.loss,
                    "train_loss": last_train,
                }
                # epochs: how many times the training split was seen (the report flags a model trained past it)
                tracker.log_metrics({"val_loss": last_eval.loss, "tokens": step * tokens_per_step,
                                     "epochs": step * global_batch / len(train_w)}, step=step)
                # per-window losses at every evaluation: the report pairs them for intervals and the sign test
                tracker.log_dict({"step": step, "loss": last_eval.per_window.tolist()},
                                 f"eval/windows/step-{step:08d}.json")
                tracker.flush()
                due = step == t.steps or (t.checkpoint_every and step % t.checkpoint_every == 0)
                path = None
                if rank == 0 and due and (on_report is not None or local_dir is not None):
                    state = {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "rng": ckpt.rng_state(),
                    }
                    meta = {
                        "trial_id": trial.trial_id,
                        "step": step,
                        "samples_seen": step * global_batch,
                        "tokens": step * tokens_per_step,
                        "run_id": tracker.run_id,
                        "val_loss": last_eval.loss,
                    }
                    where = (scratch if on_report is not None else local_dir) / f"step-{step:08d}"
                    path = ckpt.write(where, state, meta)
                    if on_report is None:
                        ckpt.prune(local_dir, t.keep_checkpoints)
                if on_report is not None:
                    on_report(metrics, path)
                if path is not None and on_report is not None:
                    shutil.rmtree(path, ignore_errors=True)  # the reporter has persisted it
                if step < t.steps and _stop_requested(tracker, n_workers, device) is not None:
                    tracker.log_metrics({"stopped_at_step": step}, step=step)
                    break
                segment = time.perf_counter()
    finally:
        batches.close()
        shutil.rmtree(scratch, ignore_errors=True)

    if last_eval is None:  # resumed from the final checkpoint: nothing left to train
        last_eval = evaluate(model, score, val_inputs, val_targets, t.eval_batch_size, autocast)
    tokens_per_s = (timed_steps * tokens_per_step) / train_seconds if train_seconds else float("nan")
    summary = {
        "final_val_loss": last_eval.loss,
        "final_train_loss": last_train,
        "train_tokens_per_s": tokens_per_s,
    }
    tracker.log_metrics(summary, step=step)
    tracker.log_dict(
        {"window_index": val_idx.tolist(), "loss": last_eval.per_window.tolist(), "direction": trial.direction},
        "eval/per_window.json",
    )
    tracker.log_dict(
        {"position": list(range(trial.context_length)), "loss": last_eval.per_position.tolist(),
         "direction": trial.direction},
        "eval/per_position.json",
    )
    tracker.flush()
    return TrainResult(
        trial_id=trial.trial_id,
        steps=step,
        tokens=step * tokens_per_step,
        n_params=n_params,
        val_loss=last_eval.loss,
        train_loss=last_train,
        train_seconds=train_seconds,
        tokens_per_s=tokens_per_s,
        per_window=last_eval.per_window,
        per_position=last_eval.per_position,
        compile_seconds=compile_seconds or 0.0,
    )
