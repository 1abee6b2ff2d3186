"""The GPU memory model: predicted peaks against measured ones, micro-batch resolution, and the refusal of a
trial that cannot fit its GPU share (plan and run), before anything starts."""

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aot_ray.gpu_memory import GiB, check_trial, fitting_micro_batch, micro_batches, predict, refusal
from aot_ray.models import build_model, resolve_shape
from aot_ray.spec import expand, parse_sweep
from aot_ray.spec.schema import ModelSpec
from aot_ray.train.loss import LMObjective

SWEEP = {
    "name": "mem",
    "data": {"p": {"kind": "primes", "digits": 2, "n_samples": 300, "windows": "stream"}},
    "defaults": {"optim": {"warmup_steps": 2},
                 "train": {"steps": 20, "batch_size": 12, "grad_accum": 2, "eval_every": 10}},
    "grid": {"dataset": ["p"], "model": ["tiny"], "context_length": [16], "direction": ["forward"]},
}


def trial(**train):
    raw = copy.deepcopy(SWEEP)
    raw["defaults"]["train"].update(train)
    return expand(parse_sweep(raw))[0]


def measured_peak(preset, vocab, context, micro, passes, bf16, dropout=0.0, position="learned"):
    """Live-tensor peak of two real AdamW steps (torch's MemTracker: every tensor's storage while it lives)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    spec = ModelSpec(preset=preset, dropout=dropout, position=position)
    model = build_model(spec, vocab, context)
    obj = LMObjective(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    mt = MemTracker()
    mt.track_external(model, opt)
    with mt:
        for _ in range(2):
            for _ in range(passes):
                mt.reset_mod_stats()  # module stats per call; the device peak is kept
                x = torch.randint(0, vocab, (micro, context))
                y = torch.randint(0, vocab, (micro, context))
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = obj(x, y)
                (loss / passes).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    peak = mt.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    est = predict(resolve_shape(spec), vocab, context, micro, passes=passes, bf16=bf16, dropout=dropout,
                  backend="cpu")
    return peak, est


@pytest.mark.parametrize("case", [
    ("mini", 2000, 128, 16, 1, True, 0.0),
    ("mini", 2000, 128, 16, 3, True, 0.0),     # gradients held across micro-batches
    ("tiny", 50257, 64, 32, 2, True, 0.0),     # GPT-2 vocabulary: the loss chunk dominates
    ("mini", 2000, 128, 16, 1, False, 0.0),    # fp32
    ("mini", 2000, 64, 16, 1, True, 0.1),      # dropout
    ("lstm-tiny", 5000, 64, 16, 1, True, 0.0),
    ("gru-tiny", 5000, 64, 16, 2, False, 0.0),
    ("mini", 2000, 128, 16, 1, True, 0.0, "rope"),   # GPT-NeoX's layer: rotated queries and keys
    ("mini", 2000, 128, 16, 2, False, 0.0, "none"),
    ("mini", 2000, 64, 16, 1, True, 0.1, "rope"),
], ids=lambda c: "-".join(map(str, c)))
def test_prediction_within_15_percent_of_measured_peak(case):
    peak, est = measured_peak(*case)
    assert 0.85 <= est.total / peak <= 1.15, (est.as_dict(), peak)


def test_no_full_logits_at_gpt2_vocabulary():
    """gpt-5m at micro-batch 180 x context 256, as sizes.yaml runs it: the fp32 logits alone would be 9.3 GB; the
    prediction (and with it the memory the fused loss needs) stays under 1 GB."""
    est = predict(resolve_shape(ModelSpec(preset="gpt-5m")), 50257, 256, 180, dropout=0.1)
    assert est.total < 1 * GiB
    assert est.loss < 0.5 * GiB


def test_micro_batches_default_int_and_auto():
    t = trial()
    assert micro_batches(t, 20) == (12, 2)  # as before: batch_size per pass, grad_accum passes
    assert micro_batches(trial(micro_batch=6), 20) == (6, 4)
    assert micro_batches(trial(micro_batch="auto"), 20) == (24, 1)  # no budget known: one pass
    big = predict(resolve_shape(t.model), 20, 16, 24, bf16=True).total
    small = predict(resolve_shape(t.model), 20, 16, 8, passes=3, bf16=True).total
    m, p = micro_batches(trial(micro_batch="auto"), 20, budget=(big + small) // 2)
    assert m * p == 24 and m < 24 and predict(resolve_shape(t.model), 20, 16, m, passes=p).total <= (big + small) // 2
    assert micro_batches(trial(micro_batch="auto"), 20, budget=1) == (1, 24)  # nothing fits: the check refuses


def test_micro_batch_and_compile_do_not_change_identity():
    ids = {t.trial_id for t in (trial(), trial(micro_batch=4), trial(micro_batch="auto"), trial(compile=False))}
    assert len(ids) == 1


@pytest.mark.parametrize("bad,match", [
    ({"micro_batch": 5}, "defaults.train.micro_batch: 5 does not divide the 24 windows"),
    ({"micro_batch": "big"}, "defaults.train.micro_batch: must be an integer or auto"),
    ({"micro_batch": 0}, "defaults.train.micro_batch: must be a positive integer"),
    ({"compile": "yes"}, "defaults.train.compile: must be true or false or auto"),
])
def test_bad_micro_batch_or_compile_named(bad, match):
    from aot_ray.errors import SpecError

    with pytest.raises(SpecError, match=match):
        trial(**bad)


def test_refusal_names_trial_and_a_micro_batch_that_fits():
    t = dataclasses.replace(trial(), resources=dataclasses.replace(trial().resources, gpu=0.5))
    need = predict(resolve_shape(t.model), 20, 16, 12, passes=2).total
    gpu = int(need * 2 * 0.8)  # the share (half of it) is 80% of what micro-batch 12 needs
    check = check_trial(t, 20, gpu, "run.gpu_memory_gb")
    assert check.fits is False
    m = fitting_micro_batch(resolve_shape(t.model), 20, 16, 24, check.budget)
    assert m is not None and m < 12
    line = refusal(t, 20, check)
    assert t.trial_id in line and f"set train.micro_batch: {m} (or auto) for model tiny" in line
    assert "gpu 0.5 x" in line and "from run.gpu_memory_gb" in line
    assert "even one window" in refusal(t, 20, check_trial(t, 20, 1000, "run.gpu_memory_gb"))


def test_plan_refuses_a_trial_over_its_gpu_share(tmp_path):
    import yaml

    raw = copy.deepcopy(SWEEP)
    raw["defaults"]["resources"] = {"gpu": 0.5}
    raw["run"] = {"gpu_memory_gb": 0.0001}
    f = tmp_path / "over.yaml"
    f.write_text(yaml.safe_dump(raw))
    cli = [sys.executable, "-m", "aot_ray.cli", "plan", str(f), "--storage", str(tmp_path / "s"),
           "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    out = subprocess.run(cli, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "predicted peak GPU memory" in err[0] and "even one window" in err[0]
    assert "OVER" in out.stdout and "gpu_mem" in out.stdout
    raw["run"] = {"gpu_memory_gb": 40}
    f.write_text(yaml.safe_dump(raw))
    ok = subprocess.run(cli, capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "/20.0G" in ok.stdout and "OVER" not in ok.stdout
    assert not (tmp_path / "m.db").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset,micro", [("gpt-5m", 45), ("gpt-22m", 30)])
def test_prediction_within_15_percent_of_cuda_max_memory_allocated(preset, micro, tmp_path):
    import numpy as np

    from aot_ray.bench.trainer import bench_trial, random_data, run_trainer

    t = bench_trial(preset, 256, micro * 2, 6, "cuda", micro=micro, vocab=50257)
    data = random_data(50257, 2_000_000, str(tmp_path))
    r = run_trainer(t, data, memory=True)
    assert 0.85 <= r["predicted"] / r["measured"] <= 1.15, r
    assert np.isfinite(r["tokens_per_s"])


def test_gpu_size_comes_from_cluster_then_custom_resource_then_run_setting():
    from aot_ray.spec.schema import RunSpec
    from aot_ray.sweep.sweep_plan import memory_checks

    raw = copy.deepcopy(SWEEP)
    raw["grid"]["model"] = ["tiny", "mini"]
    raw["per_model"] = {"mini": {"resources": {"gpu": 0.5, "custom": {"a100": 1}}}}
    raw["defaults"]["resources"] = {"gpu": 1}
    trials = expand(parse_sweep(raw))
    run = RunSpec(gpu_memory_gb=24, gpu_memory_gb_by_resource={"a100": 40})
    checks = memory_checks(trials, run)
    by_model = {t.model.preset: checks[t.trial_id] for t in trials}
    assert by_model["tiny"].budget == 24 * GiB and by_model["tiny"].source == "run.gpu_memory_gb"
    assert by_model["mini"].budget == 20 * GiB and by_model["mini"].source == "run.gpu_memory_gb_by_resource.a100"
    found = memory_checks(trials, run, lambda t: (80 * GiB, "the cluster's GPUs"))
    assert {c.budget for c in found.values()} == {80 * GiB, 40 * GiB}
    unknown = memory_checks(trials, RunSpec(), lambda t: (None, ""))
    assert all(c.budget is None and c.fits is None for c in unknown.values())
    raw["defaults"]["resources"] = {"gpu": 0}
    raw["per_model"] = {}
    assert memory_checks(expand(parse_sweep(raw)), run) == {}  # CPU trials: nothing to check


@pytest.mark.integration
def test_run_refuses_before_anything_starts(tmp_path):
    """`run` on a local Ray with a (fake) GPU: a trial over its share is refused after Ray starts and before
    any data is prepared or any MLflow run exists."""
    from aot_ray import sweep, tracking
    from aot_ray.errors import AotError

    raw = copy.deepcopy(SWEEP)
    raw["defaults"]["resources"] = {"cpu": 1, "gpu": 1}
    raw["run"] = {"gpu_memory_gb": 0.0001}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(AotError, match=r"trial p-tiny-\S+: predicted peak GPU memory [\d.]+ MiB .* even one window"):
        sweep.run(sweep.ResolvedSweep.of(parse_sweep(raw), "", uri=uri, storage=str(tmp_path / "r")), num_cpus=1, num_gpus=1,
                  verbose=0, say=lambda _: None)
    assert not (tmp_path / "r" / "data").exists()
    assert tracking.SweepRuns(uri, "mem").trials() == []


def test_sharding_divides_the_model_state_and_plan_names_the_fewest_workers_that_fit():
    """gpt-1.6b at context 256 does not fit one 24 GB GPU even one window at a time (weights, gradients and AdamW
    state alone are about 25 GB); sharded over k workers each holds 1/k of that state plus what it gathers, and
    the refusal names the fewest whole GPUs it fits on."""
    from aot_ray.gpu_memory import fewest_shards

    shape = resolve_shape(ModelSpec(preset="gpt-1.6b"))
    whole = predict(shape, 50257, 256, 1, dropout=0.1)
    assert whole.total > 24 * GiB and 4 * whole.params > 24 * 10**9  # + its gradients and AdamW: about 26 GB
    two, four = (predict(shape, 50257, 256, 1, dropout=0.1, shards=k) for k in (2, 4))
    assert four.optimizer == whole.optimizer // 4 and two.optimizer == whole.optimizer // 2
    assert four.total < two.total < whole.total and four.activations == whole.activations
    raw = copy.deepcopy(SWEEP)
    raw["data"] = {"p": {"kind": "primes", "digits": 3, "n_samples": 2000, "windows": "stream"}}
    raw["grid"].update(model=["gpt-1.6b"], context_length=[64])
    raw["defaults"]["resources"] = {"gpu": 1}
    raw["defaults"]["train"].update(batch_size=16, grad_accum=1, micro_batch="auto")
    t = expand(parse_sweep(raw))[0]
    budget = 24 * GiB
    check = check_trial(t, 50257, budget, "run.gpu_memory_gb")
    assert check.fits is False
    k = fewest_shards(t, 50257, budget)
    assert k is not None and k >= 2
    assert f"resources.sharding: fsdp with resources.workers: {k}" in refusal(t, 50257, check)
    raw["defaults"]["resources"] = {"gpu": 1, "workers": k, "sharding": "fsdp"}
    sharded = expand(parse_sweep(raw))[0]
    assert check_trial(sharded, 50257, budget, "run.gpu_memory_gb").fits is True
    if k > 2:  # one worker fewer does not fit
        raw["defaults"]["resources"]["workers"] = k - 1 if 16 % (k - 1) == 0 else 2
        fewer = expand(parse_sweep(raw))[0]
        assert check_trial(fewer, 50257, budget, "run.gpu_memory_gb").fits is False


def test_sizes_yaml_plans_the_papers_largest_model_sharded_on_24_gb_gpus(tmp_path):
    out = subprocess.run([sys.executable, "-m", "aot_ray.cli", "plan", "sweeps/sizes.yaml", "--json",
                          "--storage", str(tmp_path / "s"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    import json

    rows = [r for r in json.loads(out.stdout) if r["model"] == "gpt-1.6b"]
    assert rows and all(r["memory"]["fits"] and r["memory"]["budget"] == 24 * GiB for r in rows)
    assert all(r["resources"]["workers"] == 4 and r["gpu_hours"] > 0 for r in rows)
