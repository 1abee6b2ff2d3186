"""Where and how a trial computes: its device, its precision's autocast and gradient scaler (the rule is
`aot_ray.precision`'s), whether it compiles, its share of the GPU in bytes, and its rank in a process group."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.distributed as dist

from .. import precision
from ..gpu_memory import gpu_budget_of
from ..models import arch_of
from ..spec.schema import TrialSpec


def pick_device(trial: TrialSpec) -> torch.device:
    want = trial.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def autocast_for(trial: TrialSpec, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The autocast of the precision `aot_ray.precision` picks for this trial on this device."""
    chosen = precision.of_device(trial.train.precision, device)
    if chosen == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if chosen == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def scaler_for(trial: TrialSpec, device: torch.device) -> torch.amp.GradScaler:
    """fp16 trains with a gradient scaler; at other precisions the scaler is off (each call passes through)."""
    on = precision.scaled(precision.of_device(trial.train.precision, device))
    return torch.amp.GradScaler(device.type if device.type in ("cuda", "cpu") else "cuda", enabled=on)


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
    return gpu_budget_of(trial, torch.cuda.get_device_properties(device).total_memory)


def world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
