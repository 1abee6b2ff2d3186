"""Folders published atomically: built under a private temporary sibling, then renamed into place, so a reader
never sees half of one (prepared data, its node-local copies, checkpoints). Prepared data also carries MARKER,
written last: a folder with it is complete, wherever it was published (a file system or an object store)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

MARKER = "_SUCCESS"


@contextlib.contextmanager
def staging(final: Path) -> Iterator[Path]:
    """A new private folder beside `final` (the same file system, so the rename is atomic), removed afterwards
    whatever happens; what was renamed into place by then stays."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def rename_into_place(tmp: Path, final: Path, *, overwrite: bool = False) -> bool:
    """Move the finished folder `tmp` to `final`; True when ours is the one in place.
    `overwrite`: an existing `final` is replaced (a checkpoint written again at the same step). Otherwise a
    complete `final` (with MARKER) that another process published first wins (False: use it; the content is
    the same, being named by its hash), and an incomplete one, left by a crashed build, is replaced."""
    if overwrite and final.exists():
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
        return True
    except OSError:
        if (final / MARKER).is_file():
            return False
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        return True
