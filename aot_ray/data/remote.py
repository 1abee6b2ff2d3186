"""Prepared data on object stores or any fsspec URI (s3://, gs://, file://): published with the marker last,
fetched into a node-local cache before memory-mapping (a memory map needs a local file).

The cache is `$AOT_RAY_CACHE`, else ~/.cache/aot_ray; entries are named by content hash, so a stale entry
cannot be mistaken for another corpus, and a fetched entry is reused by every trial on the node.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from ..publish import MARKER, rename_into_place, staging



def cache_root() -> Path:
    return Path(os.environ.get("AOT_RAY_CACHE") or Path.home() / ".cache" / "aot_ray")


def _fs(uri: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as e:  # s3fs / gcsfs are optional extras
        raise DataError(f"storage {uri}: {e} (pip install 'aot-ray[s3]' or 'aot-ray[gcs]')") from None


def remote_exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(f"{path}/{MARKER}")


def publish(local: Path, uri: str) -> None:
    """Upload a complete prepared folder; the marker goes last, so readers never see a partial one."""
    fs, path = _fs(uri)
    fs.makedirs(path, exist_ok=True)
    for f in sorted(local.iterdir()):
        # dot files are this node's own (the checksum stamp of `prepare.verify`): not part of the dataset
        if f.name != MARKER and f.is_file() and not f.name.startswith("."):
            fs.put_file(str(f), f"{path}/{f.name}")
    fs.pipe_file(f"{path}/{MARKER}", b"")


def fetch(uri: str) -> Path:
    """The node-local copy of a published prepared folder (downloaded once per node)."""
    fs, path = _fs(uri)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    local = cache_root() / "data" / name
    if (local / MARKER).is_file():
        return local
    if not fs.exists(f"{path}/{MARKER}"):
        raise DataError(f"{uri} is not a prepared dataset (no {MARKER} marker); run `aot-ray prepare` first")
    with staging(local) as tmp:
        for entry in fs.ls(path, detail=False):
            base = entry.rstrip("/").rsplit("/", 1)[-1]
            if base != MARKER:
                fs.get_file(entry, str(tmp / base))
        (tmp / MARKER).write_text("")
        rename_into_place(tmp, local)  # a copy another trial on this node fetched first is the same
    return local
