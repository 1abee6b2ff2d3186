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
from torch.nn.parallel import DistributedDataParallel

from .. import seeds
from ..data.prepare import Prepared, load
from ..data.windows import BatchOrder, Windows, eval_indices, orient, with_bos, with_direction
from ..gpu_memory import micro_batches
from ..models import build_model
from ..spec.expand import flatten
from ..spec.schema import TrialSpec
from . import checkpoint as ckpt
from .batches import Prefetcher
from .device import autocast_for, compile_for, gpu_budget, pick_device, scaler_for, world
from .evaluate import EvalResult, evaluate
from .mfu import flops_per_token, peak_tflops
from .loss import LMObjective
from .schedule import make_scheduler
from .stops import Report, notice_posted, save, sign_stop_at, stop_now
from .tracker_api import NOTE, RecordingTracker, Tracker


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
class _Hardware:
    """Where the trial runs and in what precision."""
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: torch.amp.GradScaler  # loss scaling under fp16, a pass-through otherwise
    rank: int
    n_workers: int
    compiled: bool
    peak_tflops: float | None  # the GPU's dense bf16 peak; None on the CPU (no mfu)


@dataclass
class _Data:
    """The trial's windows: training ones in their seeded order, the fixed validation set on the device."""
    data: Prepared
    train_w: Windows
    order: BatchOrder
    perm: np.ndarray | None  # the trial's token order (None: forward, and the joint model)
    direction_id: int | None  # the joint model's forward token (backward's is the next id); None: BOS
    val_idx: np.ndarray
    val_inputs: torch.Tensor
    val_targets: torch.Tensor
    val_backward: tuple[torch.Tensor, torch.Tensor] | None = None  # the joint model's validation set reversed


@dataclass
class _Learner:
    """The model, its objective and its optimizer."""
    model: torch.nn.Module
    objective: LMObjective
    net: torch.nn.Module  # the objective, wrapped in DDP under data parallelism
    opt: torch.optim.Optimizer
    sched: Any
    n_params: int
    flops_per_token: float  # for mfu


@dataclass
class _Batching:
    """How a step's global batch is cut: micro-batches per pass, passes per step."""
    micro: int
    passes: int
    global_batch: int
    tokens_per_step: int


@dataclass
class _Trial:
    """What one trial's loop works with, built once by `_setup` (a fresh start or a resume), by concern."""
    trial: TrialSpec
    tracker: Tracker
    hw: _Hardware
    d: _Data
    learner: _Learner
    batching: _Batching
    step: int  # the step to start from: 0, or the resumed checkpoint's
    notes: list[str]  # for the driver's output (NOTE), with the next report


@dataclass
class _Progress:
    """The loop's running figures: the train loss being averaged, the last evaluation, the training clock."""
    loss_sum: torch.Tensor
    loss_count: int = 0
    last_train: float = float("nan")
    last_eval: Any = None
    directions: Any = None  # the joint model's last evaluation in each direction (forward, backward)
    train_seconds: float = 0.0
    timed_steps: int = 0
    compile_seconds: float | None = 0.0  # None until the first (compiling) step of a compiled model is timed


def _setup(trial: TrialSpec, tracker: Tracker, checkpoint: str | Path | list[str | Path] | None,
           data: Prepared | str | Path) -> _Trial:
    """Device, data, model, optimizer and schedule; the checkpoint restored or the run's params logged."""
    if trial.train.threads:
        torch.set_num_threads(trial.train.threads)
    rank, n_workers = world()
    if trial.train.batch_size % n_workers:
        raise ValueError(f"train.batch_size {trial.train.batch_size} is not divisible by {n_workers} data-parallel "
                         f"workers")
    if rank != 0:
        tracker = RecordingTracker()  # one writer per trial: rank 0
    device = pick_device(trial)
    if device.type == "cuda" and n_workers > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    d = _data(trial, data if isinstance(data, Prepared) else load(data), device)
    hw = _Hardware(device=device, autocast=autocast_for(trial, device), scaler=scaler_for(trial, device), rank=rank,
                   n_workers=n_workers, compiled=compile_for(trial, device),
                   peak_tflops=peak_tflops(torch.cuda.get_device_name(device), getattr(tracker, "gpu_tflops", None))
                   if device.type == "cuda" else None)
    learner = _learner(trial, d.data, hw)
    torch.manual_seed(seeds.derive(trial.seed, seeds.DROPOUT))
    step, notes = _restore_or_start(trial, tracker, checkpoint, learner, hw, d)
    micro, passes = micro_batches(trial, d.data.vocab_size, workers=n_workers, budget=gpu_budget(trial, device),
                                  backend=device.type)
    global_batch = trial.train.batch_size * trial.train.grad_accum
    # metrics, not params: a retry on another GPU may resolve `auto` differently, and MLflow params are immutable
    tracker.log_metrics({"micro_batch": micro, "passes": passes, "compiled": int(hw.compiled)}, step=step)
    return _Trial(trial=trial, tracker=tracker, hw=hw, d=d, learner=learner, step=step, notes=notes,
                  batching=_Batching(micro=micro, passes=passes, global_batch=global_batch,
                                     tokens_per_step=global_batch * trial.context_length))


def _data(trial: TrialSpec, data: Prepared, device: torch.device) -> _Data:
    train_w = Windows(data.train, trial.context_length, trial.stride)
    val_w = Windows(data.val, trial.context_length, trial.context_length)
    val_idx = eval_indices(len(val_w), trial.train.eval_windows)
    perm = trial.permutation()
    order = BatchOrder(len(train_w), seeds.derive(trial.seed, seeds.DATA_ORDER))
    if trial.joint:  # the same windows in each direction, each led by its own direction token
        val = val_w.get(val_idx)
        (vx, vy), back = (with_direction(val, np.full(len(val), flag), data.vocab_size) for flag in (False, True))
        return _Data(data=data, train_w=train_w, order=order, perm=None, direction_id=data.vocab_size,
                     val_idx=val_idx, val_inputs=torch.from_numpy(vx).to(device),
                     val_targets=torch.from_numpy(vy).to(device),
                     val_backward=tuple(torch.from_numpy(a).to(device) for a in back))
    vx, vy = with_bos(orient(val_w.get(val_idx), perm), data.bos_id)
    return _Data(data=data, train_w=train_w, order=order, perm=perm, direction_id=None, val_idx=val_idx,
                 val_inputs=torch.from_numpy(vx).to(device), val_targets=torch.from_numpy(vy).to(device))


def _learner(trial: TrialSpec, data: Prepared, hw: _Hardware) -> _Learner:
    torch.manual_seed(seeds.derive(trial.seed, seeds.MODEL_INIT))
    vocab = data.vocab_size + (2 if trial.joint else 0)  # the joint model's two direction tokens
    model = build_model(trial.model, vocab, trial.context_length, data.bos_id).to(hw.device)
    objective = LMObjective(model, compile=hw.compiled)
    net: torch.nn.Module = objective
    if hw.n_workers > 1:
        net = DistributedDataParallel(objective, device_ids=[hw.device.index] if hw.device.type == "cuda" else None)
    opt = _optimizer(model, trial)
    return _Learner(model=model, objective=objective, net=net, opt=opt,
                    sched=make_scheduler(opt, trial.optim, trial.train.steps),
                    n_params=sum(p.numel() for p in model.parameters()),
                    flops_per_token=flops_per_token(trial, data.vocab_size))


def _restore_or_start(trial: TrialSpec, tracker: Tracker, checkpoint: str | Path | list[str | Path] | None,
                      learner: _Learner, hw: _Hardware, d: _Data) -> tuple[int, list[str]]:
    """The newest usable checkpoint restored (its run resumed), else the run begun with its params; returns
    (the step to start from, notes for the driver)."""
    candidates = [] if checkpoint is None else checkpoint if isinstance(checkpoint, list) else [checkpoint]
    # a checkpoint counts only if the run holds every point up to its step (resuming past points lost with a killed
    # tracking server would leave a gap in the curve): up to the last evaluation the store confirmed, since the
    # checkpoint carries the points logged after it
    skipped: list[str] = []
    found = ckpt.read_first_valid(candidates, lambda meta: tracker.holds(
        meta.get("run_id"), int(meta.get("confirmed", meta["step"]))), skipped)
    step = 0
    if found is not None:
        state, meta, _ = found
        learner.model.load_state_dict(state["model"])
        learner.opt.load_state_dict(state["optimizer"])
        learner.sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # fp16's loss scale, so that the resumed steps are the uninterrupted ones
            hw.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        step = int(meta["step"])
        tracker.begin(step, meta.get("run_id"))
        tracker.replay(state.get("carried"))
        tracker.log_metrics({"resumed_from_step": step}, step=step)
    else:
        tracker.begin(None)
        params = {**flatten(trial), "n_params": learner.n_params, "vocab_size": d.data.vocab_size}
        if len(d.val_idx) < trial.train.eval_windows:  # fewer windows in the split: the param says what was evaluated
            params["train.eval_windows"] = len(d.val_idx)
            params["train.eval_windows_requested"] = trial.train.eval_windows
        tracker.log_params(params)
        tracker.log_metrics({"n_params": learner.n_params}, step=0)
    notes = [f"{'; '.join(skipped)}: " + (f"resumed from the checkpoint at step {step}" if found is not None
                                           else "no readable checkpoint was left, so it started from step 0")
             ] if skipped else []
    return step, notes


def _batches(r: _Trial) -> Prefetcher:
    """The step's global batch in order; each pass's slice of it, this worker's part of that slice."""
    trial, micro, width = r.trial, r.batching.micro, r.batching.micro * r.hw.n_workers

    def make_batch(s: int, p: int) -> tuple[np.ndarray, np.ndarray]:
        start = s * r.batching.global_batch + p * width
        idx = r.d.order.indices(start, width)[r.hw.rank * micro:(r.hw.rank + 1) * micro]
        if r.d.direction_id is not None:  # the joint model: samples alternate forward and backward
            first = start + r.hw.rank * micro
            return with_direction(r.d.train_w.get(idx), np.arange(first, first + micro) % 2 == 1, r.d.direction_id)
        return with_bos(orient(r.d.train_w.get(idx), r.d.perm), r.d.data.bos_id)

    return Prefetcher(make_batch, r.step, trial.train.steps, r.batching.passes, r.hw.device)


def _optimizer_step(r: _Trial, step: int, batches: Prefetcher, prog: _Progress) -> None:
    """One optimizer step over `passes` micro-batches (gradients averaged across workers once, at the last)."""
    t = r.trial.train
    for m in range(r.batching.passes):
        x, y = batches.get(step, m)
        sync = r.learner.net.no_sync() if r.hw.n_workers > 1 and m < r.batching.passes - 1 else contextlib.nullcontext()
        try:
            with sync:
                with r.hw.autocast():
                    loss = r.learner.net(x, y)
                r.hw.scaler.scale(loss / r.batching.passes).backward()
        except torch.OutOfMemoryError:
            raise OutOfMemory(
                f"{r.hw.device.type} out of memory at step {step + 1} of trial {r.trial.trial_id}: micro-batch "
                f"{r.batching.micro} x context {r.trial.context_length} on model {r.trial.model.preset}; set "
                f"train.micro_batch: auto, or a smaller train.micro_batch (same global batch)") from None
        if t.debug_nan_at_step is not None and step + 1 >= t.debug_nan_at_step:
            loss = loss * float("nan")
        prog.loss_sum += loss.detach()
        prog.loss_count += 1
    if r.trial.optim.grad_clip > 0:
        r.hw.scaler.unscale_(r.learner.opt)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(r.learner.model.parameters(), r.trial.optim.grad_clip)
    r.hw.scaler.step(r.learner.opt)  # under fp16 a step with inf/NaN gradients is skipped and the scale lowered
    r.hw.scaler.update()
    r.learner.sched.step()
    r.learner.opt.zero_grad(set_to_none=True)


def _log_train_loss(r: _Trial, step: int, prog: _Progress) -> None:
    """The train loss averaged since the last log (across workers); a NaN or infinite one stops the trial."""
    if r.hw.n_workers > 1:
        dist.all_reduce(prog.loss_sum)
        prog.loss_sum /= r.hw.n_workers
    prog.last_train = prog.loss_sum.item() / prog.loss_count
    prog.loss_sum.zero_()
    first = step - prog.loss_count // r.batching.passes + 1
    prog.loss_count = 0
    if not math.isfinite(prog.last_train):
        # checked where the loss is read anyway (every log_every steps), not with a sync per step
        where = f"step {step}" if first == step else f"steps {first}-{step}"
        raise TrainingDiverged(f"training loss became {prog.last_train} at {where} of trial {r.trial.trial_id}")
    # train_step: the latest step as a value, so `status` reads every run's progress from one search
    r.tracker.log_metrics({"train_loss": prog.last_train, "lr": r.learner.sched.get_last_lr()[0], "train_step": step},
                          step=step)


def _log_speed(r: _Trial, step: int, steps: int, seconds: float) -> None:
    """Throughput of the segment since the last evaluation and, on a GPU, its model FLOPs utilisation (of all
    the trial's GPUs, each counted whole: a trial packed on a GPU share shows what it gets of that GPU)."""
    if steps <= 0 or seconds <= 0:
        return
    tokens_per_s = steps * r.batching.tokens_per_step / seconds
    metrics = {"tokens_per_s": tokens_per_s}
    if r.hw.peak_tflops:
        metrics["mfu"] = tokens_per_s * r.learner.flops_per_token / (r.hw.peak_tflops * 1e12 * r.hw.n_workers)
    r.tracker.log_metrics(metrics, step=step)


def _evaluate(r: _Trial) -> tuple[EvalResult, tuple[EvalResult, EvalResult] | None]:
    """The loss of every window of the fixed validation set, and per position; the joint model's in each direction
    too (its loss: their mean)."""
    def on(x: torch.Tensor, y: torch.Tensor) -> EvalResult:
        return evaluate(r.learner.model, r.learner.objective.per_token, x, y, r.trial.train.eval_batch_size,
                        r.hw.autocast)

    fw = on(r.d.val_inputs, r.d.val_targets)
    if r.d.val_backward is None:
        return fw, None
    bw = on(*r.d.val_backward)
    return EvalResult((fw.loss + bw.loss) / 2, (fw.per_window + bw.per_window) / 2,
                      (fw.per_position + bw.per_position) / 2), (fw, bw)


def _by_direction(directions: tuple[EvalResult, EvalResult] | None, what: str) -> dict[str, Any]:
    """The joint model's figure `what` (loss, per_window, per_position) in each direction, keyed by suffix."""
    if directions is None:
        return {}
    return {f"_{d}": getattr(ev, what) for d, ev in zip(("forward", "backward"), directions)}


def _evaluate_and_report(r: _Trial, step: int, prog: _Progress, on_report: Report | None,
                         local_dir: Path | None, scratch: Path) -> bool:
    """Evaluate, log, write a checkpoint when due and hand it to `on_report`; True when the sweep asked this
    trial to stop (its pair's sign is settled)."""
    t = r.trial.train
    prog.last_eval, prog.directions = _evaluate(r)
    loss = prog.last_eval.loss
    tokens = step * r.batching.tokens_per_step
    metrics = {"step": step, "tokens": tokens, "val_loss": loss, "train_loss": prog.last_train}
    if r.notes:
        metrics[NOTE] = "; ".join(r.notes)
        r.notes.clear()
    # epochs: how many times the training split was seen (the report flags a model trained past it)
    # eval_step: the step of the latest evaluation, which one search of the sweep's runs returns for all of them
    # (the live sign test reads the histories of only the runs whose eval_step moved); eval_time: when, in epoch
    # seconds, so that one filtered search finds the runs evaluated since the last refresh (a cursor)
    r.tracker.log_metrics({"val_loss": loss, "tokens": tokens, "eval_step": step,
                           "eval_time": time.time(),
                           "epochs": step * r.batching.global_batch / len(r.d.train_w)}, step=step)
    # per-window losses at every evaluation: the report pairs them for intervals and the sign test
    if prog.directions is not None:
        r.tracker.log_metrics({f"val_loss{k}": v for k, v in _by_direction(prog.directions, "loss").items()}, step=step)
    r.tracker.log_dict({"step": step, "loss": prog.last_eval.per_window.tolist(),
                        **{f"loss{k}": v.tolist() for k, v in _by_direction(prog.directions, "per_window").items()}},
                       f"eval/windows/step-{step:08d}.json")
    r.tracker.flush()
    due = step == t.steps or (t.checkpoint_every and step % t.checkpoint_every == 0)
    path = save(r, step, loss, on_report, local_dir, scratch) if due else None
    if on_report is not None:
        on_report(metrics, path)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)  # the reporter has persisted it
    if step < t.steps and sign_stop_at(r.tracker, r.hw.n_workers, r.hw.device) is not None:
        r.tracker.log_metrics({"stopped_at_step": step}, step=step)
        return True
    return False


def _summary(r: _Trial, step: int, prog: _Progress) -> TrainResult:
    """The final figures and per-window / per-position losses, logged and returned."""
    if prog.last_eval is None:  # resumed from the final checkpoint: nothing left to train
        prog.last_eval, prog.directions = _evaluate(r)
    ev = prog.last_eval
    tokens_per_s = (prog.timed_steps * r.batching.tokens_per_step) / prog.train_seconds if prog.train_seconds \
        else float("nan")
    r.tracker.log_metrics({"final_val_loss": ev.loss, "final_train_loss": prog.last_train,
                           "train_tokens_per_s": tokens_per_s}, step=step)
    if prog.directions is not None:
        r.tracker.log_metrics({f"final_val_loss{k}": v for k, v in _by_direction(prog.directions, "loss").items()},
                              step=step)
    r.tracker.log_dict({"window_index": r.d.val_idx.tolist(), "loss": ev.per_window.tolist(),
                        **{f"loss{k}": v.tolist() for k, v in _by_direction(prog.directions, "per_window").items()},
                        "direction": r.trial.direction}, "eval/per_window.json")
    r.tracker.log_dict({"position": list(range(r.trial.context_length)), "loss": ev.per_position.tolist(),
                        **{f"loss{k}": v.tolist() for k, v in _by_direction(prog.directions, "per_position").items()},
                        "direction": r.trial.direction}, "eval/per_position.json")
    r.tracker.flush()
    return TrainResult(trial_id=r.trial.trial_id, steps=step, tokens=step * r.batching.tokens_per_step,
                       n_params=r.learner.n_params,
                       val_loss=ev.loss, train_loss=prog.last_train, train_seconds=prog.train_seconds,
                       tokens_per_s=tokens_per_s, per_window=ev.per_window, per_position=ev.per_position,
                       compile_seconds=prog.compile_seconds or 0.0)


@dataclass
class _Reporting:
    """Where a trial's evaluations and checkpoints go, and the driver's stop notice."""
    on_report: Report | None
    local_dir: Path | None
    scratch: Path
    stop_notice: Callable[[], bool] | None


def _steps(r: _Trial, prog: _Progress, batches: Prefetcher, out: _Reporting) -> int:
    """The optimizer steps from `r.step` on, with their logging, evaluations and checkpoints; returns the last
    step (before `steps` when the sweep asked the trial to stop)."""
    t, step = r.trial.train, r.step

    def now() -> float:
        # steps are queued on the GPU without a host sync; the clock is read only where the queue is drained
        if r.hw.device.type == "cuda":
            torch.cuda.synchronize(r.hw.device)
        return time.perf_counter()

    segment = time.perf_counter()  # training time runs in segments between evaluations
    segment_steps = prog.timed_steps
    while step < t.steps:
        _optimizer_step(r, step, batches, prog)
        step += 1
        if step % t.log_every == 0 or step == t.steps:
            _log_train_loss(r, step, prog)  # (a stop at a logged step loses no partial train loss)
            if step < t.steps and out.stop_notice is not None and notice_posted(r, out.stop_notice):
                stop_now(r, step, out.on_report, out.local_dir, out.scratch)
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
            if _evaluate_and_report(r, step, prog, out.on_report, out.local_dir, out.scratch):
                break
            segment = time.perf_counter()
    return step


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
    prog = _Progress(loss_sum=torch.zeros((), device=r.hw.device), compile_seconds=None if r.hw.compiled else 0.0)
    batches = _batches(r)
    scratch = Path(tempfile.mkdtemp(prefix="aot-ckpt-"))
    r.learner.model.train()
    try:
        step = _steps(r, prog, batches, _Reporting(on_report, Path(workdir) if workdir else None, scratch,
                                                   stop_notice))
    finally:
        batches.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return _summary(r, step, prog)
