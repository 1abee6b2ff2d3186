"""Prepared data: token arrays built once per dataset content hash, published atomically, memory-mapped by trials.

Layout: <root>/data/<kind>-<hash>/{train.npy, val.npy, manifest.json, _SUCCESS}. A preparation writes into a
private temporary folder and renames it into place; `_SUCCESS` is written last, so a folder with the marker is
complete. A concurrent preparation of the same hash loses the rename race and reuses the winner's folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..spec.expand import content_hash
from ..spec.schema import DatasetSpec
from .synthetic import ALPHABETS, generate
from .tokenizer import CharTokenizer

FORMAT_VERSION = 1
MARKER = "_SUCCESS"


@dataclass(frozen=True)
class Prepared:
    path: Path
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    bos_id: int
    manifest: dict


def tokenizer_for(data: DatasetSpec) -> CharTokenizer:
    return CharTokenizer(ALPHABETS[data.kind])


def data_hash(data: DatasetSpec) -> str:
    return content_hash(
        {"data": dataclasses.asdict(data), "tokenizer": tokenizer_for(data).spec(), "format": FORMAT_VERSION}, 16
    )


def data_dir(root: str | Path, data: DatasetSpec) -> Path:
    return Path(root) / "data" / f"{data.kind}-{data_hash(data)}"


def is_prepared(root: str | Path, data: DatasetSpec) -> bool:
    return (data_dir(root, data) / MARKER).is_file()


def _encode_lines(tok: CharTokenizer, lines: list[str]) -> np.ndarray:
    return tok.encode("".join(line + "\n" for line in lines))


def prepare(data: DatasetSpec, root: str | Path) -> tuple[Prepared, bool]:
    """Build (or reuse) the prepared arrays of `data` under `root`; returns (prepared, built_now)."""
    final = data_dir(root, data)
    if (final / MARKER).is_file():
        return load(final), False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        tok = tokenizer_for(data)
        train_lines, val_lines = generate(data)
        train, val = _encode_lines(tok, train_lines), _encode_lines(tok, val_lines)
        np.save(tmp / "train.npy", train)
        np.save(tmp / "val.npy", val)
        manifest = {
            "format": FORMAT_VERSION,
            "hash": data_hash(data),
            "source": dataclasses.asdict(data),
            "tokenizer": tok.spec(),
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "documents": {"train": len(train_lines), "val": len(val_lines)},
            "tokens": {"train": int(train.size), "val": int(val.size)},
            "seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (tmp / MARKER).write_text("")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():
                # a stale, unmarked folder from a crashed preparation: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            else:
                return load(final), False
        return load(final), True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load(path: str | Path) -> Prepared:
    path = Path(path)
    if not (path / MARKER).is_file():
        raise DataError(f"{path} is not a prepared dataset (no {MARKER} marker); run `aot-ray prepare` first")
    manifest = json.loads((path / "manifest.json").read_text())
    return Prepared(
        path=path,
        train=np.load(path / "train.npy", mmap_mode="r"),
        val=np.load(path / "val.npy", mmap_mode="r"),
        vocab_size=int(manifest["vocab_size"]),
        bos_id=int(manifest["bos_id"]),
        manifest=manifest,
    )
