"""Prepared data: token files built once per content hash, published atomically, memory-mapped by trials.

Layout: <root>/data/<kind>-<hash>/{train.bin, val.bin, manifest.json, [tokenizer.json], _SUCCESS}. A build
writes into a private temporary folder and renames it into place; `_SUCCESS` is written last, so a folder
with the marker is complete. A concurrent build of the same hash loses the rename race and reuses the
winner's folder. The hash covers the source settings, the tokenizer settings and, for local files, their
paths, sizes and modification times, so an edited corpus is prepared again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..publish import MARKER, rename_into_place, staging
from ..spec.expand import content_hash
from ..spec.schema import SYNTHETIC_KINDS, DatasetSpec, TextData
from ..storage import Storage, is_remote
from . import remote, tokenfile
from .corpus import build_corpus
from .sources import file_signature, resolve_paths
from .synthetic import ALPHABETS, generate
from .tokenizer import CharTokenizer

FORMAT_VERSION = 2


@dataclass(frozen=True)
class Prepared:
    path: Path  # the local folder that is memory-mapped
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    bos_id: int
    manifest: dict
    uri: str = ""  # where trials find it: the shared storage URI, or the local path

    @property
    def location(self) -> str:
        return self.uri or str(self.path)


def char_tokenizer(data: DatasetSpec) -> CharTokenizer:
    return CharTokenizer(ALPHABETS[data.kind])


@functools.lru_cache(maxsize=None)
def _alphabet_size(kind: str) -> int:
    return CharTokenizer(ALPHABETS[kind]).vocab_size


def vocab_size_of(data: DatasetSpec) -> int:
    """The vocabulary a dataset will have (known before preparing)."""
    if data.kind in SYNTHETIC_KINDS:
        return _alphabet_size(data.kind)  # fixed per kind: `plan` asks once per trial
    if data.tokenizer.kind == "bytes":
        return 257  # 256 bytes and <|endoftext|>, whatever vocab_size allows
    return data.tokenizer.vocab_size


def data_hash(data: DatasetSpec, where: str = "data") -> str:
    ident: dict[str, Any] = {"data": dataclasses.asdict(data), "format": FORMAT_VERSION}
    ident["data"].pop("languages", None)  # which codes a source accepts does not change its content
    ident["data"].pop("windows", None)  # nor how a trial cuts it into windows
    if data.kind in SYNTHETIC_KINDS:
        ident["tokenizer"] = char_tokenizer(data).spec()
    if isinstance(data, TextData):

        ident["files"] = file_signature(resolve_paths(data, where))
    return content_hash(ident, 16)


def data_dir(root: Storage | str | Path, data: DatasetSpec, where: str = "data") -> Path:
    return Path(Storage.of(root).data(data.kind, data_hash(data, where)))


def _build_synthetic(data: DatasetSpec, out: Path) -> dict[str, Any]:
    tok = char_tokenizer(data)
    train_lines, val_lines = generate(data)
    tokens = {}
    for split, lines in (("train", train_lines), ("val", val_lines)):
        with tokenfile.TokenWriter(out / f"{split}.bin", tok.vocab_size) as w:
            w.append(tok.encode("".join(line + "\n" for line in lines)))
            tokens[split] = w.count
    return {
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "tokenizer": tok.spec(),
        "documents": {"train": len(train_lines), "val": len(val_lines)},
        "tokens": tokens,
        "dtype": tokenfile.dtype_for(tok.vocab_size).name,
        "bytes": sum(len(line) + 1 for line in train_lines + val_lines),
    }


def prepare(data: DatasetSpec, root: Storage | str | Path, where: str = "data",
            progress: bool = False) -> tuple[Prepared, bool]:
    """Build (or reuse) the prepared token files of `data` under the storage `root`; returns (prepared,
    built_now). A bucket (s3://, gs://, file://) is built in the node-local cache and published there."""
    root = Storage.of(root)
    if root.remote:
        h = data_hash(data, where)
        uri = root.data(data.kind, h)
        if remote.remote_exists(uri):
            return dataclasses.replace(load(remote.fetch(uri)), uri=uri), False
        local, _ = prepare(data, remote.cache_root(), where, progress)
        remote.publish(local.path, uri)
        return dataclasses.replace(local, uri=uri), True
    h = data_hash(data, where)
    final = Path(root.data(data.kind, h))
    if (final / MARKER).is_file():
        try:
            return load(final), False
        except DataError as e:  # damaged on disk: built again from its source, under the same hash
            warnings.warn(f"{e}; rebuilding it")
            shutil.rmtree(final, ignore_errors=True)
    with staging(final) as tmp:
        t0 = time.perf_counter()
        if data.kind in SYNTHETIC_KINDS:
            fields = _build_synthetic(data, tmp)
        else:

            fields = build_corpus(data, where, tmp, progress=progress)
        manifest = {"format": FORMAT_VERSION, "hash": h, "source": dataclasses.asdict(data), **fields,
                    "seconds": round(time.perf_counter() - t0, 3),
                    # checked on load: sizes always, content once per node (see `verify`)
                    "sha256": {split: tokenfile.sha256(tmp / f"{split}.bin") for split in ("train", "val")}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (tmp / MARKER).write_text("")
        built = rename_into_place(tmp, final)  # False: another process published the same content first
        return load(final), built


def check_sizes(path: Path, m: dict) -> None:
    """Each token file must hold exactly the tokens its manifest counts (cheap: file sizes)."""
    width = np.dtype(m["dtype"]).itemsize
    for split in ("train", "val"):
        f = path / f"{split}.bin"
        want = int(m["tokens"][split]) * width
        have = f.stat().st_size if f.is_file() else None
        if have != want:
            got = "missing" if have is None else f"{have:,} bytes"
            raise DataError(f"prepared data {path} is damaged: {split}.bin is {got}, its manifest says {want:,}; "
                            f"delete the folder and run `aot-ray prepare` again")


def verify(path: Path, m: dict) -> None:
    """Sizes on every load; the content hash once per node and file version (a stamp records the sizes and
    modification times it was checked at, so a file changed in place is hashed again)."""
    check_sizes(path, m)
    want = m.get("sha256")
    if not want:  # prepared before hashes were recorded: sizes only
        return
    files = {split: path / f"{split}.bin" for split in want}
    state = {k: [f.stat().st_size, f.stat().st_mtime_ns] for k, f in files.items()}
    stamp = path / f".verified-{socket.gethostname()}"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(stamp.read_text()) == state:
            return
    for split, f in files.items():
        if tokenfile.sha256(f) != want[split]:
            raise DataError(f"prepared data {path} is damaged: {split}.bin does not match its manifest's "
                            f"checksum; delete the folder and run `aot-ray prepare` again")
    with contextlib.suppress(OSError):  # a read-only share: hashed again next time, no harm
        stamp.write_text(json.dumps(state))


def load(path: str | Path) -> Prepared:
    """Memory-map a prepared folder; a URI is fetched into the node-local cache first."""
    if is_remote(path):
        return dataclasses.replace(load(remote.fetch(str(path))), uri=str(path))
    path = Path(path)
    if not (path / MARKER).is_file():
        raise DataError(f"{path} is not a prepared dataset (no {MARKER} marker); run `aot-ray prepare` first")
    m = json.loads((path / "manifest.json").read_text())
    verify(path, m)
    return Prepared(
        path=path,
        train=tokenfile.read(path / "train.bin", m["dtype"], m["tokens"]["train"]),
        val=tokenfile.read(path / "val.bin", m["dtype"], m["tokens"]["val"]),
        vocab_size=int(m["vocab_size"]),
        bos_id=int(m["bos_id"]),
        manifest=m,
    )
