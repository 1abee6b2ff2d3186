"""Learning-rate schedules from `transformers`, plus the paper's per-restart peak decay for warm restarts."""

from __future__ import annotations

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_hard_restarts_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from ..spec.schema import OptimSpec


def make_scheduler(opt: torch.optim.Optimizer, optim: OptimSpec, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    w = optim.warmup_steps
    if optim.schedule == "constant":
        return get_constant_schedule_with_warmup(opt, w)
    if optim.schedule == "linear":
        return get_linear_schedule_with_warmup(opt, w, total_steps)
    if optim.schedule == "cosine":
        if optim.min_lr_ratio > 0:
            return get_cosine_with_min_lr_schedule_with_warmup(opt, w, total_steps, min_lr_rate=optim.min_lr_ratio)
        return get_cosine_schedule_with_warmup(opt, w, total_steps)
    base = get_cosine_with_hard_restarts_schedule_with_warmup(opt, w, total_steps, num_cycles=optim.restarts)
    if optim.restart_decay == 1.0:
        return base
    shape = base.lr_lambdas[0]
    cycle_len = max(1, total_steps - w) / optim.restarts
    decay = optim.restart_decay

    def decayed(step: int) -> float:
        cycle = 0 if step < w else min(optim.restarts - 1, int((step - w) // cycle_len))
        return shape(step) * decay**cycle

    return torch.optim.lr_scheduler.LambdaLR(opt, decayed)
