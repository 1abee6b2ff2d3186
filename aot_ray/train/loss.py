"""The language-model loss without the `[batch, context, vocab]` logits: the output head and the cross-entropy are
computed together, a chunk of token rows at a time.

Training uses `fused_linear_cross_entropy`: its forward pass walks the chunks, computes each chunk's logits in the
autocast dtype, its loss in fp32, and right away the gradients of that loss with respect to the hidden states and
the head weight (softmax - one-hot, times the head or the hidden states). Only those two gradients are kept for the
backward pass, so at no time does more than one chunk's logits exist: the peak is `chunk_rows x vocab`, not
`batch x context x vocab` in fp32 plus its gradient, which dominated the memory of small models at vocabulary 50257.
The arithmetic is the same as `F.cross_entropy` on full logits (tested in value and gradient).

Evaluation uses `token_losses` (no gradients): the same chunking, every token's loss kept for the report's
per-window and per-position tables.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..gpu_memory import chunk_rows

def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return h.dtype


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(h @ w.T, y); the gradients are formed in the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, rows: int,  # type: ignore[override]
                dtype: torch.dtype) -> torch.Tensor:
        n = h.shape[0]
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if want_h else None
        acc = torch.promote_types(dtype, torch.float32)  # the softmax and the sums: fp32, or fp64 when given it
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if want_w else None
        total = torch.zeros((), dtype=acc, device=h.device)
        wc = w.to(dtype)
        for i in range(0, n, rows):
            hc = h[i : i + rows].to(dtype)
            yc = y[i : i + rows]
            logits = (hc @ wc.t()).to(acc)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, yc[:, None]).squeeze(1)).sum()
            if want_h or want_w:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place: one chunk of fp32 logits at a time
                g[torch.arange(len(yc), device=g.device), yc] -= 1.0
                g = g.to(dtype)
                if want_h:
                    grad_h[i : i + rows] = g @ wc
                if want_w:
                    grad_w += (g.t() @ hc).to(acc)
            del logits
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.flags = (want_h, want_w, w.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        want_h, want_w, w_dtype = ctx.flags
        saved = list(ctx.saved_tensors)
        gh = saved.pop(0) * grad_out.to(saved[0].dtype) if want_h else None
        gw = (saved.pop(0) * grad_out).to(w_dtype) if want_w else None
        return gh, gw, None, None, None


def fused_linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, rows: int | None = None,
                               reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the logits `h @ w.T` against `y`, reduced by `mean` or `sum`. h: [..., d], w: [V, d],
    y: [...] token ids. Under autocast the head's matmuls run in the autocast dtype, the softmax in fp32."""
    h2, y2 = h.reshape(-1, h.shape[-1]), y.reshape(-1)
    total = _FusedLinearCrossEntropy.apply(h2, w, y2, rows or chunk_rows(w.shape[0]), _compute_dtype(h))
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / y2.numel()
    raise ValueError(f"reduction must be mean or sum, got {reduction!r}")


@torch.no_grad()
def token_losses(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Every token's cross-entropy (fp32, shaped like `y`), one chunk of logits at a time."""
    h2, y2 = h.reshape(-1, h.shape[-1]), y.reshape(-1)
    dtype, rows = _compute_dtype(h), rows or chunk_rows(w.shape[0])
    wc = w.to(dtype)
    acc = torch.promote_types(dtype, torch.float32)
    out = torch.empty(y2.shape, dtype=acc, device=h.device)
    for i in range(0, len(y2), rows):
        logits = (h2[i : i + rows].to(dtype) @ wc.t()).to(acc)
        yc = y2[i : i + rows]
        out[i : i + rows] = torch.logsumexp(logits, dim=-1) - logits.gather(1, yc[:, None]).squeeze(1)
    return out.view(y.shape)


def body_and_head(model: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor],
                                            Callable[[], torch.Tensor]]:
    """(the module that makes hidden states, a function input_ids -> hidden states [B, T, d], a function -> the
    head weight). The weight is looked up at each call: under FSDP the module holds a sharded parameter between
    forwards and the gathered one during them."""
    if hasattr(model, "base_model") and hasattr(model, "lm_head"):  # transformers' GPT-2 and GPT-NeoX
        body = model.base_model
        return body, lambda x: body(input_ids=x).last_hidden_state, lambda: model.lm_head.weight
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):  # RecurrentLM
        return model, model.hidden_states, lambda: model.lm_head.weight
    raise TypeError(f"no hidden-state body and lm_head on {type(model).__name__}")


class LMObjective(nn.Module):
    """forward(input_ids, targets) -> mean loss, through the body (compiled or not) and the fused head + loss.

    The model is the only registered child, so DDP sees exactly its parameters and the model's own state dict
    stays the checkpoint format. With `compile` the body runs through `torch.compile` in training; evaluation
    runs it eagerly, so the compiled graph is never recompiled for no-grad batches of another size."""

    def __init__(self, model: nn.Module, compile: bool = False) -> None:
        super().__init__()
        self.model = model
        _, hidden, head = body_and_head(model)
        # not submodules: no second registration of the parameters
        object.__setattr__(self, "_eager_hidden", hidden)
        object.__setattr__(self, "_hidden", torch.compile(hidden) if compile else hidden)
        object.__setattr__(self, "_head", head)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, per_token: bool = False) -> torch.Tensor:
        """The mean loss; with `per_token`, every token's loss (evaluation: no grad, the body run eagerly).
        Under FSDP both go through here, so that the sharded parameters are gathered."""
        if per_token:
            with torch.no_grad():
                return token_losses(self._eager_hidden(input_ids), self._head(), targets)
        return fused_linear_cross_entropy(self._hidden(input_ids), self._head(), targets)

    def per_token(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self(input_ids, targets, per_token=True)
