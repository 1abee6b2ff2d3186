"""Document sources: local or remote text files, and anything `datasets.load_dataset` loads. Streaming, capped.

Documents are yielded in a fixed order, so the split (a hash of seed and document index) and the tokenizer
sample are reproducible. Problems (a missing file, an unknown dataset or config, a missing text field) raise
DataError naming the dataset field to fix.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import stat
import warnings
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from ..storage import is_remote
from ..spec.schema import HFData, TextData

COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}


def _is_url(p: str) -> bool:
    return is_remote(p) and not p.startswith("file://")


MISSING = "does not exist"
KINDS = ((stat.S_ISDIR, "a directory (name the files in it, e.g. DIR/*.txt)"),
         (stat.S_ISFIFO, "a FIFO (a named pipe)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_a_corpus(path: str) -> str | None:
    """Why a local path cannot be a corpus, else None. A corpus is read twice (a tokenizer sample, then every
    document) and versioned by size and time, so it must be a regular file. As root, every file is readable:
    a file its owner keeps from other users (keys, password hashes such as /etc/shadow) is refused, since a
    sweep file may come from someone else and its text would reach the tokenizer, the runs and the logs."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return MISSING
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        what = next((text for test, text in KINDS if test(st.st_mode)), "not a regular file")
        return f"is {what}, not a regular file"
    if os.geteuid() == 0 and not st.st_mode & stat.S_IROTH:
        return (f"is a private file (mode {stat.S_IMODE(st.st_mode):04o}, not readable by other users); aot-ray "
                f"running as root reads no private file as a corpus: make it readable (chmod o+r) if it is text")
    return None


def resolve_paths(data: TextData, where: str) -> list[str]:
    """Expand globs (local paths); URLs pass through. Every entry must match at least one regular file; one named
    without a glob must be one (a directory, a FIFO or a device is refused, saying which)."""
    out: list[str] = []
    for i, p in enumerate(data.paths):
        if _is_url(p):
            out.append(p)
            continue
        local = p[len("file://"):] if p.startswith("file://") else p
        local = os.path.expanduser(local)
        if not glob.has_magic(local):
            why = _not_a_corpus(local)
            if why == MISSING:
                raise DataError(f"{where}.paths[{i}]: no such file: {p}")
            if why is not None:
                raise DataError(f"{where}.paths[{i}]: {p} {why}")
            out.append(local)
            continue
        found = sorted(glob.glob(local, recursive=True))
        matches = [m for m in found if os.path.isfile(m)]  # a glob may also match folders: those are skipped
        if not matches:
            raise DataError(f"{where}.paths[{i}]: no such file: {p}"
                            + (f" (it matches {len(found)} entries, none a regular file)" if found else ""))
        for m in matches:
            why = _not_a_corpus(m)
            if why is not None:
                raise DataError(f"{where}.paths[{i}]: {m} {why}")
        out.extend(matches)
    return out


def file_signature(paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of local files, so a changed file gets a new prepared-data hash."""
    sig = []
    for p in paths:
        if _is_url(p):
            sig.append((p, 0, 0))
        else:
            st = os.stat(p)
            sig.append((os.path.abspath(p), st.st_size, int(st.st_mtime)))
    return sig


def _open_text(path: str) -> io.TextIOBase:
    import fsspec

    suffix = Path(path.split("?")[0]).suffix
    # fsspec streams remote files and decompresses on the fly: a .txt.xz is never written out whole
    return fsspec.open(path, "rt", encoding="utf-8", errors="replace", compression=COMPRESSION.get(suffix)).open()


def _checked_lines(f: io.TextIOBase, path: str, where: str, probe: int = 1 << 16) -> Iterator[str]:
    """The file's lines; a warning first when its opening looks binary (NUL characters, or more than 1% of it
    not UTF-8), since it is read as text anyway and would train on noise."""
    head = f.read(probe)
    if "\x00" in head or head.count("\ufffd") > 0.01 * max(1, len(head)):
        warnings.warn(f"{where}.paths: {path} does not look like UTF-8 text (NUL or undecodable bytes in its first "
                      f"{probe // 1024} KB); it is read as text anyway: check the path")
    parts = head.splitlines(keepends=True)
    tail = parts.pop() if parts and not parts[-1].endswith("\n") else ""
    yield from parts
    first = True
    for line in f:
        if first and tail:
            line, first = tail + line, False
        first = False
        yield line
    if first and tail:
        yield tail


def _text_documents(data: TextData, where: str) -> Iterator[str]:
    for path in resolve_paths(data, where):
        try:
            f = _open_text(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{where}.paths: cannot open {path} ({e})") from None
        with f:
            lines = _checked_lines(f, path, where)
            if data.doc_sep == "line":
                for line in lines:
                    line = line.rstrip("\n")
                    if line.strip():
                        yield line
            else:
                block: list[str] = []
                for line in lines:
                    if line.strip():
                        block.append(line.rstrip("\n"))
                    elif block:
                        yield "\n".join(block)
                        block = []
                if block:
                    yield "\n".join(block)


def load_hf(data: HFData, where: str):
    """`datasets.load_dataset` with the dataset's settings; loading errors become one DataError line."""
    import datasets

    kwargs = {"split": data.split, "streaming": data.streaming}
    if data.name:
        kwargs["name"] = data.name
    if data.data_files:
        kwargs["data_files"] = list(data.data_files)
    if data.revision:
        kwargs["revision"] = data.revision
    try:
        return datasets.load_dataset(data.path, **kwargs)
    except Exception as e:  # datasets raises many types (not found, offline, bad config, bad split)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        what = f"{data.path!r}" + (f" (config {data.name!r})" if data.name else "")
        raise DataError(f"{where}: cannot load Hugging Face dataset {what}: {msg}") from None


def _hf_documents(data: HFData, where: str) -> Iterator[str]:
    ds = load_hf(data, where)
    columns = list(getattr(ds, "column_names", None) or [])
    if columns and data.text_field not in columns:
        raise DataError(f"{where}.text_field: {data.text_field!r} is not a column of {data.path!r} "
                        f"(columns: {', '.join(columns)})")
    for row in ds:
        if data.text_field not in row:
            raise DataError(f"{where}.text_field: {data.text_field!r} is not a field of {data.path!r} "
                            f"(fields: {', '.join(row)})")
        text = row[data.text_field]
        if isinstance(text, str) and text.strip():
            yield text


def documents(data: TextData | HFData, where: str) -> Iterator[str]:
    """Documents in source order, stopping at max_documents / max_bytes (UTF-8 bytes)."""
    it = _text_documents(data, where) if isinstance(data, TextData) else _hf_documents(data, where)
    n = size = 0
    for doc in it:
        if data.max_documents is not None and n >= data.max_documents:
            return
        if data.max_bytes is not None and size >= data.max_bytes:
            return
        n += 1
        if data.max_bytes is not None:
            size += len(doc.encode("utf-8"))
        yield doc


def is_validation(seed: int, index: int, fraction: float) -> bool:
    """Whether document `index` goes to validation: a hash, so the split needs no count and never shifts."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "little")
    return h / 2**64 < fraction
