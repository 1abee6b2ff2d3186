"""Checkpoints: everything a resume needs (model, optimizer, scheduler, step, RNG, data position, run id).

A checkpoint is a folder written under a temporary name and renamed into place, so a reader never sees half
of one; `state.pt` holds tensors and RNG states, `meta.json` the human-readable position and identity.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE = "state.pt"
META = "meta.json"


def rng_state() -> dict[str, Any]:
    out = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write(path: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write a checkpoint folder at `path` atomically (temporary sibling + rename)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        torch.save(state, tmp / STATE)
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    path = Path(path)
    meta = json.loads((path / META).read_text())
    # weights_only=False: the state holds optimizer/scheduler dicts and RNG tuples written by this code
    state = torch.load(path / STATE, map_location="cpu", weights_only=False)
    return state, meta
