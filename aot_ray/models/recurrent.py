"""LSTM and GRU language models, as in the paper: token embedding (with dropout), stacked recurrent layers as
wide as the embedding (dropout between layers), a final layer norm and a head without bias.

The trainer reads `hidden_states` and the head weight (`train.loss.body_and_head`: the fused head + chunked
loss never builds the full logits); `forward(input_ids)` returns an object with `.logits`, like the
`transformers` models, for code that wants them (the benchmark's plain loop). The hidden state starts at zero for every window: a window is
read on its own, in its direction, exactly as the GPT models read it.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput


class RecurrentLM(nn.Module):
    def __init__(self, arch: str, vocab_size: int, d: int, n_layer: int, dropout: float = 0.0,
                 tie_embeddings: bool = False) -> None:
        super().__init__()
        if arch not in ("lstm", "gru"):
            raise ValueError(f"unknown recurrent architecture {arch!r} (lstm or gru)")
        self.arch = arch
        self.embed = nn.Embedding(vocab_size, d)
        self.drop = nn.Dropout(dropout)
        cell = nn.LSTM if arch == "lstm" else nn.GRU
        # torch applies this dropout between layers only, so one layer gets none (and would warn)
        self.rnn = cell(d, d, num_layers=n_layer, batch_first=True, dropout=dropout if n_layer > 1 else 0.0)
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T, d] after the final layer norm: what the head (or the trainer's fused head + loss) reads."""
        h, _ = self.rnn(self.drop(self.embed(input_ids)))
        return self.ln_f(h)

    def forward(self, input_ids: torch.Tensor) -> CausalLMOutput:
        return CausalLMOutput(logits=self.lm_head(self.hidden_states(input_ids)))
