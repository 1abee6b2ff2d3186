"""Where a sweep keeps its files, local path or URI (`s3://`, `gs://`, `file://`, fsspec's `memory://`), in one
place: the root, the prepared data, the reports, Tune's experiment folders, and the file operations on them
(listing, reading, moving, deleting) through fsspec, so every one works the same on a bucket as on a disk.

    <root>/data/<kind>-<hash>/          prepared data (aot_ray.data.prepare), built once per corpus
    <root>/reports/<sweep>/             the report's files (local roots; a bucket's reports are on the parent run)
    <root>/<experiment>/                Tune's experiment: its state files and <trial_id>/checkpoint_* folders

Every folder named after something that came from outside (a sweep or experiment name, a tag, a trial id read
from MLflow) is built by `under`, which refuses a name that is not one plain folder name, so no such name can
put a file outside its root (`../../x`, `/etc`, `a/b`).
"""

from __future__ import annotations

import os
import posixpath
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StorageError


def is_remote(path: str | Path) -> bool:
    """A URI (any scheme, file:// included) rather than a plain local path."""
    return "://" in str(path)


def filesystem(path: str | Path) -> tuple[Any, str]:
    """(fsspec file system, path within it) for a local path or a URI."""
    import fsspec

    return fsspec.core.url_to_fs(str(path))


def join(root: str | Path, *parts: str) -> str:
    return posixpath.join(str(root).rstrip("/"), *parts) if is_remote(root) else str(Path(root, *parts))


def folder_name(name: str, what: str) -> str:
    """`name` when it is one plain folder name, else StorageError naming `what` it is (a sweep, a trial id)."""
    bad = (not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0")
           or name != name.strip())
    if bad:
        raise StorageError(f"{what} {name!r} cannot name a folder under storage: it must be one folder name (no "
                           f"'/', '\\', '..' or surrounding spaces); rename it")
    return name


def under(root: str | Path, *parts: str, what: str = "name") -> str:
    """`root/part/...` where every part is one plain folder name (`folder_name`): never outside `root`."""
    return join(root, *(folder_name(p, what) for p in parts))


@dataclass(frozen=True)
class Storage:
    """A sweep's storage root (`--storage`, run.storage)."""

    root: str

    @classmethod
    def of(cls, root: "str | Path | Storage") -> "Storage":
        if isinstance(root, Storage):
            return root
        return cls(str(root).rstrip("/") if is_remote(root) else str(Path(root).resolve()))

    @classmethod
    def resolve(cls, flag: str | None, from_spec: str | None = None, cwd: str | Path | None = None) -> "Storage":
        """--storage, else the sweep's run.storage, else ./aot_results; a local path made absolute (the trainers
        and Tune run in other working folders)."""
        raw = flag or from_spec or "aot_results"
        return cls.of(raw if is_remote(raw) else Path(cwd or os.getcwd()) / raw)

    def __str__(self) -> str:
        return self.root

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def data(self, kind: str, content_hash: str) -> str:
        """The folder of one prepared dataset."""
        return under(self.root, "data", f"{kind}-{content_hash}", what="dataset")

    def reports(self, sweep: str) -> Path | None:
        """The local folder of a sweep's report files; None on a bucket (the parent run holds them there)."""
        return None if self.remote else Path(under(self.root, "reports", sweep, what="sweep name"))

    def experiment(self, name: str) -> str:
        """Tune's experiment folder (its state and the trials' checkpoints)."""
        return under(self.root, name, what="experiment name")

    def check_writable(self) -> None:
        """Create a local root and write a file in it, or StorageError naming the root and the fix: a read-only
        mount or folder is refused before anything starts (a sweep writes data, checkpoints, reports there). A
        bucket is checked where it is first written."""
        if self.remote:
            return
        probe = Path(self.root) / f".aot-write-check-{secrets.token_hex(4)}"
        try:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as e:
            raise StorageError(f"cannot use storage {self.root}: {e.strerror or e} (a sweep writes its prepared "
                               f"data, checkpoints and reports there); pass another --storage") from None


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


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` (a file on a disk or in a bucket), making its folder first."""
    fs, p = filesystem(path)
    fs.makedirs(posixpath.dirname(p), exist_ok=True)
    with fs.open(p, "wt", encoding="utf-8") as f:
        f.write(text)


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


def local_copy(path: str) -> str:
    """A local folder with `path`'s files: the folder itself when local, else a download into a temporary one."""
    if not is_remote(path) or path.startswith("file://"):
        return filesystem(path)[1]
    fs, p = filesystem(path)
    dest = tempfile.mkdtemp(prefix="aot-ckpt-dl-")
    fs.get(p.rstrip("/") + "/", dest + "/", recursive=True)
    return dest
