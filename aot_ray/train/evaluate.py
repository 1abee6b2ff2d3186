"""Validation on a fixed set of windows: per-token losses kept, so the aggregator can pair windows and positions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean nats/token
    per_window: np.ndarray  # [n_windows] mean loss of each window
    per_position: np.ndarray  # [context_length] mean loss at each position (in the trial's direction)


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, autocast) -> EvalResult:
    was_training = model.training
    model.eval()
    chunks = []
    for i in range(0, len(inputs), batch_size):
        x = inputs[i : i + batch_size]
        y = targets[i : i + batch_size]
        with autocast():
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        chunks.append(loss.view_as(y).double().cpu())
    model.train(was_training)
    losses = torch.cat(chunks).numpy()
    return EvalResult(float(losses.mean()), losses.mean(axis=1), losses.mean(axis=0))
