"""A trial's setup before its first step, by concern: the device and precision (`Hardware`), its windows and
validation set (`TrialData`), the model and optimizer (`Learner`), how a step's batch is cut (`Batching`), and the
checkpoint restored or the run's params logged (`setup_trial`). `loop.train` runs the steps."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .. import seeds
from ..data.prepare import Prepared, load
from ..data.windows import BatchOrder, Windows, eval_indices, orient, with_bos, with_direction
from ..gpu_memory import micro_batches
from ..models import build_model
from ..spec.expand import flatten
from ..spec.schema import TrialSpec
from . import checkpoint as ckpt
from .device import autocast_for, compile_for, gpu_budget, pick_device, scaler_for, world
from .loss import LMObjective
from .mfu import flops_per_token, peak_tflops
from .schedule import make_scheduler
from .tracker_api import RecordingTracker, Tracker


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
class Hardware:
    """Where the trial runs and in what precision."""
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: torch.amp.GradScaler  # loss scaling under fp16, a pass-through otherwise
    rank: int
    n_workers: int
    compiled: bool
    peak_tflops: float | None  # the GPU's dense bf16 peak; None on the CPU (no mfu)


@dataclass
class TrialData:
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
class Learner:
    """The model, its objective and its optimizer."""
    model: torch.nn.Module
    objective: LMObjective
    net: torch.nn.Module  # the objective, wrapped in DDP under data parallelism (sharded in place under FSDP)
    opt: torch.optim.Optimizer
    sched: Any
    n_params: int
    flops_per_token: float  # for mfu
    sharded: bool = False  # FSDP: parameters, gradients and optimizer state sharded over the workers

    def sync_grads(self, last_pass: bool) -> contextlib.AbstractContextManager:
        """Around one pass of a step: gradients are reduced across workers at the last pass only."""
        if self.sharded:
            self.net.set_requires_gradient_sync(last_pass)  # FSDP2's own switch (it keeps unreduced grads)
            return contextlib.nullcontext()
        if isinstance(self.net, DistributedDataParallel) and not last_pass:
            return self.net.no_sync()
        return contextlib.nullcontext()


@dataclass
class Batching:
    """How a step's global batch is cut: micro-batches per pass, passes per step."""
    micro: int
    passes: int
    global_batch: int
    tokens_per_step: int


@dataclass
class TrialSetup:
    """What one trial's loop works with, built once by `setup_trial` (a fresh start or a resume), by concern."""
    trial: TrialSpec
    tracker: Tracker
    hw: Hardware
    d: TrialData
    learner: Learner
    batching: Batching
    step: int  # the step to start from: 0, or the resumed checkpoint's
    notes: list[str]  # for the driver's output (NOTE), with the next report


def setup_trial(trial: TrialSpec, tracker: Tracker, checkpoint: str | Path | list[str | Path] | None,
           data: Prepared | str | Path) -> TrialSetup:
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
    d = _trial_data(trial, data if isinstance(data, Prepared) else load(data), device)
    hw = Hardware(device=device, autocast=autocast_for(trial, device), scaler=scaler_for(trial, device), rank=rank,
                   n_workers=n_workers, compiled=compile_for(trial, device),
                   peak_tflops=peak_tflops(torch.cuda.get_device_name(device), getattr(tracker, "gpu_tflops", None))
                   if device.type == "cuda" else None)
    learner = _make_learner(trial, d.data, hw)
    torch.manual_seed(seeds.derive(trial.seed, seeds.DROPOUT))
    step, notes = _restore_or_start(trial, tracker, checkpoint, learner, hw, d)
    micro, passes = micro_batches(trial, d.data.vocab_size, workers=n_workers, budget=gpu_budget(trial, device),
                                  backend=device.type)
    global_batch = trial.train.batch_size * trial.train.grad_accum
    # metrics, not params: a retry on another GPU may resolve `auto` differently, and MLflow params are immutable
    tracker.log_metrics({"micro_batch": micro, "passes": passes, "compiled": int(hw.compiled)}, step=step)
    return TrialSetup(trial=trial, tracker=tracker, hw=hw, d=d, learner=learner, step=step, notes=notes,
                  batching=Batching(micro=micro, passes=passes, global_batch=global_batch,
                                     tokens_per_step=global_batch * trial.context_length))


def _trial_data(trial: TrialSpec, data: Prepared, device: torch.device) -> TrialData:
    train_w = Windows(data.train, trial.context_length, trial.stride)
    val_w = Windows(data.val, trial.context_length, trial.context_length)
    val_idx = eval_indices(len(val_w), trial.train.eval_windows)
    perm = trial.permutation()
    order = BatchOrder(len(train_w), seeds.derive(trial.seed, seeds.DATA_ORDER))
    if trial.joint:  # the same windows in each direction, each led by its own direction token
        val = val_w.get(val_idx)
        (vx, vy), back = (with_direction(val, np.full(len(val), flag), data.vocab_size) for flag in (False, True))
        return TrialData(data=data, train_w=train_w, order=order, perm=None, direction_id=data.vocab_size,
                     val_idx=val_idx, val_inputs=torch.from_numpy(vx).to(device),
                     val_targets=torch.from_numpy(vy).to(device),
                     val_backward=tuple(torch.from_numpy(a).to(device) for a in back))
    vx, vy = with_bos(orient(val_w.get(val_idx), perm), data.bos_id)
    return TrialData(data=data, train_w=train_w, order=order, perm=perm, direction_id=None, val_idx=val_idx,
                 val_inputs=torch.from_numpy(vx).to(device), val_targets=torch.from_numpy(vy).to(device))


def _make_learner(trial: TrialSpec, data: Prepared, hw: Hardware) -> Learner:
    torch.manual_seed(seeds.derive(trial.seed, seeds.MODEL_INIT))
    vocab = data.vocab_size + (2 if trial.joint else 0)  # the joint model's two direction tokens
    model = build_model(trial.model, vocab, trial.context_length, data.bos_id).to(hw.device)
    n_params = sum(p.numel() for p in model.parameters())  # before sharding: the whole model's
    objective = LMObjective(model, compile=hw.compiled)
    net: torch.nn.Module = objective
    # FSDP under any process group (one of a single rank too: the benchmark's FSDP line on one GPU)
    sharded = trial.resources.sharding == "fsdp" and torch.distributed.is_available() and \
        torch.distributed.is_initialized()
    if sharded:
        shard(objective)
    elif hw.n_workers > 1:
        net = DistributedDataParallel(objective, device_ids=[hw.device.index] if hw.device.type == "cuda" else None)
    opt = _optimizer(model, trial)  # after sharding: over the shards
    return Learner(model=model, objective=objective, net=net, opt=opt,
                    sched=make_scheduler(opt, trial.optim, trial.train.steps), n_params=n_params,
                    flops_per_token=flops_per_token(trial, data.vocab_size), sharded=sharded)


def layers_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated layers of a model (GPT-2's blocks, GPT-NeoX's layers): FSDP's units. A recurrent model has
    none (its layers are one module)."""
    body = getattr(model, "base_model", None)
    for child in body.children() if body is not None else ():
        if isinstance(child, torch.nn.ModuleList):
            return list(child)
    return []


def shard(objective: LMObjective) -> None:
    """FSDP2: each layer a unit of its own (gathered for its forward and backward, then freed), the rest
    (embeddings, final norm, head) with the objective as the root, whose forward is where the loss is computed."""
    from torch.distributed.fsdp import fully_shard

    for layer in layers_of(objective.model):
        fully_shard(layer)
    fully_shard(objective)


def _restore_or_start(trial: TrialSpec, tracker: Tracker, checkpoint: str | Path | list[str | Path] | None,
                      learner: Learner, hw: Hardware, d: TrialData) -> tuple[int, list[str]]:
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
        state, meta, path = found
        if meta.get("sharded"):  # at any worker count: torch.distributed.checkpoint reshards
            ckpt.read_sharded_into(path, learner.model, learner.opt)
        elif learner.sharded:
            raise ValueError(f"the checkpoint at step {meta['step']} of trial {trial.trial_id} was written without "
                             f"sharding and cannot be resumed under resources.sharding: fsdp; resume it with "
                             f"sharding: ddp (the trial's id is the same)")
        else:
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
