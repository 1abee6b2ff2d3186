"""Trainer: a pulse test on tiny local data, and k steps + resume + (N-k) steps == N steps."""

import math

import numpy as np
import pytest
import torch

from aot_ray.data.prepare import prepare
from aot_ray.train import RecordingTracker, train
from aot_ray.train.schedule import make_scheduler
from aot_ray.spec import OptimSpec

from specs import tiny_trials


def trials(model="tiny", **train):
    return tiny_trials("pulse", data={"val_fraction": 0.25}, train=train, grid={"seed": [3], "model": [model]})


ARCHS = pytest.mark.parametrize("model", ["tiny", "lstm-tiny", "gru-tiny"])


@ARCHS
def test_pulse_loss_goes_down(tmp_path, model):
    fw = trials(model)[0]
    tracker = RecordingTracker()
    result = train(fw, tracker, data=prepare(fw.data, tmp_path)[0])
    losses = [v for _, v in tracker.metrics["train_loss"]]
    assert losses[-1] < losses[0] - 0.3, losses
    assert math.isfinite(result.val_loss) and result.steps == 40
    assert [s for s, _ in tracker.metrics["val_loss"]] == [20, 40]
    assert tracker.params["direction"] == "forward" and tracker.params["n_params"] == result.n_params
    assert len(tracker.artifacts["eval/per_window.json"]["loss"]) == len(result.per_window)
    assert tracker.artifacts["eval/windows/step-00000040.json"]["loss"] == result.per_window.tolist()
    assert sorted(k for k in tracker.artifacts if k.startswith("eval/windows/")) == [
        "eval/windows/step-00000020.json", "eval/windows/step-00000040.json"]
    assert len(tracker.artifacts["eval/per_position.json"]["loss"]) == 32
    assert np.isclose(result.per_window.mean(), result.val_loss)


@ARCHS
def test_resume_equals_uninterrupted(tmp_path, model):
    fw = trials(model)[0]
    straight = train(fw, RecordingTracker(), data=prepare(fw.data, tmp_path / "d")[0], workdir=tmp_path / "a")
    train(fw, RecordingTracker(), data=prepare(fw.data, tmp_path / "d")[0], workdir=tmp_path / "b")  # keeps step-10..40
    # a fresh trainer resumes from run b's step-20 checkpoint and trains the remaining 20 steps
    ckpt = tmp_path / "b" / "step-00000020"
    assert ckpt.is_dir()
    resumed = train(fw, RecordingTracker(), ckpt, data=prepare(fw.data, tmp_path / "d")[0], workdir=tmp_path / "c")
    assert resumed.steps == straight.steps == 40
    assert abs(resumed.val_loss - straight.val_loss) < 1e-6
    np.testing.assert_allclose(resumed.per_window, straight.per_window, atol=1e-6)


def test_forward_and_backward_share_init_and_windows(tmp_path):
    fw, bw = trials(steps=6, eval_every=6, checkpoint_every=0)
    a, b = RecordingTracker(), RecordingTracker()
    ra = train(fw, a, data=prepare(fw.data, tmp_path)[0])
    rb = train(bw, b, data=prepare(fw.data, tmp_path)[0])
    assert ra.n_params == rb.n_params
    assert a.artifacts["eval/per_window.json"]["window_index"] == b.artifacts["eval/per_window.json"]["window_index"]


def test_restart_schedule_decays_each_cycle():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = make_scheduler(opt, OptimSpec(schedule="cosine_restarts", warmup_steps=10, restarts=3,
                                          restart_decay=0.85), total_steps=310)
    lrs = []
    for _ in range(310):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and abs(lrs[10] - 1.0) < 1e-9
    assert abs(lrs[110] - 0.85) < 1e-6 and abs(lrs[210] - 0.85**2) < 1e-6  # peaks of cycles 2 and 3


def test_grad_accumulation_matches_a_larger_batch(tmp_path):
    """The batch order is defined per sample, so 2 micro-batches of 4 see exactly the samples of one batch of 8."""
    big = trials(steps=8, batch_size=8, grad_accum=1, eval_every=8, checkpoint_every=0)[0]
    acc = trials(steps=8, batch_size=4, grad_accum=2, eval_every=8, checkpoint_every=0)[0]
    a = train(big, RecordingTracker(), data=prepare(big.data, tmp_path)[0])
    b = train(acc, RecordingTracker(), data=prepare(big.data, tmp_path)[0])
    assert a.tokens == b.tokens
    assert abs(a.val_loss - b.val_loss) < 1e-5


def test_out_of_memory_names_batch_context_and_model(tmp_path, monkeypatch):
    import pytest

    from aot_ray.train import loop, setup

    class Exhausted(setup.LMObjective):
        def forward(self, input_ids, targets):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(setup, "LMObjective", Exhausted)
    fw = trials()[0]
    with pytest.raises(loop.OutOfMemory, match=r"out of memory at step 1 of trial .*: micro-batch 8 x context 32 "
                                               r"on model tiny; set train.micro_batch: auto, or a smaller "
                                               r"train.micro_batch"):
        train(fw, RecordingTracker(), data=prepare(fw.data, tmp_path)[0])


def test_stop_request_ends_training_at_the_next_evaluation(tmp_path):
    """A pair settled by the sequential sign test: the driver's request (here set on the tracker) stops the
    trainer at its next evaluation, with that evaluation's losses as the result; no request, no early end."""
    fw = trials(steps=60, eval_every=20)[0]
    data = prepare(fw.data, tmp_path)[0]
    plain = RecordingTracker()
    full = train(fw, plain, data=data)
    tracker = RecordingTracker()
    tracker.stop_at = 20
    stopped = train(fw, tracker, data=data)
    assert stopped.steps == 20 and full.steps == 60
    assert tracker.metrics["stopped_at_step"] == [(20, 20.0)]
    assert [s for s, _ in tracker.metrics["val_loss"]] == [20]
    assert tracker.artifacts["eval/per_window.json"]["loss"] == tracker.artifacts["eval/windows/step-00000020.json"]["loss"]
    assert stopped.tokens == 20 * 8 * 32
    assert "stopped_at_step" not in plain.metrics


@ARCHS
def test_micro_batch_changes_memory_not_the_result(tmp_path, model):
    """The global batch split into passes of 2 windows sees the same windows per step: same losses (float
    rounding aside), same trial id, same tokens."""
    whole = trials(model, batch_size=8, grad_accum=1)[0]
    split = trials(model, batch_size=8, grad_accum=1, micro_batch=2)[0]
    assert whole.trial_id == split.trial_id
    data = prepare(whole.data, tmp_path)[0]
    a, tb = train(whole, RecordingTracker(), data=data), RecordingTracker()
    b = train(split, tb, data=data)
    assert tb.metrics["passes"] == [(0, 4)] and tb.metrics["micro_batch"] == [(0, 2)]
    assert a.tokens == b.tokens
    assert b.val_loss == pytest.approx(a.val_loss, rel=2e-4)
    np.testing.assert_allclose(b.per_window, a.per_window, rtol=2e-3)


def _has_compiler() -> bool:
    import shutil

    return any(shutil.which(c) for c in ("cc", "gcc", "clang", "g++"))


@pytest.mark.slow  # inductor compiles for a minute on 2 cores: out of the fast loop
@pytest.mark.skipif(not _has_compiler(), reason="torch.compile on CPU needs a C/C++ compiler; this machine has none")
def test_compiled_training_matches_eager(tmp_path):
    """train.compile: true on CPU (inductor): the same losses as eager within float tolerance; the compile is
    timed apart and kept out of tokens/s."""
    eager_t = trials(steps=10, eval_every=10, compile=False)[0]
    comp_t = trials(steps=10, eval_every=10, compile=True)[0]
    data = prepare(eager_t.data, tmp_path)[0]
    et = RecordingTracker()
    eager = train(eager_t, et, data=data)
    tracker = RecordingTracker()
    comp = train(comp_t, tracker, data=data)
    assert tracker.metrics["compiled"] == [(0, 1)] and eager.compile_seconds == 0.0
    assert comp.compile_seconds > 0 and tracker.metrics["compile_seconds"][0][0] == 1
    assert comp.val_loss == pytest.approx(eager.val_loss, rel=1e-3)
    np.testing.assert_allclose([v for _, v in tracker.metrics["train_loss"]],
                               [v for _, v in et.metrics["train_loss"]], rtol=1e-3)
    # tokens/s counts the 9 steps after the compiling one
    assert comp.tokens_per_s == pytest.approx(9 * 8 * 32 / comp.train_seconds)


def test_batch_builder_errors_reach_the_trainer():
    from aot_ray.train.batches import Prefetcher

    def make(step, p):
        if step == 2:
            raise ValueError("window 7 out of range")
        return np.full((2, 3), step), np.full((2, 3), p)

    pf = Prefetcher(make, 0, 5, 2, torch.device("cpu"))
    try:
        for s in range(2):
            for p in range(2):
                x, y = pf.get(s, p)
                assert int(x[0, 0]) == s and int(y[0, 0]) == p
        with pytest.raises(ValueError, match="window 7"):
            pf.get(2, 0)
    finally:
        pf.close()
