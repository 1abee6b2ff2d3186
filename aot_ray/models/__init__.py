"""Construction of the models the presets describe: GPT-2 through `transformers`, LSTM and GRU language models in
plain torch. Presets, shapes and parameter counts (pure) live in `aot_ray.spec.presets` and are re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..spec.presets import PRESETS, RECURRENT, Shape, arch_of, count_params, resolve_shape
from ..spec.schema import ModelSpec

if TYPE_CHECKING:
    import torch

__all__ = ["PRESETS", "RECURRENT", "Shape", "arch_of", "build_model", "count_params", "gpt2_config", "resolve_shape"]


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
    shape = resolve_shape(model)
    if shape.arch in RECURRENT:
        from .recurrent import RecurrentLM  # torch: only where a model is built (plan never does)

        return RecurrentLM(shape.arch, vocab_size, shape.n_embd, shape.n_layer, model.dropout, model.tie_embeddings)
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel(gpt2_config(model, vocab_size, context_length, bos_id))
