"""Construction of the models the presets describe: GPT-2 through `transformers` (learned positions), the same
decoder with rotary or no position encoding through `transformers`' GPT-NeoX, and LSTM and GRU language models in
plain torch. Presets, shapes and parameter counts (pure) live in `aot_ray.spec.presets` and are re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..spec.presets import PRESETS, RECURRENT, Shape, arch_of, count_params, resolve_shape
from ..spec.schema import ModelSpec

if TYPE_CHECKING:
    import torch

__all__ = ["PRESETS", "RECURRENT", "Shape", "arch_of", "build_model", "count_params", "gpt2_config", "neox_config",
           "resolve_shape"]
INIT_STD = 0.02  # GPT-2's initializer range, for every GPT whatever its position encoding


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


def neox_config(model: ModelSpec, vocab_size: int, context_length: int, bos_id: int = 0):
    """GPT-NeoX configured as GPT-2 but for positions: sequential (not parallel) residual, tanh GELU, 4d MLP,
    biases, layer norms at 1e-5; rotary embeddings on every head dimension (`rope`) or on none (`none`)."""
    from transformers import GPTNeoXConfig

    shape = resolve_shape(model)
    rotary = {"rope": 1.0, "none": 0.0}[model.position]
    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=shape.n_embd,
        num_hidden_layers=shape.n_layer,
        num_attention_heads=shape.n_head,
        intermediate_size=4 * shape.n_embd,
        hidden_act="gelu_new",
        hidden_dropout=model.dropout,
        attention_dropout=model.dropout,
        max_position_embeddings=context_length,
        use_parallel_residual=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": rotary},
        layer_norm_eps=1e-5,
        initializer_range=INIT_STD,
        tie_word_embeddings=model.tie_embeddings,
        use_cache=False,
        bos_token_id=bos_id,
        eos_token_id=bos_id,
    )


def build_model(model: ModelSpec, vocab_size: int, context_length: int, bos_id: int = 0) -> "torch.nn.Module":
    shape = resolve_shape(model)
    if shape.arch in RECURRENT:
        from .recurrent import RecurrentLM  # torch: only where a model is built (plan never does)

        return RecurrentLM(shape.arch, vocab_size, shape.n_embd, shape.n_layer, model.dropout, model.tie_embeddings)
    if model.position == "learned":
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel(gpt2_config(model, vocab_size, context_length, bos_id))
    return _neox(neox_config(model, vocab_size, context_length, bos_id))


def _neox(config) -> "torch.nn.Module":
    """GPT-NeoX with GPT-2's scaled initialization of the two projections into the residual stream (std 0.02 /
    sqrt(2 n_layer)), so that a rope or none model starts as its learned-position twin does."""
    import torch
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(config)
    std = INIT_STD / (2 * config.num_hidden_layers) ** 0.5
    with torch.no_grad():
        for layer in model.base_model.layers:
            layer.attention.dense.weight.normal_(0.0, std)
            layer.mlp.dense_4h_to_h.weight.normal_(0.0, std)
    return model
