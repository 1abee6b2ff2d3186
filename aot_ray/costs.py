"""What a trial costs, from its spec alone (pure but for one disk-usage probe): parameters, training tokens, 6 N D
FLOPs and GPU-hours, checkpoint bytes and what the trials to run keep in storage, the tokens of its splits, its
epochs and effective validation windows, the resources it asks for. `plan` shows these; `run` refuses a storage without room; the progress line
counts tokens with them."""

from __future__ import annotations

from typing import Any

from .data.prepare import vocab_size_of
from .errors import DiskFull
from .models import count_params, resolve_shape
from .spec import TrialSpec
from .spec.schema import SYNTHETIC_KINDS, split_sizes
from .storage import Storage


def trial_cost(trial: TrialSpec, gpu_tflops: float = 250.0) -> dict[str, Any]:
    """Parameters, training tokens, 6*N*D FLOPs and, for GPU trials, GPU-hours at `gpu_tflops` per GPU."""

    vocab = trial_vocab(trial)
    n = count_params(resolve_shape(trial.model), vocab, trial.context_length, trial.model.tie_embeddings)
    tokens = trial.train.steps * trial.train.batch_size * trial.train.grad_accum * trial.context_length
    flops = 6 * n * tokens
    gpus = trial.resources.gpu
    # a fractional GPU is shared: the trial gets about that fraction of its throughput, for as many GPU-hours
    gpu_hours = flops / (gpu_tflops * 1e12) / 3600 if gpus else None
    return {"n_params": n, "tokens": tokens, "flops": flops, "gpu_hours": gpu_hours,
            "checkpoint_bytes": checkpoint_bytes(n)}


def trial_vocab(trial: TrialSpec) -> int:
    """The vocabulary of a trial's model: its data's, and the joint model's two direction tokens."""
    return vocab_size_of(trial.data) + (2 if trial.joint else 0)


def checkpoint_bytes(n_params: int) -> int:
    """One checkpoint in storage: fp32 weights and AdamW's two moments, plus RNG states and metadata."""
    return n_params * 4 * 3 + 64 * 1024


def storage_need(trials: list[TrialSpec]) -> int:
    """Bytes of checkpoints the trials hold in storage at once: train.keep_checkpoints each, one more in flight."""
    return sum(trial_cost(t)["checkpoint_bytes"] * (t.train.keep_checkpoints + 1) for t in trials)


def check_space(trials: list[TrialSpec], storage: Storage) -> None:
    """Refuse, before the trials start, a local storage without room for their checkpoints."""
    import shutil

    if storage.remote or not trials:
        return
    need, free = storage_need(trials), shutil.disk_usage(storage.root).free
    if free < need:
        raise DiskFull(f"storage {storage} has {free / 1e6:.1f} MB free; the {len(trials)} trial(s) to run keep about "
                       f"{need / 1e6:.1f} MB of checkpoints there (train.keep_checkpoints each); free space or pass "
                       f"another --storage")


def train_tokens_of(trial: TrialSpec, manifest: dict | None = None) -> int | None:
    """Tokens in the trial's training split: computed for synthetic data, read from a prepared manifest."""

    if trial.data.kind in SYNTHETIC_KINDS:
        return split_sizes(trial.data)[0] * trial.data.line_tokens()
    return int(manifest["tokens"]["train"]) if manifest else None


def val_tokens_of(trial: TrialSpec, manifest: dict | None = None) -> int | None:
    """Tokens in the trial's validation split: computed for synthetic data, read from a prepared manifest."""

    if trial.data.kind in SYNTHETIC_KINDS:
        return split_sizes(trial.data)[1] * trial.data.line_tokens()
    return int(manifest["tokens"]["val"]) if manifest else None


def eval_windows_of(trial: TrialSpec, val_tokens: int | None) -> int | None:
    """The validation windows the trial evaluates on: train.eval_windows, cut to what the split holds (the
    trainer takes the same number and logs it as the effective value); None when the split's size is unknown."""
    if val_tokens is None or val_tokens < trial.context_length:
        return None
    return min(trial.train.eval_windows, (val_tokens - trial.context_length) // trial.context_length + 1)


def epochs_of(trial: TrialSpec, train_tokens: int | None) -> float | None:
    """How many times the trial sees its training split: steps x global batch / training windows."""
    if not train_tokens or train_tokens < trial.context_length:
        return None
    windows = (train_tokens - trial.context_length) // trial.stride + 1
    return trial.train.steps * trial.train.batch_size * trial.train.grad_accum / windows


def resources_of(trial: TrialSpec) -> dict[str, float]:
    """What the trial asks for in all: per worker, times `workers` for a data-parallel trial (shown by `plan`)."""
    r = trial.resources
    out: dict[str, float] = {"workers": r.workers} if r.workers > 1 else {}
    out["cpu"] = r.cpu
    if r.gpu:
        out["gpu"] = r.gpu
    out.update(r.custom)
    return out
