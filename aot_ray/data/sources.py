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
from typing import Iterable, Iterator

from ..errors import DataError
from ..storage import is_remote
from ..spec.schema import HFData, TextData
from .pieces import PIECE, Fragment, Piece, Spill, pieces

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


def _line_chunks(f: io.TextIOBase, path: str, where: str, probe: int = 1 << 16) -> Iterator[tuple[str, bool]]:
    """The file's lines as (chunk, ends its line) pairs, each chunk at most `PIECE` characters: a line of any
    length is never read whole. A warning first when the file's opening looks binary (NUL characters, or more
    than 1% of it not UTF-8), since it is read as text anyway and would train on noise. The opening's lines are
    split as `str.splitlines` splits them, the rest as the file's own iteration does (as they always were: the
    prepared data of a file stays what it was)."""
    head = f.read(probe)
    if "\x00" in head or head.count("\ufffd") > 0.01 * max(1, len(head)):
        warnings.warn(f"{where}.paths: {path} does not look like UTF-8 text (NUL or undecodable bytes in its first "
                      f"{probe // 1024} KB); it is read as text anyway: check the path")
    parts = head.splitlines(keepends=True)
    tail = parts.pop() if parts and not parts[-1].endswith("\n") else ""
    for part in parts:
        yield part, True
    if tail:
        yield tail, False
    while chunk := f.readline(PIECE):
        yield chunk, chunk.endswith("\n")


def _fragments(lines: Iterable[tuple[str, bool]], per_line: bool) -> Iterator[Fragment]:
    """Documents from line chunks: each non-blank line (`per_line`), else each run of non-blank lines joined by
    "\n"; a line's final "\n" is not part of it. A line's leading whitespace waits in a `Spill` until the line
    shows text (a blank line is no document and ends a run)."""
    in_doc, blank, pending = False, True, Spill()
    try:
        for chunk, line_end in lines:
            text = chunk.rstrip("\n") if line_end else chunk
            if blank and not text.strip():
                pending.add(text)
            else:
                if blank:  # the line's first text: it is part of a document
                    if in_doc:
                        yield Fragment("\n", False)
                    in_doc, blank = True, False
                    for part in pending.forward():
                        yield Fragment(part, False)
                    pending.close()
                yield Fragment(text, False)
            if line_end:
                pending.close()
                if in_doc and (per_line or blank):
                    yield Fragment("", True)
                    in_doc = False
                blank = True
        if in_doc:
            yield Fragment("", True)
    finally:
        pending.close()


def _text_fragments(data: TextData, where: str) -> Iterator[Fragment]:
    for path in resolve_paths(data, where):
        try:
            f = _open_text(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{where}.paths: cannot open {path} ({e})") from None
        with f:
            yield from _fragments(_line_chunks(f, path, where), per_line=data.doc_sep == "line")


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


def _hf_fragments(data: HFData, where: str) -> Iterator[Fragment]:
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
            yield Fragment(text, True)


def document_pieces(data: TextData | HFData, where: str, reverse: bool = False) -> Iterator[Piece]:
    """Documents in source order as bounded pieces (`pieces.Piece`; with `reverse`, each document reversed),
    stopping at max_documents / max_bytes (UTF-8 bytes; the document that crosses max_bytes is kept whole)."""
    frags = _text_fragments(data, where) if isinstance(data, TextData) else _hf_fragments(data, where)
    n = size = 0
    current = -1
    for piece in pieces(frags, reverse):
        if piece.doc != current:  # a new document
            if data.max_documents is not None and n >= data.max_documents:
                return
            if data.max_bytes is not None and size >= data.max_bytes:
                return
            n, current = n + 1, piece.doc
        if data.max_bytes is not None:
            size += len(piece.text.encode("utf-8"))
        yield piece


def documents(data: TextData | HFData, where: str) -> Iterator[str]:
    """Whole documents in source order, capped as `document_pieces` caps them (each one held whole: for tests
    and the preparation benchmark's baseline, not for preparing)."""
    parts: list[str] = []
    for piece in document_pieces(data, where):
        parts.append(piece.text)
        if piece.last:
            yield "".join(parts)
            parts = []


def is_validation(seed: int, index: int, fraction: float) -> bool:
    """Whether document `index` goes to validation: a hash, so the split needs no count and never shifts."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "little")
    return h / 2**64 < fraction
