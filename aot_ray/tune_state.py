"""Tune's saved experiment state is a cache; MLflow's runs and the checkpoints in storage are the record.

`problem` tells whether a sweep's Tune state can be restored (a disk that filled up while Tune saved it leaves a
cut-off `experiment_state-*.json`); `set_aside` moves an unreadable state out of the way, so the driver rebuilds
the experiment from MLflow (finished trials are skipped) and the checkpoints in storage (`trial_checkpoints`:
every checkpoint of a trial, newest step first, whatever Tune's record says). Local and remote storage alike,
through pyarrow's file systems (the ones Tune itself writes the storage with).
"""

from __future__ import annotations

import json
import posixpath
import tempfile
import time
from typing import Any

STATE_FILES = ("experiment_state-", "basic-variant-state-", "search_gen_state-", "tuner.pkl")


def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def _children(fs: Any, path: str) -> list[Any]:
    import pyarrow.fs as pafs

    return fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))


def problem(path: str) -> str | None:
    """Why the Tune state at `path` cannot be restored (its newest experiment_state file is missing or not
    JSON), or None when it reads."""
    fs, root = _fs(path)
    try:
        names = sorted(posixpath.basename(i.path) for i in _children(fs, root))
    except OSError as e:
        return f"cannot list it ({e})"
    states = [n for n in names if n.startswith("experiment_state-") and n.endswith(".json")]
    if not states:
        return "no experiment_state file"
    newest = states[-1]
    try:
        with fs.open_input_stream(posixpath.join(root, newest)) as f:
            json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError) as e:
        return f"{newest}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    return None


def set_aside(path: str) -> str:
    """Move the Tune state files at `path` into `damaged-<time>/` beside them (kept for a post-mortem, out of
    Tune's way); returns that folder. Trial folders and their checkpoints stay where they are."""
    fs, root = _fs(path)
    aside = posixpath.join(root, time.strftime("damaged-%Y%m%d-%H%M%S"))
    fs.create_dir(aside, recursive=True)
    for info in _children(fs, root):
        name = posixpath.basename(info.path)
        if name.startswith(STATE_FILES):
            fs.move(info.path, posixpath.join(aside, name))
    return aside if "://" not in path else f"{path.split('://', 1)[0]}://{aside}"


def _step_of(fs: Any, folder: str) -> int:
    """The training step a checkpoint folder holds (its meta.json); -1 when unreadable (tried last)."""
    try:
        with fs.open_input_stream(posixpath.join(folder, "meta.json")) as f:
            return int(json.loads(f.read().decode("utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def trial_checkpoints(experiment_path: str, trial_id: str, download: int = 2) -> list[str]:
    """Every checkpoint folder of a trial in storage (`<experiment>/<trial_id>/checkpoint_*`), newest training
    step first; local paths. Tune's own record may name an older one than the newest on disk (it saves its
    state less often than trials checkpoint), one since deleted, or none at all (a rebuilt state). From remote
    storage the newest `download` are copied to a local temporary folder."""
    import pyarrow.fs as pafs

    fs, root = _fs(experiment_path)
    folder = posixpath.join(root, trial_id)
    try:
        found = [i.path for i in _children(fs, folder)
                 if i.type == pafs.FileType.Directory and posixpath.basename(i.path).startswith("checkpoint_")]
    except OSError:
        return []
    ordered = sorted(found, key=lambda p: (_step_of(fs, p), p), reverse=True)
    if "://" not in experiment_path:
        return ordered
    local = []
    for remote in ordered[:download]:
        dest = tempfile.mkdtemp(prefix="aot-ckpt-dl-")
        try:
            pafs.copy_files(remote, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        except OSError:
            continue
        local.append(dest)
    return local


def drop_trial_checkpoints(experiment_path: str, trial_ids: list[str]) -> None:
    """Delete the checkpoints of trials that start over (errored ones with --restart-errored, those whose data
    changed): left in place, a later resume would take their newest step, of the attempt or data given up."""
    import pyarrow.fs as pafs

    fs, root = _fs(experiment_path)
    for tid in trial_ids:
        folder = posixpath.join(root, tid)
        if fs.get_file_info(folder).type != pafs.FileType.NotFound:
            fs.delete_dir(folder)
