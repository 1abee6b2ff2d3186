"""Preparation throughput (MB of text per second) against a single-process `tokenizer.encode` loop.

    python -m aot_ray.bench.prepare [--mb 40] [--vocab 8192] [--sample-mb 4]
    python -m aot_ray.bench.prepare --memory [--mb 20]

Writes a synthetic multi-document corpus (Zipf-distributed words, so BPE has real work), runs the full
`prepare()` on it (read, split by document, BPE training on the sample, batched parallel encoding, writing),
then encodes the same documents one by one with the same trained tokenizer in this process. Both figures are
MB of UTF-8 text per second; the last line is `prepare/encode_loop = R` (full preparation, BPE training
included). The tokenization pass alone is printed too.

`--memory`: peak memory of preparation against the size of its documents. The same words are written once as a
single line with no newline (one document of --mb MB) and once as 2 KB documents, and each is prepared in a
process of its own (`aot-ray prepare`'s code path), whose peak RSS is read from the kernel. The one-line corpus is
refused in the end (a single document cannot be split into training and validation), after it was read, sampled
and encoded whole. The line states the peak against a bound of MEMORY_BOUND_MB, whatever the document size.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..data.prepare import prepare
from ..data.sources import documents
from ..spec import TextData, TokenizerSpec


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


MEMORY_BOUND_MB = 512  # peak RSS of preparing any corpus, whatever its document sizes (2 KB documents: ~260 MB)


def _prepare_peak(path: Path, doc_sep: str, store: Path) -> float:
    """Peak RSS in MB of preparing `path` in a fresh process (a refusal at the end counts: the work is done)."""
    import subprocess
    import sys

    code = ("import resource, sys\n"
            "from aot_ray.data.prepare import prepare\n"
            "from aot_ray.errors import DataError\n"
            "from aot_ray.spec import TextData, TokenizerSpec\n"
            f"d = TextData(paths=({str(path)!r},), doc_sep={doc_sep!r}, tokenizer=TokenizerSpec(vocab_size=2000))\n"
            "try:\n"
            f"    prepare(d, {str(store)!r}, 'bench')\n"
            "except DataError as e:\n"
            "    print(e, file=sys.stderr)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(p.stdout.split()[-1]) / 1024


def memory(mb: float) -> None:
    """The --memory lines: one document of `mb` MB against the same bytes in 2 KB documents."""
    tmp = Path(tempfile.mkdtemp(prefix="aot-bench-mem-"))
    make_corpus(tmp / "words.txt", mb)
    line = " ".join((tmp / "words.txt").read_text(encoding="utf-8").split())
    (tmp / "one.txt").write_text(line, encoding="utf-8")  # one line, no newline
    with open(tmp / "docs2k.txt", "w", encoding="utf-8") as f:
        for start in range(0, len(line), 2000):  # the same characters, a line (a document) every 2000
            f.write(line[start:start + 2000].strip() + "\n")
    del line
    one = _prepare_peak(tmp / "one.txt", "line", tmp / "store-one")
    docs = _prepare_peak(tmp / "docs2k.txt", "line", tmp / "store-docs")
    size = (tmp / "one.txt").stat().st_size / 1e6
    print(f"prepare peak RSS, one {size:.0f} MB line: {one:.0f} MB; the same bytes in 2 KB documents: {docs:.0f} MB")
    met = one <= MEMORY_BOUND_MB
    print(f"one-line peak/bound = {one / MEMORY_BOUND_MB:.2f} (bound {MEMORY_BOUND_MB} MB, met: {met})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m aot_ray.bench.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=None, help="corpus size in MB (default 40; 20 with --memory)")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--sample-mb", type=float, default=4.0, help="text the BPE is trained on")
    ap.add_argument("--memory", action="store_true", help="peak memory of one --mb MB document (default 20 MB) "
                                                         "against the same bytes in 2 KB documents")
    args = ap.parse_args(argv)
    if args.memory:
        memory(args.mb or 20.0)
        return
    args.mb = args.mb or 40.0

    from tokenizers import Tokenizer


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
