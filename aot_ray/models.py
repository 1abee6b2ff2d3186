"""Model presets and parameter counts (pure), and construction of the GPT-2 models through `transformers`.

Preset shapes are chosen so that, at vocabulary 50257, context 256 and an untied output head (as in the
paper), the counts land on the paper's sizes: ~4.9M, 13.7M, 22M, 56M, 162M, 405M (GPT2-medium) and 1.6B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .spec.schema import ModelSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int


PRESETS: dict[str, Shape] = {
    # CPU-sized presets for quickstarts and tests
    "tiny": Shape(2, 4, 64),
    "mini": Shape(4, 4, 128),
    # the paper's GPT sizes
    "gpt-5m": Shape(2, 4, 48),
    "gpt-14m": Shape(4, 4, 128),
    "gpt-22m": Shape(6, 6, 192),
    "gpt-56m": Shape(10, 6, 384),
    "gpt-162m": Shape(12, 12, 768),
    "gpt-405m": Shape(24, 16, 1024),
    "gpt-1.6b": Shape(48, 25, 1600),
}


def resolve_shape(model: ModelSpec) -> Shape:
    """The preset's shape with per-field overrides; raises ValueError naming the problem."""
    if model.preset not in PRESETS:
        raise ValueError(f"unknown model preset {model.preset!r} (known: {', '.join(PRESETS)})")
    base = PRESETS[model.preset]
    shape = Shape(
        model.n_layer or base.n_layer,
        model.n_head or base.n_head,
        model.n_embd or base.n_embd,
    )
    if shape.n_embd % shape.n_head:
        raise ValueError(f"n_embd {shape.n_embd} is not divisible by n_head {shape.n_head}")
    return shape


def count_params(shape: Shape, vocab_size: int, context_length: int, tie_embeddings: bool = False) -> int:
    """Exact parameter count of `GPT2LMHeadModel` for this shape (biases and layer norms included)."""
    d = shape.n_embd
    per_layer = 12 * d * d + 13 * d  # ln1, qkv, attn proj, ln2, mlp in/out (weights + biases)
    total = vocab_size * d + context_length * d + shape.n_layer * per_layer + 2 * d
    if not tie_embeddings:
        total += vocab_size * d  # lm_head has no bias
    return total


def gpt2_config(model: ModelSpec, vocab_size: int, context_length: int, bos_id: int = 0):
    from transformers import GPT2Config

    shape = resolve_shape(model)
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=context_length,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        resid_pdrop=model.dropout,
        embd_pdrop=model.dropout,
        attn_pdrop=model.dropout,
        tie_word_embeddings=model.tie_embeddings,
        bos_token_id=bos_id,
        eos_token_id=bos_id,
        loss_type="ForCausalLM",
    )


def build_model(model: ModelSpec, vocab_size: int, context_length: int, bos_id: int = 0) -> "torch.nn.Module":
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel(gpt2_config(model, vocab_size, context_length, bos_id))
