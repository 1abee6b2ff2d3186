"""Model FLOPs utilisation: tokens/s x training FLOPs per token / the GPU's peak. FLOPs per token are 6N (the
forward and backward matmuls over N parameters) plus, for GPT, 12 L d T for attention over a context of T; the
peak is dense bf16 (fp16 where the GPU has no bf16) TFLOP/s by the GPU's name, else `run.gpu_tflops`."""

from __future__ import annotations

from ..spec.presets import RECURRENT, count_params, resolve_shape

# dense (no sparsity) bf16 TFLOP/s, by a fragment of torch.cuda.get_device_name(); the first match wins
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
               ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
               ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0),
               ("T4", 65.0))


def flops_per_token(trial, vocab: int) -> float:
    shape = resolve_shape(trial.model)
    n = count_params(shape, vocab, trial.context_length, trial.model.tie_embeddings)
    attention = 12 * shape.n_layer * shape.n_embd * trial.context_length if shape.arch not in RECURRENT else 0
    return float(6 * n + attention)


def peak_tflops(device_name: str, fallback: float | None) -> float | None:
    """The GPU's dense bf16 peak by its name; `fallback` (run.gpu_tflops) for a GPU not in the table."""
    for fragment, tflops in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return tflops
    return fallback
