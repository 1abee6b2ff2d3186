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
from ..models import build_model
from ..spec.expand import flatten
from ..spec.schema import TrialSpec
from . import checkpoint as ckpt
from .batches import Prefetcher
from .device import autocast_for, compile_for, gpu_budget, pick_device, scaler_for, world
from .evaluate import evaluate
from .mfu import flops_per_token, peak_tflops
from .loss import LMObjective
from .schedule import make_scheduler
from .stops import Report, notice_posted, save, sign_stop_at, stop_now
from .tracker import NOTE, MemoryTracker, Tracker


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


@dataclass
class _Trial:
    """What one trial's loop works with, built once by `_setup` (a fresh start or a resume)."""
    trial: TrialSpec
    tracker: Tracker
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    rank: int
    n_workers: int
    data: Prepared
    train_w: Windows
    order: BatchOrder
    val_idx: np.ndarray
    val_inputs: torch.Tensor
    val_targets: torch.Tensor
    model: torch.nn.Module
    objective: LMObjective
    net: torch.nn.Module  # the objective, wrapped in DDP under data parallelism
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler  # loss scaling under fp16, a pass-through otherwise
    n_params: int
    compiled: bool
    micro: int
    passes: int
    global_batch: int
    tokens_per_step: int
    step: int  # the step to start from: 0, or the resumed checkpoint's
    flops_per_token: float  # for mfu
    peak_tflops: float | None  # the GPU's dense bf16 peak; None on the CPU (no mfu)
    notes: list[str]  # for the driver's output (NOTE), with the next report


@dataclass
class _Progress:
    """The loop's running figures: the train loss being averaged, the last evaluation, the training clock."""
    loss_sum: torch.Tensor
    loss_count: int = 0
    last_train: float = float("nan")
    last_eval: Any = None
    train_seconds: float = 0.0
    timed_steps: int = 0
    compile_seconds: float | None = 0.0  # None until the first (compiling) step of a compiled model is timed


def _setup(trial: TrialSpec, tracker: Tracker, checkpoint: str | Path | list[str | Path] | None,
           data: Prepared | str | Path) -> _Trial:
    """Device, data, model, optimizer and schedule; the checkpoint restored or the run's params logged."""
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
    if not isinstance(data, Prepared):
        data = load(data)
    train_w = Windows(data.train, trial.context_length, trial.stride)
    val_w = Windows(data.val, trial.context_length, trial.context_length)
    order = BatchOrder(len(train_w), seeds.derive(trial.seed, seeds.DATA_ORDER))

    val_idx = eval_indices(len(val_w), t.eval_windows)
    vx, vy = with_bos(orient(val_w.get(val_idx), trial.direction), data.bos_id)

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
    scaler = scaler_for(trial, device)
    torch.manual_seed(seeds.derive(trial.seed, seeds.DROPOUT))

    step = 0
    candidates = [] if checkpoint is None else checkpoint if isinstance(checkpoint, list) else [checkpoint]
    # a checkpoint counts only if the run holds every point up to its step (resuming past points lost with a killed
    # tracking server would leave a gap in the curve): up to the last evaluation the store confirmed, since the
    # checkpoint carries the points logged after it
    skipped: list[str] = []
    found = ckpt.read_first_valid(candidates, lambda meta: tracker.holds(
        meta.get("run_id"), int(meta.get("confirmed", meta["step"]))), skipped)
    if found is not None:
        state, meta, _ = found
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # fp16's loss scale, so that the resumed steps are the uninterrupted ones
            scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        step = int(meta["step"])
        tracker.begin(step, meta.get("run_id"))
        tracker.replay(state.get("carried"))
        tracker.log_metrics({"resumed_from_step": step}, step=step)
    else:
        tracker.begin(None)
        params = {**flatten(trial), "n_params": n_params, "vocab_size": data.vocab_size}
        if len(val_idx) < t.eval_windows:  # the split holds fewer windows: the param says what was evaluated
            params["train.eval_windows"] = len(val_idx)
            params["train.eval_windows_requested"] = t.eval_windows
        tracker.log_params(params)
        tracker.log_metrics({"n_params": n_params}, step=0)

    notes = [f"{'; '.join(skipped)}: " + (f"resumed from the checkpoint at step {step}" if found is not None
                                           else "no readable checkpoint was left, so it started from step 0")
             ] if skipped else []
    micro, passes = micro_batches(trial, data.vocab_size, workers=n_workers, budget=gpu_budget(trial, device),
                                  backend=device.type)
    global_batch = t.batch_size * t.grad_accum
    # metrics, not params: a retry on another GPU may resolve `auto` differently, and MLflow params are immutable
    tracker.log_metrics({"micro_batch": micro, "passes": passes, "compiled": int(compiled)}, step=step)
    return _Trial(trial=trial, tracker=tracker, device=device, autocast=autocast_for(trial, device), rank=rank,
                  n_workers=n_workers, data=data, train_w=train_w, order=order, val_idx=val_idx,
                  val_inputs=torch.from_numpy(vx).to(device), val_targets=torch.from_numpy(vy).to(device),
                  model=model, objective=objective, net=net, opt=opt, sched=sched, scaler=scaler, n_params=n_params,
                  compiled=compiled, micro=micro, passes=passes, global_batch=global_batch,
                  tokens_per_step=global_batch * trial.context_length, step=step,
                  flops_per_token=flops_per_token(trial, data.vocab_size),
                  peak_tflops=peak_tflops(torch.cuda.get_device_name(device), getattr(tracker, "gpu_tflops", None))
                  if device.type == "cuda" else None, notes=notes)


def _batches(r: _Trial) -> Prefetcher:
    """The step's global batch in order; each pass's slice of it, this worker's part of that slice."""
    trial, micro, width = r.trial, r.micro, r.micro * r.n_workers

    def make_batch(s: int, p: int) -> tuple[np.ndarray, np.ndarray]:
        idx = r.order.indices(s * r.global_batch + p * width, width)[r.rank * micro:(r.rank + 1) * micro]
        return with_bos(orient(r.train_w.get(idx), trial.direction), r.data.bos_id)

    return Prefetcher(make_batch, r.step, trial.train.steps, r.passes, r.device)


def _optimizer_step(r: _Trial, step: int, batches: Prefetcher, prog: _Progress) -> None:
    """One optimizer step over `passes` micro-batches (gradients averaged across workers once, at the last)."""
    t = r.trial.train
    for m in range(r.passes):
        x, y = batches.get(step, m)
        sync = r.net.no_sync() if r.n_workers > 1 and m < r.passes - 1 else contextlib.nullcontext()
        try:
            with sync:
                with r.autocast():
                    loss = r.net(x, y)
                r.scaler.scale(loss / r.passes).backward()
        except torch.OutOfMemoryError:
            raise OutOfMemory(
                f"{r.device.type} out of memory at step {step + 1} of trial {r.trial.trial_id}: micro-batch "
                f"{r.micro} x context {r.trial.context_length} on model {r.trial.model.preset}; set "
                f"train.micro_batch: auto, or a smaller train.micro_batch (same global batch)") from None
        if t.debug_nan_at_step is not None and step + 1 >= t.debug_nan_at_step:
            loss = loss * float("nan")
        prog.loss_sum += loss.detach()
        prog.loss_count += 1
    if r.trial.optim.grad_clip > 0:
        r.scaler.unscale_(r.opt)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(r.model.parameters(), r.trial.optim.grad_clip)
    r.scaler.step(r.opt)  # under fp16 a step with inf/NaN gradients is skipped and the scale lowered
    r.scaler.update()
    r.sched.step()
    r.opt.zero_grad(set_to_none=True)


def _log_train_loss(r: _Trial, step: int, prog: _Progress) -> None:
    """The train loss averaged since the last log (across workers); a NaN or infinite one stops the trial."""
    if r.n_workers > 1:
        dist.all_reduce(prog.loss_sum)
        prog.loss_sum /= r.n_workers
    prog.last_train = prog.loss_sum.item() / prog.loss_count
    prog.loss_sum.zero_()
    first = step - prog.loss_count // r.passes + 1
    prog.loss_count = 0
    if not math.isfinite(prog.last_train):
        # checked where the loss is read anyway (every log_every steps), not with a sync per step
        where = f"step {step}" if first == step else f"steps {first}-{step}"
        raise TrainingDiverged(f"training loss became {prog.last_train} at {where} of trial {r.trial.trial_id}")
    # train_step: the latest step as a value, so `status` reads every run's progress from one search
    r.tracker.log_metrics({"train_loss": prog.last_train, "lr": r.sched.get_last_lr()[0], "train_step": step},
                          step=step)


def _log_speed(r: _Trial, step: int, steps: int, seconds: float) -> None:
    """Throughput of the segment since the last evaluation and, on a GPU, its model FLOPs utilisation (of all
    the trial's GPUs, each counted whole: a trial packed on a GPU share shows what it gets of that GPU)."""
    if steps <= 0 or seconds <= 0:
        return
    tokens_per_s = steps * r.tokens_per_step / seconds
    metrics = {"tokens_per_s": tokens_per_s}
    if r.peak_tflops:
        metrics["mfu"] = tokens_per_s * r.flops_per_token / (r.peak_tflops * 1e12 * r.n_workers)
    r.tracker.log_metrics(metrics, step=step)


def _evaluate_and_report(r: _Trial, step: int, prog: _Progress, on_report: Report | None,
                         local_dir: Path | None, scratch: Path) -> bool:
    """Evaluate, log, write a checkpoint when due and hand it to `on_report`; True when the sweep asked this
    trial to stop (its pair's sign is settled)."""
    t = r.trial.train
    prog.last_eval = evaluate(r.model, r.objective.per_token, r.val_inputs, r.val_targets, t.eval_batch_size,
                              r.autocast)
    loss = prog.last_eval.loss
    metrics = {"step": step, "tokens": step * r.tokens_per_step, "val_loss": loss, "train_loss": prog.last_train}
    if r.notes:
        metrics[NOTE] = "; ".join(r.notes)
        r.notes.clear()
    # epochs: how many times the training split was seen (the report flags a model trained past it)
    # eval_step: the step of the latest evaluation, which one search of the sweep's runs returns for all of them
    # (the live sign test reads the histories of only the runs whose eval_step moved); eval_time: when, in epoch
    # seconds, so that one filtered search finds the runs evaluated since the last refresh (a cursor)
    r.tracker.log_metrics({"val_loss": loss, "tokens": step * r.tokens_per_step, "eval_step": step,
                           "eval_time": time.time(),
                           "epochs": step * r.global_batch / len(r.train_w)}, step=step)
    # per-window losses at every evaluation: the report pairs them for intervals and the sign test
    r.tracker.log_dict({"step": step, "loss": prog.last_eval.per_window.tolist()}, f"eval/windows/step-{step:08d}.json")
    r.tracker.flush()
    due = step == t.steps or (t.checkpoint_every and step % t.checkpoint_every == 0)
    path = save(r, step, loss, on_report, local_dir, scratch) if due else None
    if on_report is not None:
        on_report(metrics, path)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)  # the reporter has persisted it
    if step < t.steps and sign_stop_at(r.tracker, r.n_workers, r.device) is not None:
        r.tracker.log_metrics({"stopped_at_step": step}, step=step)
        return True
    return False


def _summary(r: _Trial, step: int, prog: _Progress) -> TrainResult:
    """The final figures and per-window / per-position losses, logged and returned."""
    t = r.trial.train
    if prog.last_eval is None:  # resumed from the final checkpoint: nothing left to train
        prog.last_eval = evaluate(r.model, r.objective.per_token, r.val_inputs, r.val_targets, t.eval_batch_size,
                                  r.autocast)
    ev = prog.last_eval
    tokens_per_s = (prog.timed_steps * r.tokens_per_step) / prog.train_seconds if prog.train_seconds else float("nan")
    r.tracker.log_metrics({"final_val_loss": ev.loss, "final_train_loss": prog.last_train,
                           "train_tokens_per_s": tokens_per_s}, step=step)
    r.tracker.log_dict({"window_index": r.val_idx.tolist(), "loss": ev.per_window.tolist(),
                        "direction": r.trial.direction}, "eval/per_window.json")
    r.tracker.log_dict({"position": list(range(r.trial.context_length)), "loss": ev.per_position.tolist(),
                        "direction": r.trial.direction}, "eval/per_position.json")
    r.tracker.flush()
    return TrainResult(trial_id=r.trial.trial_id, steps=step, tokens=step * r.tokens_per_step, n_params=r.n_params,
                       val_loss=ev.loss, train_loss=prog.last_train, train_seconds=prog.train_seconds,
                       tokens_per_s=tokens_per_s, per_window=ev.per_window, per_position=ev.per_position,
                       compile_seconds=prog.compile_seconds or 0.0)


def train(
    trial: TrialSpec,
    tracker: Tracker,
    checkpoint: str | Path | list[str | Path] | None = None,
    *,
    data: Prepared | str | Path,
    on_report: Report | None = None,
    workdir: str | Path | None = None,
    stop_notice: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one trial on prepared `data` (a folder made by `data.prepare`); resume from `checkpoint` when given
    (a folder, or candidate folders newest first: an unreadable one falls back to the next).

    Under an initialised torch.distributed process group the model is wrapped in DDP and each worker takes its
    slice of every batch (`train.batch_size` is the global batch, so results do not depend on the worker count);
    rank 0 alone logs and writes checkpoints, and every rank calls `on_report`. Validation metrics go to `on_report` with a
    checkpoint folder (Ray Tune's adapter persists it); without `on_report`, checkpoints go under `workdir`.
    `stop_notice`: asked at every logged step (cheap: it looks at most every few seconds); once it says so the
    trial checkpoints there, reports it (STOPPED_AT) and raises StopRequested."""
    r = _setup(trial, tracker, checkpoint, data)
    t, step = trial.train, r.step
    prog = _Progress(loss_sum=torch.zeros((), device=r.device), compile_seconds=None if r.compiled else 0.0)
    batches = _batches(r)
    scratch = Path(tempfile.mkdtemp(prefix="aot-ckpt-"))
    r.model.train()

    def now() -> float:
        # steps are queued on the GPU without a host sync; the clock is read only where the queue is drained
        if r.device.type == "cuda":
            torch.cuda.synchronize(r.device)
        return time.perf_counter()

    segment = time.perf_counter()  # training time runs in segments between evaluations
    segment_steps = prog.timed_steps
    try:
        while step < t.steps:
            _optimizer_step(r, step, batches, prog)
            step += 1
            if step % t.log_every == 0 or step == t.steps:
                _log_train_loss(r, step, prog)  # (a stop at a logged step loses no partial train loss)
                if step < t.steps and stop_notice is not None and notice_posted(r, stop_notice):
                    stop_now(r, step, on_report, Path(workdir) if workdir else None, scratch)
            if prog.compile_seconds is None:
                # the first step compiles the model: its time is logged apart and kept out of tokens/s
                prog.compile_seconds = now() - segment
                r.tracker.log_metrics({"compile_seconds": prog.compile_seconds}, step=step)
                segment = time.perf_counter()
            else:
                prog.timed_steps += 1
            if step % t.eval_every == 0 or step == t.steps:
                took = now() - segment
                prog.train_seconds += took  # steps and their logging; validation is not training
                _log_speed(r, step, prog.timed_steps - segment_steps, took)
                segment_steps = prog.timed_steps
                if _evaluate_and_report(r, step, prog, on_report, Path(workdir) if workdir else None, scratch):
                    break
                segment = time.perf_counter()
    finally:
        batches.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return _summary(r, step, prog)
