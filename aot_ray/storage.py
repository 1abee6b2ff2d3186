"""Where a sweep keeps its files, local path or URI (`s3://`, `gs://`, `file://`, fsspec's `memory://`), in one
place: the root, the prepared data, the reports, Tune's experiment folders, and the file operations on them
(listing, reading, moving, deleting) through fsspec, so every one works the same on a bucket as on a disk.

    <root>/data/<kind>-<hash>/          prepared data (aot_ray.data.prepare), built once per corpus
    <root>/reports/<sweep>/             the report's files (local roots; a bucket's reports are on the parent run)
    <root>/<experiment>/                Tune's experiment: its state files and <trial_id>/checkpoint_* folders
"""

from __future__ import annotations

import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def is_remote(path: str | Path) -> bool:
    """A URI (any scheme, file:// included) rather than a plain local path."""
    return "://" in str(path)


def filesystem(path: str | Path) -> tuple[Any, str]:
    """(fsspec file system, path within it) for a local path or a URI."""
    import fsspec

    return fsspec.core.url_to_fs(str(path))


def join(root: str | Path, *parts: str) -> str:
    return posixpath.join(str(root).rstrip("/"), *parts) if is_remote(root) else str(Path(root, *parts))


@dataclass(frozen=True)
class Storage:
    """A sweep's storage root (`--storage`, run.storage)."""

    root: str

    @classmethod
    def of(cls, root: str | Path) -> "Storage":
        return cls(str(root).rstrip("/") if is_remote(root) else str(Path(root).resolve()))

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def data(self, kind: str, content_hash: str) -> str:
        """The folder of one prepared dataset."""
        return join(self.root, "data", f"{kind}-{content_hash}")

    def reports(self, sweep: str) -> Path | None:
        """The local folder of a sweep's report files; None on a bucket (the parent run holds them there)."""
        return None if self.remote else Path(self.root) / "reports" / sweep

    def experiment(self, name: str) -> str:
        """Tune's experiment folder (its state and the trials' checkpoints)."""
        return join(self.root, name)


def children(path: str) -> list[dict[str, Any]]:
    """The entries directly under `path` (fsspec's info dicts: name, type); [] when it does not exist."""
    fs, p = filesystem(path)
    try:
        return fs.ls(p, detail=True)
    except FileNotFoundError:
        return []


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def read_text(path: str) -> str:
    fs, p = filesystem(path)
    with fs.open(p, "rt", encoding="utf-8") as f:
        return f.read()


def remove_tree(path: str) -> None:
    fs, p = filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def move(src: str, dst: str) -> None:
    fs, s = filesystem(src)
    fs.mv(s, filesystem(dst)[1], recursive=True)


def make_dirs(path: str) -> None:
    fs, p = filesystem(path)
    fs.makedirs(p, exist_ok=True)


def uri_of(fs: Any, path: str, like: str) -> str:
    """A path from `fs` as the caller would write it: with the scheme of `like` when that is a URI."""
    if not is_remote(like):
        return path
    return fs.unstrip_protocol(path)


def local_copy(path: str) -> str:
    """A local folder with `path`'s files: the folder itself when local, else a download into a temporary one."""
    if not is_remote(path) or path.startswith("file://"):
        return filesystem(path)[1]
    fs, p = filesystem(path)
    dest = tempfile.mkdtemp(prefix="aot-ckpt-dl-")
    fs.get(p.rstrip("/") + "/", dest + "/", recursive=True)
    return dest
