"""Natural-language corpora: split by document, make the tokenizer (byte-level BPE, bytes or characters), tokenize in
parallel batches.

Two streaming passes over the source, each in bounded pieces of documents (`pieces`): the first feeds the
tokenizer trainer the first `sample_bytes` of training documents, the second encodes every piece with
`encode_batch_fast` (parallel in Rust, batches of at most BATCH_BYTES) and appends the ids, each document followed
by <|endoftext|> (id 0), to the split's token file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError
from ..spec.schema import HFData, TextData
from .pieces import Piece
from .sources import document_pieces, is_validation
from .tokenizer import UNK, make_tokenizer
from .tokenfile import TokenWriter

BATCH_DOCS = 2048  # pieces per encoding batch, at most
BATCH_BYTES = 4 << 20  # UTF-8 bytes of text per encoding batch, at most (one piece may add up to 4 * PIECE)


def _tokenizer_sample(data: TextData | HFData, where: str, seen: list[int]) -> Iterator[str]:
    """Training documents' pieces for the BPE trainer, up to the document that reaches `sample_bytes`."""
    size = 0
    for p in document_pieces(data, where, reverse=data.tokenizer.reverse_chars):
        if p.last:
            seen[0] += 1
        if is_validation(data.seed, p.doc, data.val_fraction):
            continue
        yield p.text
        size += len(p.text.encode("utf-8"))
        if p.last and size >= data.tokenizer.sample_bytes:
            return


def build_corpus(data: TextData | HFData, where: str, out: Path, progress: bool = False) -> dict[str, Any]:
    """Write tokenizer.json, train.bin and val.bin under `out`; return the manifest fields. Documents are read
    and encoded in bounded pieces (`pieces`), so memory follows BATCH_BYTES, not the largest document."""
    t0 = time.perf_counter()
    spec = data.tokenizer
    seen = [0]  # documents read while sampling: the base alphabet alone cannot tell an empty corpus
    tok = make_tokenizer(spec, _tokenizer_sample(data, where, seen), show_progress=progress)
    got = tok.get_vocab_size()
    if seen[0] == 0 and spec.kind != "bytes":  # (bytes reads no sample: the encoding pass finds an empty corpus)
        raise DataError(f"{where}: no documents (empty corpus); check its paths, split, text_field and caps")
    if spec.kind == "bpe" and got < spec.vocab_size:
        raise DataError(f"{where}.tokenizer.vocab_size: {spec.vocab_size} is more than this corpus supports "
                        f"(BPE training ran out of merges at {got} tokens); lower it or add text")
    tok.save(str(out / "tokenizer.json"))
    t_tok = time.perf_counter() - t0

    counts, size, train_count, val_count, dtype, unknown = _encode(data, where, out, tok, progress)
    if counts["train"] == 0:
        raise DataError(f"{where}: no documents (empty corpus); check its paths, split, text_field and caps")
    if counts["val"] == 0:
        raise DataError(f"{where}.val_fraction: no document went to validation ({counts['train']} documents); "
                        f"raise val_fraction or add documents")
    return {
        "vocab_size": got,
        "bos_id": 0,
        "documents": counts,
        "tokens": {"train": train_count, "val": val_count},
        "dtype": dtype,
        "bytes": size,
        "tokenizer_seconds": round(t_tok, 3),
        # characters a `chars` tokenizer maps to its unknown id (more distinct ones than vocab_size keeps)
        **({"unknown_chars": unknown} if spec.kind == "chars" else {}),
    }


def _encode(data: TextData | HFData, where: str, out: Path, tok: Any,
            progress: bool) -> tuple[dict[str, int], int, int, int, str, int]:
    """Encode every document into train.bin / val.bin in batches of at most BATCH_DOCS pieces or BATCH_BYTES of
    text; returns (documents per split, text bytes, train tokens, val tokens, token dtype, unknown ids)."""
    unk = tok.token_to_id(UNK)
    unknown = [0]
    bar = None
    if progress:
        from tqdm.auto import tqdm  # only for a terminal's progress bar

        bar = tqdm(total=data.max_bytes, unit="B", unit_scale=True, desc=f"tokenize {where}", leave=False)
    counts = {"train": 0, "val": 0}
    size = held = 0  # text bytes in all, and in `batch`
    got = tok.get_vocab_size()
    with TokenWriter(out / "train.bin", got) as train_w, TokenWriter(out / "val.bin", got) as val_w:
        batch: list[Piece] = []

        def flush() -> None:
            encs = tok.encode_batch_fast([p.text for p in batch], add_special_tokens=False)
            ids: dict[bool, list[int]] = {False: [], True: []}
            for enc, p in zip(encs, batch):  # one array write per split and batch, not per piece
                side = ids[is_validation(data.seed, p.doc, data.val_fraction)]
                side.extend(enc.ids)
                if unk is not None:
                    unknown[0] += enc.ids.count(unk)
                if p.last:
                    side.append(0)
            train_w.append(ids[False])
            val_w.append(ids[True])
            batch.clear()

        for p in document_pieces(data, where, reverse=data.tokenizer.reverse_chars):
            batch.append(p)
            n = len(p.text.encode("utf-8"))
            held += n
            size += n
            if p.last:
                counts["val" if is_validation(data.seed, p.doc, data.val_fraction) else "train"] += 1
            if bar is not None:
                bar.update(n)
            if len(batch) >= BATCH_DOCS or held >= BATCH_BYTES:
                flush()
                held = 0
        if batch:
            flush()
    if bar is not None:
        bar.close()
    return counts, size, train_w.count, val_w.count, train_w.dtype_name, unknown[0]
