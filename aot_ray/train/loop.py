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

from ..data.prepare import Prepared
from ..data.windows import orient, with_bos, with_direction
from ..spec.schema import TrialSpec
from .batches import Prefetcher
from .evaluate import EvalResult, evaluate
from .setup import TrialSetup, setup_trial
from .stops import Report, notice_posted, save, sign_stop_at, stop_now
from .tracker_api import NOTE, Tracker


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


def _batches(r: TrialSetup) -> Prefetcher:
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


def _optimizer_step(r: TrialSetup, step: int, batches: Prefetcher, prog: _Progress) -> None:
    """One optimizer step over `passes` micro-batches (gradients averaged across workers once, at the last)."""
    t = r.trial.train
    for m in range(r.batching.passes):
        x, y = batches.get(step, m)
        try:
            with r.learner.sync_grads(last_pass=m == r.batching.passes - 1):
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


def _log_train_loss(r: TrialSetup, step: int, prog: _Progress) -> None:
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


def _log_speed(r: TrialSetup, step: int, steps: int, seconds: float) -> None:
    """Throughput of the segment since the last evaluation and, on a GPU, its model FLOPs utilisation (of all
    the trial's GPUs, each counted whole: a trial packed on a GPU share shows what it gets of that GPU)."""
    if steps <= 0 or seconds <= 0:
        return
    tokens_per_s = steps * r.batching.tokens_per_step / seconds
    metrics = {"tokens_per_s": tokens_per_s}
    if r.hw.peak_tflops:
        metrics["mfu"] = tokens_per_s * r.learner.flops_per_token / (r.hw.peak_tflops * 1e12 * r.hw.n_workers)
    r.tracker.log_metrics(metrics, step=step)


def _evaluate(r: TrialSetup) -> tuple[EvalResult, tuple[EvalResult, EvalResult] | None]:
    """The loss of every window of the fixed validation set, and per position; the joint model's in each direction
    too (its loss: their mean)."""
    def on(x: torch.Tensor, y: torch.Tensor) -> EvalResult:
        return evaluate(r.learner.model, r.learner.objective.per_token, x, y, r.trial.train.eval_batch_size,
                        r.hw.autocast)  # under FSDP every worker evaluates: the gathers are collectives

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


def _evaluate_and_report(r: TrialSetup, step: int, prog: _Progress, on_report: Report | None,
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


def _summary(r: TrialSetup, step: int, prog: _Progress) -> TrainResult:
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
    stop_notice: Callable[[], int] | None


def _steps(r: TrialSetup, prog: _Progress, batches: Prefetcher, out: _Reporting) -> int:
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
        logged = step % t.log_every == 0 or step == t.steps
        if logged:
            _log_train_loss(r, step, prog)
        # the driver's stop notice, looked for between any two steps (a clock read; the file at most every few
        # seconds): the trial checkpoints at the step it reached, so a resume trains no step twice
        why = notice_posted(r, out.stop_notice) if step < t.steps and out.stop_notice is not None else 0
        if why:
            if not logged:
                _log_train_loss(r, step, prog)  # the steps since the last log: no trained step goes unlogged
            stop_now(r, step, why, out.on_report, out.local_dir, out.scratch)
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
    stop_notice: Callable[[], int] | None = None,
) -> TrainResult:
    """Train one trial on prepared `data` (a folder made by `data.prepare`); resume from `checkpoint` when given
    (a folder, or candidate folders newest first: an unreadable one falls back to the next).

    Under an initialised torch.distributed process group the model is wrapped in DDP and each worker takes its
    slice of every batch (`train.batch_size` is the global batch, so results do not depend on the worker count);
    rank 0 alone logs and writes checkpoints, and every rank calls `on_report`. Validation metrics go to `on_report` with a
    checkpoint folder (Ray Tune's adapter persists it); without `on_report`, checkpoints go under `workdir`.
    `stop_notice`: asked after every step (cheap: it looks at most every few seconds); once it answers non-zero
    (NOTICE_STOP: the sweep stops; NOTICE_MOVE: the node is draining) the trial checkpoints at that step, reports
    it (STOPPED_AT, STOP_WHY) and raises StopRequested."""
    r = setup_trial(trial, tracker, checkpoint, data)
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
