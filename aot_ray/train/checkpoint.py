"""Checkpoints: everything a resume needs (model, optimizer, scheduler, step, RNG, data position, run id).

A checkpoint is a folder written under a temporary name and renamed into place, so a reader never sees half
of one; `state.pt` holds tensors and RNG states, `meta.json` the human-readable position and identity. A sharded
(FSDP) trial's model and optimizer state is in `shards/` instead, written by every worker through
`torch.distributed.checkpoint`, which reads it back at any worker count (one process included).
"""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..data.tokenfile import sha256 as file_sha256
from ..publish import rename_into_place, staging

STATE = "state.pt"
META = "meta.json"
SHARDS = "shards"  # a sharded (FSDP) trial's model and optimizer state: torch.distributed.checkpoint's files


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
    with staging(final) as tmp:
        torch.save(state, tmp / STATE)
        meta = {**meta, "sha256": _digest(tmp / STATE)}  # lets a reader tell a truncated or corrupt file
        (tmp / META).write_text(json.dumps(meta, indent=2))
        rename_into_place(tmp, final, overwrite=True)
    return final


def write_sharded(path: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
                  meta: dict[str, Any], rank: int, shared: bool) -> Path:
    """Every worker, together: the model and optimizer state sharded into `path`/shards (each worker its own
    shards, the first their index too), the first worker `state.pt` (the rest of the state) and `meta.json`.
    `shared`: all workers write one folder (a file system they share); else each writes a folder of its own and
    what they report is merged into one checkpoint (Ray Train does)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = Path(path)
    tmp = final.with_name(f".{final.name}.partial")
    if rank == 0 or not shared:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()  # the folder exists before anyone writes to it
    model_state, optim_state = get_state_dict(model, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / SHARDS))
    if rank == 0:
        torch.save(state, tmp / STATE)
        (tmp / META).write_text(json.dumps({**meta, "sha256": _digest(tmp / STATE), "sharded": True}, indent=2))
    dist.barrier()  # every shard is written before the folder is renamed into place
    if rank == 0 or not shared:
        rename_into_place(tmp, final, overwrite=True)
    return final


def read_sharded_into(path: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Load a sharded checkpoint's model and optimizer state into `model` and `opt`, sharded or not, at this
    process's worker count (torch.distributed.checkpoint reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, opt)  # the layout to fill (the optimizer's initialised)
    both = {"model": model_state, "optim": optim_state}
    dcp.load(both, checkpoint_id=str(Path(path) / SHARDS))
    set_state_dict(model, opt, model_state_dict=both["model"], optim_state_dict=both["optim"])


class CorruptCheckpoint(RuntimeError):
    pass


def _digest(path: Path) -> str:
    return file_sha256(path)


def read(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
        if "sha256" in meta and _digest(path / STATE) != meta["sha256"]:
            raise CorruptCheckpoint(f"{path / STATE} does not match its checksum")
        # weights_only=False: the state holds optimizer/scheduler dicts and RNG tuples written by this code
        state = torch.load(path / STATE, map_location="cpu", weights_only=False)
    except CorruptCheckpoint:
        raise
    except Exception as e:  # missing files, truncated JSON or pickle
        raise CorruptCheckpoint(f"{path}: {type(e).__name__}: {e}") from None
    return state, meta


def read_first_valid(paths: Iterable[str | Path], accept: Callable[[dict[str, Any]], bool] | None = None,
                     skipped: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any], Path] | None:
    """The newest readable checkpoint of `paths` (newest first) whose meta `accept` takes; a bad one is skipped
    with a warning, and why is appended to `skipped` (the trainer passes it on to the driver's output)."""
    notes = skipped if skipped is not None else []
    for p in paths:
        try:
            state, meta = read(p)
        except CorruptCheckpoint as e:
            notes.append(f"skipped unreadable checkpoint {Path(p).name} ({str(e).splitlines()[0][:200]})")
            warnings.warn(f"{notes[-1]}; falling back to the previous one")
            continue
        if accept is None or accept(meta):
            return state, meta, Path(p)
        notes.append(f"skipped checkpoint at step {meta.get('step')}: its run's metrics up to that step never "
                     f"reached the tracking store")
        warnings.warn(f"{notes[-1]} ({p}); falling back to the previous one")
    return None


def prune(folder: Path, keep: int) -> None:
    """Keep the newest `keep` step-* checkpoints of a local folder."""
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
