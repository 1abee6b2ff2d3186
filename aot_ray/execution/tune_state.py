"""Tune's saved experiment state is a cache; MLflow's runs and the checkpoints in storage are the record.

`problem` tells whether a sweep's Tune state can be restored (a disk that filled up while Tune saved it leaves a
cut-off `experiment_state-*.json`); `set_aside` moves an unreadable state out of the way, so the driver rebuilds
the experiment from MLflow (finished trials are skipped) and the checkpoints in storage (`trial_checkpoints`:
every checkpoint of a trial, newest step first, whatever Tune's record says). Local and remote storage alike,
through `aot_ray.storage` (fsspec).
"""

from __future__ import annotations

import json
import posixpath
import time
from typing import Any

from .. import storage

STATE_FILES = ("experiment_state-", "basic-variant-state-", "search_gen_state-", "tuner.pkl")


def _name(entry: dict[str, Any]) -> str:
    return posixpath.basename(entry["name"].rstrip("/"))


def problem(path: str) -> str | None:
    """Why the Tune state at `path` cannot be restored (its newest experiment_state file is missing or not
    JSON), or None when it reads."""
    try:
        names = sorted(_name(e) for e in storage.children(path))
    except OSError as e:
        return f"cannot list it ({e})"
    states = [n for n in names if n.startswith("experiment_state-") and n.endswith(".json")]
    if not states:
        return "no experiment_state file"
    newest = states[-1]
    try:
        json.loads(storage.read_text(storage.join(path, newest)))
    except (OSError, ValueError) as e:
        return f"{newest}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return None


def set_aside(path: str) -> str:
    """Move the Tune state files at `path` into `damaged-<time>/` beside them (kept for a post-mortem, out of
    Tune's way); returns that folder. Trial folders and their checkpoints stay where they are."""
    aside = storage.join(path, time.strftime("damaged-%Y%m%d-%H%M%S"))
    storage.make_dirs(aside)
    for entry in storage.children(path):
        name = _name(entry)
        if name.startswith(STATE_FILES):
            storage.move(storage.join(path, name), storage.join(aside, name))
    return aside


def _step_of(folder: str) -> int:
    """The training step a checkpoint folder holds (its meta.json); -1 when unreadable (tried last)."""
    try:
        return int(json.loads(storage.read_text(storage.join(folder, "meta.json")))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def trial_checkpoints(experiment_path: str, trial_id: str, download: int = 2) -> list[str]:
    """Every checkpoint folder of a trial in storage (`<experiment>/<trial_id>/checkpoint_*`), newest training
    step first; local paths. Tune's own record may name an older one than the newest on disk (it saves its
    state less often than trials checkpoint), one since deleted, or none at all (a rebuilt state). From remote
    storage (s3://, gs://, any fsspec URI) the newest `download` are copied to a local temporary folder: an
    unreadable newest one falls back to the next there as it does on a disk."""
    folder = storage.under(experiment_path, trial_id, what="trial id")
    try:
        found = [storage.join(folder, _name(e)) for e in storage.children(folder)
                 if e.get("type") == "directory" and _name(e).startswith("checkpoint_")]
    except OSError:
        return []
    ordered = sorted(found, key=lambda p: (_step_of(p), p), reverse=True)
    if not storage.is_remote(experiment_path):
        return ordered
    local = []
    for remote in ordered[:download]:
        try:
            local.append(storage.local_copy(remote))
        except OSError:
            continue
    return local


def drop_trial_checkpoints(experiment_path: str, trial_ids: list[str]) -> None:
    """Delete the checkpoints of trials that start over (errored ones with --restart-errored, those whose data
    changed): left in place, a later resume would take their newest step, of the attempt or data given up."""
    for tid in trial_ids:
        storage.remove_tree(storage.under(experiment_path, tid, what="trial id"))
