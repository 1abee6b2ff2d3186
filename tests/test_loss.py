"""The chunked head + cross-entropy equals F.cross_entropy on full logits, in value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from aot_ray.models import build_model
from aot_ray.spec.schema import ModelSpec
from aot_ray.train.loss import LMObjective, chunk_rows, fused_linear_cross_entropy, token_losses


def _inputs(n=37, d=16, v=50, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=dtype, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    return h, w, y


@pytest.mark.parametrize("rows", [1, 5, 37, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_and_gradient_match_cross_entropy(rows, reduction):
    h, w, y = _inputs(dtype=torch.float64)
    ref = F.cross_entropy(h @ w.t(), y, reduction=reduction)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    out = fused_linear_cross_entropy(h, w, y, rows=rows, reduction=reduction)
    gh, gw = torch.autograd.grad(out, (h, w))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)


def test_upstream_gradient_scales_both_gradients():
    h, w, y = _inputs()
    (3.5 * fused_linear_cross_entropy(h, w, y, rows=4)).backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    (3.5 * F.cross_entropy(h2 @ w2.t(), y)).backward()
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


def test_batched_shapes_and_only_one_input_needing_grad():
    h, w, y = _inputs(n=24)
    h3, y3 = h.detach().view(4, 6, -1), y.view(4, 6)
    out = fused_linear_cross_entropy(h3, w, y3, rows=7)  # only w needs a gradient
    out.backward()
    w2 = w.detach().clone().requires_grad_()
    F.cross_entropy((h3 @ w2.t()).flatten(0, 1), y3.flatten()).backward()
    torch.testing.assert_close(w.grad, w2.grad)


def test_token_losses_match_unreduced_cross_entropy():
    h, w, y = _inputs(n=30)
    ref = F.cross_entropy(h @ w.t(), y, reduction="none").view(5, 6)
    got = token_losses(h.view(5, 6, -1), w, y.view(5, 6), rows=4)
    assert got.shape == (5, 6)
    torch.testing.assert_close(got, ref.detach())


def test_under_bf16_autocast_close_to_autocast_reference():
    h, w, y = _inputs(n=64, d=32, v=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy((h @ w.t()).float(), y)
        out = fused_linear_cross_entropy(h, w, y, rows=9)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h, w))
    gh, gw = torch.autograd.grad(out, (h, w))
    assert gh.dtype == h.dtype and gw.dtype == w.dtype
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(gh, gh_ref, rtol=3e-2, atol=3e-3)
    torch.testing.assert_close(gw, gw_ref, rtol=3e-2, atol=3e-3)


def test_chunk_rows_keep_a_chunk_within_its_budget():
    assert chunk_rows(50257) * 50257 * 4 <= 256 * 2**20
    assert chunk_rows(50257) > 1000
    assert chunk_rows(10**12) == 1


@pytest.mark.parametrize("preset", ["tiny", "lstm-tiny", "gru-tiny"])
@pytest.mark.parametrize("tie", [False, True])
def test_objective_equals_model_logits_loss(preset, tie):
    torch.manual_seed(0)
    model = build_model(ModelSpec(preset=preset, tie_embeddings=tie), 40, 12)
    x = torch.randint(0, 40, (3, 12))
    y = torch.randint(0, 40, (3, 12))
    ref = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    obj = LMObjective(model)
    out = obj(x, y)
    grads = torch.autograd.grad(out, list(model.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    per = obj.per_token(x, y)
    torch.testing.assert_close(per.mean(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert [n for n, _ in obj.named_parameters()] == ["model." + n for n, _ in model.named_parameters()]
