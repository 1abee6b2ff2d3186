"""One precision rule, for the trainer, the memory model and the benchmark (pure: no torch import):
- `train.precision: auto` trains at the device's own fast precision: bf16 autocast on a GPU that supports it,
  fp16 autocast with a gradient scaler (`torch.amp.GradScaler`) on one that does not (V100, T4), fp32 on a CPU;
- `bf16`, `fp16` and `fp32` are taken as asked.
The memory model counts 16-bit activations for bf16 and fp16 alike (both 2 bytes), so `micro_batch: auto` sizes a
trial the same before the GPU is known (plan) and on it (the trainer)."""

from __future__ import annotations

from typing import Literal

Precision = Literal["bf16", "fp16", "fp32"]


def choose(asked: str, device_type: str, bf16_supported: bool = True) -> Precision:
    """The precision a trial trains at, from `train.precision` and the device's capabilities."""
    if asked in ("bf16", "fp16", "fp32"):
        return asked  # type: ignore[return-value]
    if asked != "auto":
        raise ValueError(f"train.precision must be auto, bf16, fp16 or fp32, got {asked!r}")
    if device_type != "cuda":
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


def half(asked: str, device_type: str) -> bool:
    """Whether activations are 16-bit (bf16 or fp16: the same bytes), whatever the GPU supports."""
    return choose(asked, device_type, bf16_supported=True) != "fp32"


def scaled(precision: Precision) -> bool:
    """fp16 needs loss scaling (its exponent range underflows small gradients); bf16 and fp32 do not."""
    return precision == "fp16"


def of_device(asked: str, device: object) -> Precision:
    """`choose` for a torch device, asking torch whether the GPU supports bf16."""
    kind = getattr(device, "type", str(device))
    if kind != "cuda" or asked != "auto":
        return choose(asked, kind)
    import torch

    return choose(asked, kind, torch.cuda.is_bf16_supported())
