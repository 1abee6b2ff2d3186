"""Flat token files: ids appended in chunks to a `.bin` (uint16 when the vocabulary fits, else uint32), read
back as read-only memory maps, so trials share the page cache instead of loading copies."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class TokenWriter:
    def __init__(self, path: Path, vocab_size: int) -> None:
        self.dtype = dtype_for(vocab_size)
        self.dtype_name = self.dtype.name
        self.count = 0
        self._f = open(path, "wb")

    def append(self, ids: np.ndarray | Iterable[int]) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        arr.tofile(self._f)
        self.count += arr.size

    def __enter__(self) -> "TokenWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def sha256(path: Path, chunk: int = 8 * 2**20) -> str:
    """Content hash of a token file, read in chunks (never the whole file in memory)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read(path: Path, dtype: str, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))
