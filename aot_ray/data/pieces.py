"""Documents as bounded pieces: however large a document is (a 20 MB corpus with no newline is one), it is read,
held, sampled for the tokenizer and encoded at most `PIECE` characters at a time, so preparation's memory follows
the bytes in flight, not the size of the largest document.

A source hands over its documents as fragments (`Fragment`: text, and whether the document ends there); `pieces`
cuts them into pieces of at most `PIECE` characters. A cut goes where byte-level BPE would start a new pre-token
anyway: before a single space that follows a non-space character (`' ?\\p{L}+'` and its kin attach a space to the
word after it), so a document cut in pieces encodes to exactly the ids of the whole, and the tokenizer trainer
counts the same words. With `reverse` (the reversed-characters tokenizer) a document is reversed whole: its pieces
are cut after such a space instead, held in a `Spill` (memory up to `PIECE`, a temporary file beyond) and given
back last first, each reversed. Text with no space in a whole piece's reach is cut at `PIECE` characters.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Iterable, Iterator

PIECE = 1 << 18  # characters: at most this much of one document is held or encoded at once


@dataclass(frozen=True)
class Fragment:
    text: str
    end: bool  # the document ends after this text


@dataclass(frozen=True)
class Piece:
    doc: int  # the document's index in source order: its split (train or validation) follows from it
    text: str
    last: bool  # the document's last piece: its end-of-text token follows


def cut_point(text: str, limit: int, reverse: bool = False) -> int:
    """Where to cut `text` (longer than `limit`) so that the first part has at most `limit` characters: at a
    pre-token boundary of the text as it will be encoded (forward, or reversed), searched back to `limit // 2`,
    else at `limit`."""
    end = limit if reverse else limit + 1
    while True:
        s = text.rfind(" ", limit // 2, end)
        if s < 1:
            return limit
        if reverse and not text[s + 1].isspace():  # the space stays before the cut: reversed, it leads its word
            return s + 1
        if not reverse and not text[s - 1].isspace():  # the space starts the second part, as it leads its word
            return s
        end = s


class Spill:
    """Text held until its document ends: in memory up to `PIECE` characters, in a temporary file beyond, so a
    document held whole (to be reversed) costs disk rather than memory. Read back `forward()` or `backward()`,
    in the parts it was given."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._held = 0
        self._file = None
        self._spans: list[tuple[int, int]] = []  # (offset, length) in bytes of each part written out

    def add(self, text: str) -> None:
        if self._file is None and self._held + len(text) <= PIECE:
            self._parts.append(text)
            self._held += len(text)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="aot-doc-")
            for part in self._parts:
                self._write(part)
            self._parts = []
        self._write(text)

    def _write(self, text: str) -> None:
        data = text.encode("utf-8")
        self._spans.append((self._file.tell(), len(data)))
        self._file.write(data)

    def _read(self, span: tuple[int, int]) -> str:
        self._file.seek(span[0])
        return self._file.read(span[1]).decode("utf-8")

    def forward(self) -> Iterator[str]:
        if self._file is None:
            yield from self._parts
        else:
            for span in self._spans:
                yield self._read(span)

    def backward(self) -> Iterator[str]:
        if self._file is None:
            yield from reversed(self._parts)
        else:
            for span in reversed(self._spans):
                yield self._read(span)

    def __bool__(self) -> bool:
        return bool(self._parts or self._spans)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._parts, self._spans, self._held = None, [], [], 0


def pieces(fragments: Iterable[Fragment], reverse: bool = False, limit: int | None = None) -> Iterator[Piece]:
    """The documents of `fragments` as pieces of at most `limit` (default `PIECE`) characters, in order; with
    `reverse`, each document reversed whole."""
    limit = limit or PIECE
    doc, carry = 0, ""
    held = Spill() if reverse else None
    try:
        for frag in fragments:
            carry += frag.text
            while len(carry) > limit:
                cut = cut_point(carry, limit, reverse)
                if held is None:
                    yield Piece(doc, carry[:cut], False)
                else:
                    held.add(carry[:cut])
                carry = carry[cut:]
            if not frag.end:
                continue
            if held is None:
                yield Piece(doc, carry, True)
            else:
                held.add(carry)
                yield from _reversed(doc, held)
                held.close()
            doc, carry = doc + 1, ""
    finally:
        if held is not None:
            held.close()


def _reversed(doc: int, held: Spill) -> Iterator[Piece]:
    """A held document's pieces, last first, each reversed; one piece of look-ahead marks the last."""
    prev = None
    for part in held.backward():
        if prev is not None:
            yield Piece(doc, prev, False)
        prev = part[::-1]
    if prev is not None:
        yield Piece(doc, prev, True)
