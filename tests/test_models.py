"""Preset table and parameter counts: exact against transformers, and on the paper's sizes."""

import pytest

from aot_ray.models import PRESETS, build_model, count_params, resolve_shape
from aot_ray.spec import ModelSpec

PAPER = {"gpt-5m": 4.9e6, "gpt-14m": 13.7e6, "gpt-22m": 22e6, "gpt-56m": 56e6, "gpt-162m": 162e6,
         "gpt-405m": 405e6, "gpt-1.6b": 1.6e9,
         "lstm-26m": 26e6, "lstm-58m": 58e6, "lstm-101m": 101e6, "gru-26m": 26e6, "gru-56m": 56e6, "gru-95m": 95e6}


@pytest.mark.parametrize("preset,expected", PAPER.items())
def test_paper_sizes_at_vocab_50257_context_256_untied(preset, expected):
    n = count_params(PRESETS[preset], 50257, 256, tie_embeddings=False)
    assert abs(n - expected) / expected < 0.03, (preset, n)


def test_gpt2_medium_is_the_papers_main_model():
    assert PRESETS["gpt-405m"] == resolve_shape(ModelSpec(preset="gpt-405m"))
    assert (PRESETS["gpt-405m"].n_layer, PRESETS["gpt-405m"].n_head, PRESETS["gpt-405m"].n_embd) == (24, 16, 1024)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("preset,vocab,ctx", [("tiny", 15, 64), ("gpt-5m", 50257, 256), ("mini", 6, 32),
                                              ("lstm-tiny", 15, 64), ("gru-tiny", 6, 32), ("lstm-26m", 50257, 256)])
def test_count_matches_transformers(preset, vocab, ctx, tie):
    model = build_model(ModelSpec(preset=preset, tie_embeddings=tie), vocab, ctx)
    actual = sum(p.numel() for p in model.parameters())
    assert count_params(resolve_shape(ModelSpec(preset=preset)), vocab, ctx, tie) == actual


def test_tying_removes_one_embedding_matrix():
    s = PRESETS["gpt-162m"]
    assert count_params(s, 50257, 256, False) - count_params(s, 50257, 256, True) == 50257 * 768


def test_overrides_and_bad_shapes():
    assert resolve_shape(ModelSpec(preset="tiny", n_layer=3)).n_layer == 3
    with pytest.raises(ValueError, match="not divisible"):
        resolve_shape(ModelSpec(preset="tiny", n_head=3))
    with pytest.raises(ValueError, match="unknown model preset"):
        resolve_shape(ModelSpec(preset="nope"))


def test_recurrent_presets_reject_attention_fields_and_take_overrides():
    shape = resolve_shape(ModelSpec(preset="lstm-58m", n_layer=2, n_embd=128))
    assert (shape.arch, shape.n_layer, shape.n_embd) == ("lstm", 2, 128)
    with pytest.raises(ValueError, match="n_head does not apply to GRU preset 'gru-26m'"):
        resolve_shape(ModelSpec(preset="gru-26m", n_head=4))


@pytest.mark.parametrize("preset", ["lstm-tiny", "gru-tiny"])
def test_recurrent_model_is_causal_and_learns(preset):
    import torch

    torch.manual_seed(0)
    model = build_model(ModelSpec(preset=preset, dropout=0.1), 12, 16)
    x = torch.randint(0, 12, (4, 16))
    model.eval()
    a = model(input_ids=x).logits
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 12  # change the future: earlier predictions must not move
    b = model(input_ids=y).logits
    assert a.shape == (4, 16, 12)
    assert torch.equal(a[:, :10], b[:, :10]) and not torch.equal(a[:, 10:], b[:, 10:])
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seq = torch.arange(17).remainder(12).repeat(8, 1)  # a counting sequence: trivially predictable
    losses = []
    for _ in range(40):
        logits = model(input_ids=seq[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
