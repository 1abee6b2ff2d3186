"""Validation on a fixed set of windows: per-token losses kept, so the aggregator can pair windows and positions."""

from __future__ import annotations

from dataclasses import dataclass

from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean nats/token
    per_window: np.ndarray  # [n_windows] mean loss of each window
    per_position: np.ndarray  # [context_length] mean loss at each position (in the trial's direction)


@torch.no_grad()
def evaluate(model: torch.nn.Module, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, autocast) -> EvalResult:
    """`score(x, y)` gives every token's loss (the trainer's chunked head + loss, so no full logits either)."""
    was_training = model.training
    model.eval()
    chunks = []
    for i in range(0, len(inputs), batch_size):
        x = inputs[i : i + batch_size]
        y = targets[i : i + batch_size]
        with autocast():
            loss = score(x, y)
        chunks.append(loss.double())
    model.train(was_training)
    losses = torch.cat(chunks).cpu().numpy()  # one device-to-host copy per evaluation
    return EvalResult(float(losses.mean()), losses.mean(axis=1), losses.mean(axis=0))
