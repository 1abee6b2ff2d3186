"""Model presets, their shapes and exact parameter counts: pure, so the spec layer validates models and the
planner prices them without importing torch. `aot_ray.models` builds the models these shapes describe.

GPT preset shapes are chosen so that, at vocabulary 50257, context 256 and an untied output head (as in the
paper), the counts land on the paper's sizes: ~4.9M, 13.7M, 22M, 56M, 162M, 405M (GPT2-medium) and 1.6B. The
recurrent models follow the paper's: token embedding, stacked LSTM/GRU layers as wide as the embedding, a final
layer norm and an untied head without bias; 1x256, 3x512 and 5x768 give the paper's ~26M, 58M, 101M (LSTM) and
~26M, 56M, 95M (GRU) at vocabulary 50257.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import ModelSpec

RECURRENT = {"lstm": 4, "gru": 3}  # gates per layer


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int  # 0 for recurrent models
    n_embd: int
    arch: str = "gpt2"
    position: str = "learned"  # a GPT's position encoding (ModelSpec.position); recurrent models: learned, unused


PRESETS: dict[str, Shape] = {
    # CPU-sized presets for quickstarts and tests
    "micro": Shape(1, 4, 32),
    "tiny": Shape(2, 4, 64),
    "mini": Shape(4, 4, 128),
    "lstm-tiny": Shape(2, 0, 64, "lstm"),
    "gru-tiny": Shape(2, 0, 64, "gru"),
    # the paper's GPT sizes
    "gpt-5m": Shape(2, 4, 48),
    "gpt-14m": Shape(4, 4, 128),
    "gpt-22m": Shape(6, 6, 192),
    "gpt-56m": Shape(10, 6, 384),
    "gpt-162m": Shape(12, 12, 768),
    "gpt-405m": Shape(24, 16, 1024),
    "gpt-1.6b": Shape(48, 25, 1600),
    # the paper's recurrent sizes
    "lstm-26m": Shape(1, 0, 256, "lstm"),
    "lstm-58m": Shape(3, 0, 512, "lstm"),
    "lstm-101m": Shape(5, 0, 768, "lstm"),
    "gru-26m": Shape(1, 0, 256, "gru"),
    "gru-56m": Shape(3, 0, 512, "gru"),
    "gru-95m": Shape(5, 0, 768, "gru"),
}


def arch_of(preset: str) -> str:
    return PRESETS[preset].arch if preset in PRESETS else "unknown"


def resolve_shape(model: ModelSpec) -> Shape:
    """The preset's shape with per-field overrides; raises ValueError naming the problem."""
    if model.preset not in PRESETS:
        raise ValueError(f"unknown model preset {model.preset!r} (known: {', '.join(PRESETS)})")
    base = PRESETS[model.preset]
    if base.arch in RECURRENT:
        if model.n_head is not None:
            raise ValueError(f"n_head does not apply to {base.arch.upper()} preset {model.preset!r} (no attention)")
        if model.position != "learned":
            raise ValueError(f"position {model.position} does not apply to {base.arch.upper()} preset "
                             f"{model.preset!r}: a recurrent model reads positions through its recurrence (GPT "
                             f"presets only)")
        return Shape(model.n_layer or base.n_layer, 0, model.n_embd or base.n_embd, base.arch)
    shape = Shape(model.n_layer or base.n_layer, model.n_head or base.n_head, model.n_embd or base.n_embd,
                  position=model.position)
    if shape.n_embd % shape.n_head:
        raise ValueError(f"n_embd {shape.n_embd} is not divisible by n_head {shape.n_head}")
    return shape


def count_params(shape: Shape, vocab_size: int, context_length: int, tie_embeddings: bool = False) -> int:
    """Exact parameter count of the model `build_model` makes for this shape (biases and layer norms included)."""
    d = shape.n_embd
    head = 0 if tie_embeddings else vocab_size * d  # no bias
    if shape.arch in RECURRENT:
        # torch's LSTM/GRU: input and hidden weights per gate, each with its own bias
        per_layer = RECURRENT[shape.arch] * (2 * d * d + 2 * d)
        return vocab_size * d + shape.n_layer * per_layer + 2 * d + head
    per_layer = 12 * d * d + 13 * d  # ln1, qkv, attn proj, ln2, mlp in/out (weights + biases)
    positions = context_length * d if shape.position == "learned" else 0  # rope and none: no parameters
    return vocab_size * d + positions + shape.n_layer * per_layer + 2 * d + head
