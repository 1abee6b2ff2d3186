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


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("position", ["rope", "none"])
@pytest.mark.parametrize("preset,vocab,ctx", [("tiny", 15, 64), ("mini", 6, 32), ("gpt-5m", 50257, 256)])
def test_count_matches_transformers_for_every_position(preset, vocab, ctx, position, tie):
    spec = ModelSpec(preset=preset, tie_embeddings=tie, position=position)
    model = build_model(spec, vocab, ctx)
    actual = sum(p.numel() for p in model.parameters())
    assert count_params(resolve_shape(spec), vocab, ctx, tie) == actual
    learned = count_params(resolve_shape(ModelSpec(preset=preset)), vocab, ctx, tie)
    assert learned - actual == ctx * resolve_shape(spec).n_embd  # only the position table goes


def _logits(position, x, n_layer=None):
    import torch

    torch.manual_seed(0)
    model = build_model(ModelSpec(preset="tiny", position=position, n_layer=n_layer), 20, 16).eval()
    with torch.no_grad():
        return model(input_ids=x).logits


@pytest.mark.parametrize("position", ["learned", "rope", "none"])
def test_every_position_encoding_is_causal(position):
    import torch

    x = torch.randint(0, 20, (3, 16), generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[:, 9:] = (y[:, 9:] + 1) % 20
    a, b = _logits(position, x), _logits(position, y)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6) and not torch.allclose(a[:, 9:], b[:, 9:])


@pytest.mark.parametrize("position,sees_order", [("learned", True), ("rope", True), ("none", False)])
def test_only_none_is_blind_to_the_order_of_the_prefix(position, sees_order):
    """Without a position encoding, one layer of causal attention reads the prefix as a set: swapping two earlier
    tokens leaves the prediction at a later position unchanged. Learned and rotary positions see the swap. (With
    more layers the swapped positions' own states differ, so only the first layer is a set function.)"""
    import torch

    x = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    y = torch.tensor([[1, 3, 2, 4, 5, 6, 7, 8]])  # positions 1 and 2 swapped
    a, b = _logits(position, x, n_layer=1)[:, 3:], _logits(position, y, n_layer=1)[:, 3:]
    assert torch.allclose(a, b, atol=1e-5) != sees_order


def test_rope_and_none_start_like_gpt2():
    """Same widths, GELU, layer norms and GPT-2's scaled init of the residual projections: the three encodings
    start from the same distribution of weights (position table aside)."""
    import torch

    stats = {}
    for position in ("learned", "rope", "none"):
        torch.manual_seed(0)
        model = build_model(ModelSpec(preset="mini", position=position), 500, 32)
        body = model.base_model
        proj = body.h[0].attn.c_proj.weight if position == "learned" else body.layers[0].attention.dense.weight
        qkv = body.h[0].attn.c_attn.weight if position == "learned" else body.layers[0].attention.query_key_value.weight
        stats[position] = (proj.std().item(), qkv.std().item())
    for position in ("rope", "none"):
        assert stats[position][0] == pytest.approx(0.02 / 8 ** 0.5, rel=0.05)
        assert stats[position][1] == pytest.approx(stats["learned"][1], rel=0.05)
    assert stats["learned"][0] == pytest.approx(0.02 / 8 ** 0.5, rel=0.05)


def test_position_applies_to_gpt_presets_only():
    with pytest.raises(ValueError, match="position rope does not apply to LSTM preset 'lstm-tiny'"):
        resolve_shape(ModelSpec(preset="lstm-tiny", position="rope"))
    assert resolve_shape(ModelSpec(preset="tiny", position="none")).position == "none"
