"""One precision rule for trainer, memory model and benchmark: the choice table with the device's capabilities
injected, the memory model following it whatever the GPU supports, and fp16 with its gradient scaler trained
for real on the CPU (loss down, the scale in the checkpoint, an exact resume)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aot_ray import precision
from aot_ray.data.prepare import prepare
from aot_ray.gpu_memory import uses_bf16
from aot_ray.train import RecordingTracker, train
from aot_ray.train.device import autocast_for, scaler_for

from specs import tiny_trials


@pytest.mark.parametrize("asked,device,bf16,chosen", [
    ("auto", "cuda", True, "bf16"),   # A100, H100
    ("auto", "cuda", False, "fp16"),  # V100, T4: their own fast precision, with loss scaling
    ("auto", "cpu", True, "fp32"),
    ("auto", "mps", True, "fp32"),
    ("bf16", "cuda", False, "bf16"),  # asked for: taken as asked
    ("fp16", "cuda", True, "fp16"),
    ("fp32", "cuda", True, "fp32"),
])
def test_the_choice_table(asked, device, bf16, chosen):
    assert precision.choose(asked, device, bf16) == chosen
    assert precision.scaled(chosen) == (chosen == "fp16")


def test_the_memory_model_counts_16_bit_activations_on_any_gpu():
    t = tiny_trials("prec")[0]
    assert uses_bf16(t, "cuda") and not uses_bf16(t, "cpu")
    assert precision.half("auto", "cuda") == (precision.choose("auto", "cuda", False) != "fp32")  # fp16: 2 bytes too
    with pytest.raises(ValueError, match="train.precision must be"):
        precision.choose("fp8", "cuda")


def test_fp32_on_the_cpu_with_the_scaler_off():
    t = tiny_trials("prec")[0]
    cpu = torch.device("cpu")
    with autocast_for(t, cpu)():
        assert not torch.is_autocast_enabled("cpu")
    assert not scaler_for(t, cpu).is_enabled()


def test_fp16_trains_with_a_gradient_scaler_and_resumes_exactly(tmp_path):
    fw = tiny_trials("prec16", data={"val_fraction": 0.25}, train={"precision": "fp16"}, grid={"seed": [3]})[0]
    cpu = torch.device("cpu")
    assert scaler_for(fw, cpu).is_enabled()
    with autocast_for(fw, cpu)():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16
    data = prepare(fw.data, tmp_path / "d")[0]
    tracker = RecordingTracker()
    straight = train(fw, tracker, data=data, workdir=tmp_path / "a")
    losses = [v for _, v in tracker.metrics["train_loss"]]
    assert math.isfinite(straight.val_loss) and losses[-1] < losses[0] - 0.3, losses
    state = torch.load(tmp_path / "a" / "step-00000040" / "state.pt", weights_only=False)
    assert state["scaler"]["scale"] > 0  # the loss scale travels with the checkpoint
    train(fw, RecordingTracker(), data=data, workdir=tmp_path / "b")
    resumed = train(fw, RecordingTracker(), tmp_path / "b" / "step-00000020", data=data, workdir=tmp_path / "c")
    assert resumed.steps == straight.steps == 40
    np.testing.assert_allclose(resumed.per_window, straight.per_window, atol=1e-6)
