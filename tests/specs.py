"""One tiny sweep for the tests that train for real: a linear language over F2 (8 bits, k = 2, 256 lines, windows
of 32 tokens across lines), the tiny GPT, one thread. A test names only what it changes."""

from __future__ import annotations

from aot_ray.spec import TrialSpec, expand, parse_sweep

LIN = {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256, "windows": "stream"}  # windows of 32 across lines
TRAIN = {"steps": 40, "batch_size": 8, "eval_every": 20, "log_every": 5, "checkpoint_every": 10, "eval_windows": 16,
         "threads": 1}


def tiny_sweep(name: str, *, data: dict | None = None, optim: dict | None = None, model: dict | None = None,
               train: dict | None = None, grid: dict | None = None) -> dict:
    """The sweep as YAML would hold it, with the given sections merged over the tiny defaults."""
    defaults: dict = {"optim": {"lr": 3e-3, "warmup_steps": 5, **(optim or {})}, "train": {**TRAIN, **(train or {})}}
    if model:
        defaults["model"] = model
    return {"name": name, "data": {"lin": {**LIN, **(data or {})}}, "defaults": defaults,
            "grid": {"dataset": ["lin"], "model": ["tiny"], "context_length": [32], **(grid or {})}}


def tiny_trials(name: str, **sections) -> list[TrialSpec]:
    return expand(parse_sweep(tiny_sweep(name, **sections)))
