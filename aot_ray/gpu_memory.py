"""Predicted peak accelerator memory of a training trial (pure), and the micro-batch that fits a memory budget.

The peak of an AdamW step with the trainer's fused head + loss is the sum of
  - parameters (fp32), AdamW's two moments (fp32), gradients (fp32; held across micro-batches when accumulating),
  - under bf16 autocast, the bf16 copies of the matmul weights that autograd keeps for the backward pass,
  - activations saved for the backward pass: `per_layer x n_layer + outside` bytes per token of the micro-batch,
  - the loss: the hidden-state and head-weight gradients it keeps (4 bytes x tokens x d, 4 bytes x vocab x d) and
    one chunk of logits (fp32 and its softmax gradient in the compute dtype), never `[batch, context, vocab]`.

Activation bytes per token are measured, not guessed: `tests/test_memory.py` counts the bytes autograd saves
(every saved storage once) for GPT-2 (transformers, SDPA attention) and the LSTM/GRU models, and checks the
whole prediction against the live-tensor peak of real training steps on CPU. The coefficients below are those
measurements, in units of the width d: GPT-2 saves 64 d per layer per token under bf16 autocast (layer-norm
inputs in fp32, matmul inputs in bf16, the tanh-GELU's intermediates, q/k/v and the attention output), 120 d in
fp32. On CUDA the fused attention keeps only a log-sum-exp per head (4 bytes) besides; the CPU kernel falls back
to the unfused path under attention dropout and keeps the attention matrix (about 14 bytes per entry, per head).
`torch.compile` fuses the GELU and recomputes cheap element-wise ops, so the eager figure is an upper bound for
compiled trials; `python -m aot_ray.bench --device cuda --memory` prints predicted against
`torch.cuda.max_memory_allocated` for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import precision
from .models import RECURRENT, Shape, count_params, resolve_shape

if TYPE_CHECKING:
    from .spec.schema import TrialSpec

GiB = 2**30
# Bytes of fp32 logits one chunk of the fused head + loss may hold. Large enough that the head's matmul runs at
# full speed on a GPU (about 1300 rows at vocabulary 50257), small next to the rest of a trial's memory.
CHUNK_BYTES = 256 * 2**20


def chunk_rows(vocab_size: int, budget_bytes: int = CHUNK_BYTES) -> int:
    return max(1, budget_bytes // (4 * vocab_size))


# bytes saved per token per layer, in units of d: (bf16 autocast, fp32), measured (see the module docstring).
# "neox" is a GPT with rope or no position encoding (GPT-NeoX's layer): it keeps its rotated (or concatenated)
# queries and keys besides GPT-2's tensors, about 2 d more under bf16 and 4 d more in fp32
PER_LAYER = {"gpt2": (64.25, 120.25), "neox": (66.25, 124.25), "lstm": (45.2, 65.4), "gru": (18.0, 32.0)}
OUTSIDE = {"gpt2": (8.1, 8.0), "neox": (8.1, 8.0), "lstm": (4.1, 8.0), "gru": (8.1, 8.1)}  # embeddings, final
# norm, loss input grad
DROPOUT_PER_LAYER = {"gpt2": 2.0, "neox": 2.0, "lstm": 4.0, "gru": 4.0}  # bool masks (and dropped copies), in d


def _family(shape: Shape) -> str:
    """Which measured coefficients apply: the architecture, or "neox" for a GPT without learned positions."""
    return "neox" if shape.arch == "gpt2" and shape.position != "learned" else shape.arch
CPU_ATTN_DROPOUT_BYTES = 14.0  # per attention entry per head: scores, probabilities, mask (CPU unfused path)
# allocator rounding and fragmentation, cuBLAS/cuDNN workspaces: what a caching allocator holds beyond live bytes
OVERHEAD = 1.05


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    optimizer: int
    grads: int
    weight_casts: int
    activations: int
    loss: int
    workspace: int

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.grads + self.weight_casts + self.activations + self.loss + \
            self.workspace

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "optimizer": self.optimizer, "grads": self.grads,
                "weight_casts": self.weight_casts, "activations": self.activations, "loss": self.loss,
                "workspace": self.workspace, "total": self.total}


def _matmul_weights(shape: Shape, vocab: int) -> int:
    d = shape.n_embd
    if shape.arch in RECURRENT:
        return shape.n_layer * RECURRENT[shape.arch] * 2 * d * d + vocab * d
    return shape.n_layer * 12 * d * d + vocab * d


def _gathered(shape: Shape, vocab: int, context: int, tie_embeddings: bool) -> int:
    """Parameters a sharded (FSDP) worker holds whole while it computes: the root's (embeddings, final norm,
    head: gathered for the whole step) and two layers' (the one computing, the next prefetched)."""
    n = count_params(shape, vocab, context, tie_embeddings)
    layer = (n - count_params(Shape(0, shape.n_head, shape.n_embd, shape.arch, shape.position), vocab, context,
                              tie_embeddings)) // max(shape.n_layer, 1)
    return n - shape.n_layer * layer + 2 * layer


def predict(shape: Shape, vocab: int, context: int, micro_batch: int, *, passes: int = 1, bf16: bool = True,
            dropout: float = 0.0, tie_embeddings: bool = False, backend: str = "cuda",
            shards: int = 1) -> MemoryEstimate:
    """Peak bytes of one worker training `micro_batch` windows of `context` tokens per forward/backward pass,
    `passes` passes per optimizer step. `backend` is the kernel family whose saved tensors apply ("cuda", "cpu").
    `shards` > 1: FSDP over that many workers: each holds 1/shards of the parameters, gradients and AdamW state,
    plus the parameters (and their gradients) it has gathered whole while computing."""
    if shards > 1:
        whole = predict(shape, vocab, context, micro_batch, passes=passes, bf16=bf16, dropout=dropout,
                        tie_embeddings=tie_embeddings, backend=backend)
        n = count_params(shape, vocab, context, tie_embeddings)
        gathered = _gathered(shape, vocab, context, tie_embeddings)
        params, optimizer, grads = 4 * (n // shards + gathered), 8 * n // shards, 4 * (n // shards + gathered)
        return MemoryEstimate(params=params, optimizer=optimizer, grads=grads, weight_casts=whole.weight_casts,
                              activations=whole.activations, loss=whole.loss,
                              workspace=int((params + optimizer + grads + whole.activations + whole.loss)
                                            * (OVERHEAD - 1)))
    n = count_params(shape, vocab, context, tie_embeddings)
    d, arch, family = shape.n_embd, shape.arch, _family(shape)
    tokens = micro_batch * context
    i = 0 if bf16 else 1
    per_layer = PER_LAYER[family][i] * d
    if arch == "gpt2":
        per_layer += 4 * shape.n_head  # attention log-sum-exp, fp32
        if dropout > 0:
            per_layer += DROPOUT_PER_LAYER[family] * d
            if backend == "cpu":
                per_layer += CPU_ATTN_DROPOUT_BYTES * shape.n_head * context
    elif dropout > 0 and shape.n_layer > 1:
        per_layer += DROPOUT_PER_LAYER[arch] * d
    activations = int(tokens * (shape.n_layer * per_layer + OUTSIDE[family][i] * d))
    rows = min(chunk_rows(vocab), tokens)
    # saved: the hidden-state gradient (fp32) is counted in OUTSIDE; the head-weight gradient is kept until backward
    # the fp32 logits become their softmax gradient in place; under bf16 that gradient is cast for the matmuls
    loss = 4 * vocab * d + rows * vocab * (4 + (2 if bf16 else 0)) + (2 * vocab * d if bf16 else 0)
    # gradients: all of them from the second micro-batch on; with one pass, the backward pass frees activations
    # about as fast as it allocates gradients, except the head's, which comes first
    grads = 4 * n if passes > 1 else 4 * vocab * d
    return MemoryEstimate(
        params=4 * n,
        optimizer=8 * n,
        grads=grads,
        weight_casts=2 * _matmul_weights(shape, vocab) if bf16 else 0,
        activations=activations,
        loss=loss,
        workspace=int((4 * n + 8 * n + grads + activations + loss) * (OVERHEAD - 1)),
    )


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def fitting_micro_batch(shape: Shape, vocab: int, context: int, per_worker_batch: int, budget: int, *,
                        bf16: bool = True, dropout: float = 0.0, tie_embeddings: bool = False,
                        backend: str = "cuda", shards: int = 1) -> int | None:
    """The largest divisor m of the per-worker batch whose prediction (with batch/m passes) fits `budget`
    bytes; None when not even one window fits."""
    for m in sorted(divisors(per_worker_batch), reverse=True):
        est = predict(shape, vocab, context, m, passes=per_worker_batch // m, bf16=bf16, dropout=dropout,
                      tie_embeddings=tie_embeddings, backend=backend, shards=shards)
        if est.total <= budget:
            return m
    return None


def uses_bf16(trial: "TrialSpec", backend: str = "cuda") -> bool:
    """16-bit autocast as the trainer picks it on that backend (`aot_ray.precision`: bf16, or fp16 where the
    GPU has no bf16; the same bytes either way), which the saved-tensor sizes below assume."""
    return precision.half(trial.train.precision, backend)


def micro_batches(trial: "TrialSpec", vocab: int, *, workers: int | None = None, budget: int | None = None,
                  backend: str = "cuda") -> tuple[int, int]:
    """(windows per forward/backward pass per worker, passes per optimizer step) for the trial; `auto` picks the
    largest micro-batch whose prediction fits `budget` bytes (one pass of the whole batch when no budget is known,
    one window when nothing fits: the memory check then refuses the trial). Raises ValueError when `micro_batch`
    does not divide the per-worker batch."""
    t = trial.train
    w = workers or trial.resources.workers
    per_worker = trial.per_worker_batch(w)
    if t.micro_batch is None:
        return t.batch_size // w, t.grad_accum
    if t.micro_batch == "auto":
        if budget is None:
            return per_worker, 1
        m = fitting_micro_batch(resolve_shape(trial.model), vocab, trial.context_length, per_worker, budget,
                                bf16=uses_bf16(trial, backend), dropout=trial.model.dropout,
                                tie_embeddings=trial.model.tie_embeddings, backend=backend,
                                shards=shards_of(trial, w)) or 1
        return m, per_worker // m
    if per_worker % t.micro_batch:
        raise ValueError(f"train.micro_batch {t.micro_batch} does not divide the {per_worker} windows each worker "
                         f"takes per step (batch_size {t.batch_size} x grad_accum {t.grad_accum} / {w} workers)")
    return t.micro_batch, per_worker // t.micro_batch


def shards_of(trial: "TrialSpec", workers: int | None = None) -> int:
    """Over how many workers the trial's model state is sharded: its workers under FSDP, else 1 (DDP replicates)."""
    return (workers or trial.resources.workers) if trial.resources.sharding == "fsdp" else 1


def predict_trial(trial: "TrialSpec", vocab: int, micro: int, passes: int, backend: str = "cuda",
                  workers: int | None = None) -> MemoryEstimate:
    """Peak memory of one worker of the trial at this micro-batch (over `workers`, else its own worker count)."""
    return predict(resolve_shape(trial.model), vocab, trial.context_length, micro, passes=passes,
                   bf16=uses_bf16(trial, backend), dropout=trial.model.dropout,
                   tie_embeddings=trial.model.tie_embeddings, backend=backend, shards=shards_of(trial, workers))


def fewest_shards(trial: "TrialSpec", vocab: int, budget: int, most: int = 64) -> int | None:
    """The fewest FSDP workers (each with its own GPU of `budget` bytes) whose per-worker peak fits, at a
    micro-batch that divides the per-worker batch; None when even `most` do not."""
    shape, global_batch = resolve_shape(trial.model), trial.train.batch_size * trial.train.grad_accum
    for k in range(2, most + 1):
        if trial.train.batch_size % k:
            continue
        if fitting_micro_batch(shape, vocab, trial.context_length, global_batch // k, budget,
                               bf16=uses_bf16(trial), dropout=trial.model.dropout,
                               tie_embeddings=trial.model.tie_embeddings, shards=k) is not None:
            return k
    return None


@dataclass(frozen=True)
class MemoryCheck:
    """A GPU trial's micro-batch, its predicted peak per worker, and its share of the GPU (None: unknown)."""

    micro: int
    passes: int
    estimate: MemoryEstimate
    budget: int | None
    gpu_bytes: int | None
    source: str  # where the GPU size came from

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.estimate.total <= self.budget


def gpu_share(trial: "TrialSpec") -> float:
    """The fraction of a GPU the trial gets: its `resources.gpu` when a fraction, else the whole GPU."""
    g = trial.resources.gpu
    return g if 0 < g < 1 else 1.0


def gpu_budget_of(trial: "TrialSpec", gpu_bytes: int) -> int:
    """Bytes of a GPU of `gpu_bytes` that the trial may use (the one rule: trainer, memory check, benchmark)."""
    return int(gpu_bytes * gpu_share(trial))


def declared_gpu_bytes(trial: "TrialSpec", gpu_memory_gb: float | None,
                       by_resource: dict[str, float]) -> tuple[int | None, str]:
    """The GPU size the sweep declares for the trial's nodes: its custom resource's, else run.gpu_memory_gb."""
    sizes = [(by_resource[r], f"run.gpu_memory_gb_by_resource.{r}") for r in trial.resources.custom if r in by_resource]
    if sizes:
        gb, where = min(sizes)
        return int(gb * GiB), where
    if gpu_memory_gb:
        return int(gpu_memory_gb * GiB), "run.gpu_memory_gb"
    return None, ""


def check_trial(trial: "TrialSpec", vocab: int, gpu_bytes: int | None, source: str = "") -> MemoryCheck:
    """Resolve the trial's micro-batch against its share of a GPU of `gpu_bytes` and predict its peak."""
    budget = gpu_budget_of(trial, gpu_bytes) if gpu_bytes else None
    micro, passes = micro_batches(trial, vocab, budget=budget)
    return MemoryCheck(micro, passes, predict_trial(trial, vocab, micro, passes), budget, gpu_bytes, source)


def refusal(trial: "TrialSpec", vocab: int, check: MemoryCheck) -> str:
    """One line for a trial whose prediction exceeds its share: the numbers, and a micro-batch that fits."""
    gib = lambda b: f"{b / GiB:.1f} GiB" if b >= GiB / 10 else f"{b / 2**20:.1f} MiB"  # noqa: E731
    per_worker = trial.per_worker_batch()
    share = f"gpu {trial.resources.gpu:g} x {gib(check.gpu_bytes)}" if check.gpu_bytes else ""
    head = (f"trial {trial.trial_id}: predicted peak GPU memory {gib(check.estimate.total)} at micro-batch "
            f"{check.micro} x {check.passes} exceeds its share of the GPU, {gib(check.budget)} ({share}, from "
            f"{check.source})")
    m = fitting_micro_batch(resolve_shape(trial.model), vocab, trial.context_length, per_worker, check.budget,
                            bf16=uses_bf16(trial), dropout=trial.model.dropout,
                            tie_embeddings=trial.model.tie_embeddings, shards=shards_of(trial))
    if m is not None:
        return f"{head}; set train.micro_batch: {m} (or auto) for model {trial.model.preset}"
    k = fewest_shards(trial, vocab, int(check.gpu_bytes or check.budget))
    shard = (f"; or shard it over GPUs: resources.sharding: fsdp with resources.workers: {k} (the fewest whole "
             f"GPUs of this size it fits on, train.micro_batch: auto) for model {trial.model.preset}") if k else ""
    return (f"{head}; even one window per pass does not fit: give model {trial.model.preset} a larger "
            f"resources.gpu share or a larger GPU" + shard)
