"""Preparation throughput (MB of text per second) against a single-process `tokenizer.encode` loop.

    python -m aot_ray.bench.prepare [--mb 40] [--vocab 8192] [--sample-mb 4]

Writes a synthetic multi-document corpus (Zipf-distributed words, so BPE has real work), runs the full
`prepare()` on it (read, split by document, BPE training on the sample, batched parallel encoding, writing),
then encodes the same documents one by one with the same trained tokenizer in this process. Both figures are
MB of UTF-8 text per second; the last line is `prepare/encode_loop = R` (full preparation, BPE training
included). The tokenization pass alone is printed too.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def make_corpus(path: Path, mb: float, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzéèàü"))
    words = ["".join(rng.choice(letters, size=rng.integers(1, 11))) for _ in range(30000)]
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    target = int(mb * 1e6)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            ids = rng.choice(len(words), size=(200, 60), p=weights)
            for row in ids:
                doc = " ".join(words[i] for i in row) + ".\n\n"
                f.write(doc)
                written += len(doc.encode("utf-8"))
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m aot_ray.bench.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=40.0, help="corpus size in MB")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--sample-mb", type=float, default=4.0, help="text the BPE is trained on")
    args = ap.parse_args(argv)

    from tokenizers import Tokenizer

    from ..data.prepare import prepare
    from ..data.sources import documents
    from ..spec import TextData, TokenizerSpec

    tmp = Path(tempfile.mkdtemp(prefix="aot-bench-prep-"))
    size = make_corpus(tmp / "corpus.txt", args.mb)
    data = TextData(paths=(str(tmp / "corpus.txt"),), val_fraction=0.01,
                    tokenizer=TokenizerSpec(vocab_size=args.vocab, sample_bytes=int(args.sample_mb * 1e6)))
    t0 = time.perf_counter()
    prepared, _ = prepare(data, tmp / "store", "bench")
    t_prepare = time.perf_counter() - t0
    m = prepared.manifest
    t_tokenize = t_prepare - m["tokenizer_seconds"]

    tok = Tokenizer.from_file(str(prepared.path / "tokenizer.json"))
    docs = list(documents(data, "bench"))  # in memory: the loop is timed on encoding alone
    t0 = time.perf_counter()
    n_tokens = 0
    for doc in docs:
        n_tokens += len(tok.encode(doc, add_special_tokens=False).ids)
    t_loop = time.perf_counter() - t0

    mb = size / 1e6
    print(f"corpus {mb:.1f} MB, {len(docs):,} documents, vocabulary {args.vocab}, BPE sample {args.sample_mb} MB, "
          f"{os.cpu_count()} CPUs")
    print(f"prepare (full): {t_prepare:.2f} s = {mb / t_prepare:.2f} MB/s "
          f"(BPE training {m['tokenizer_seconds']:.2f} s, {m['tokens']['train'] + m['tokens']['val']:,} tokens)")
    print(f"prepare (tokenization pass): {t_tokenize:.2f} s = {mb / t_tokenize:.2f} MB/s")
    print(f"encode loop (1 process): {t_loop:.2f} s = {mb / t_loop:.2f} MB/s ({n_tokens:,} tokens)")
    print(f"tokenization pass/encode_loop = {t_loop / t_tokenize:.3f}")
    print(f"prepare/encode_loop = {t_loop / t_prepare:.3f}")


if __name__ == "__main__":
    main()
