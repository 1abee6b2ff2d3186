"""GPU use in MLflow, on a GPU only: a trial run carries `mfu` (against the GPU's peak by name) and MLflow's
GPU system metrics (nvidia-ml-py, the aot-ray[gpu] extra). The CPU side is tested in test_tracking.py and
test_integration.py; `aot_ray.train.mfu` on known numbers below runs everywhere."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from aot_ray import tracking
from aot_ray.train.mfu import flops_per_token, peak_tflops


def test_the_peak_comes_from_the_gpus_name_else_the_sweeps_setting():
    assert peak_tflops("NVIDIA H100 80GB HBM3", 250.0) == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", 250.0) == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB", None) == 312.0
    assert peak_tflops("NVIDIA L4", None) == 121.0 and peak_tflops("NVIDIA L40S", None) == 362.0
    assert peak_tflops("Some Future GPU", 400.0) == 400.0


def test_flops_per_token_is_6n_plus_attention():
    from aot_ray.spec import expand, parse_sweep
    from aot_ray.spec.presets import count_params, resolve_shape

    from specs import tiny_sweep

    (t,) = expand(parse_sweep(tiny_sweep("f", grid={"direction": ["forward"]})))
    shape = resolve_shape(t.model)
    n = count_params(shape, 100, t.context_length, t.model.tie_embeddings)
    assert flops_per_token(t, 100) == 6 * n + 12 * shape.n_layer * shape.n_embd * t.context_length


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_trial_logs_mfu_and_gpu_system_metrics(tmp_path):
    pytest.importorskip("pynvml", reason="the aot-ray[gpu] extra (nvidia-ml-py)")
    from aot_ray.data.prepare import prepare
    from aot_ray.spec import expand, parse_sweep
    from aot_ray.train import train

    from specs import tiny_sweep

    (trial,) = expand(parse_sweep(tiny_sweep("gpu", train={"steps": 200, "eval_every": 50, "device": "cuda"},
                                            grid={"direction": ["forward"]})))
    data = prepare(trial.data, tmp_path / "store")[0]
    ctx = replace(tracking.SweepRuns(f"sqlite:///{tmp_path}/mlflow.db", "gpu").start("x"), system_metrics_s=1)
    tr = tracking.TrialTracker(ctx, trial)
    train(trial, tr, data=data)
    time.sleep(2)
    tr.finish()
    m = tracking.client(ctx.uri).get_run(tr.run_id).data.metrics
    assert 0 < m["mfu"] < 1 and m["tokens_per_s"] > 0
    assert any(k.startswith("system/gpu_0_") for k in m)
