"""The byte and character tokenizers beside BPE: prepared once per corpus through the same pipeline, their
identity in the data version, text reversed before tokenizing with any kind, a character cap that says what it
cut, and vocabularies too small for their ids refused at load."""

import json
import random

import numpy as np
import pytest
from tokenizers import Tokenizer

from aot_ray.data.prepare import data_hash, prepare, vocab_size_of
from aot_ray.errors import SpecError
from aot_ray.spec import parse_sweep
from aot_ray.sweep.prepare import summary_line

from corpus_util import write_text


def dna(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGT") for _ in range(rng.randint(40, 80))) for _ in range(n)]


def sweep(path: str, **tokenizer) -> dict:
    return {"name": "tok", "data": {"d": {"kind": "text", "paths": [path], "doc_sep": "line", "val_fraction": 0.2,
                                          "tokenizer": tokenizer}},
            "grid": {"dataset": ["d"], "model": ["micro"], "context_length": [16]}}


def data_of(raw: dict):
    return parse_sweep(raw).data["d"]


def test_chars_give_one_id_per_character_and_bytes_one_per_byte(tmp_path):
    corpus = write_text(tmp_path / "dna.txt", dna(60), sep="\n")
    chars = prepare(data_of(sweep(str(corpus), kind="chars", vocab_size=16)), tmp_path / "r")[0]
    m = chars.manifest
    assert m["vocab_size"] == 6 and m["unknown_chars"] == 0  # <|endoftext|>, <unk>, A C G T
    text = corpus.read_text()
    assert m["tokens"]["train"] + m["tokens"]["val"] == len(text.replace("\n", "")) + 60  # a char each, an EOT per doc
    tok = Tokenizer.from_file(str(chars.path / "tokenizer.json"))
    assert [tok.id_to_token(i) for i in np.asarray(chars.train[:5])] == list(text[:5])
    raw = prepare(data_of(sweep(str(corpus), kind="bytes")), tmp_path / "r")[0]
    assert raw.manifest["vocab_size"] == 257 == vocab_size_of(data_of(sweep(str(corpus), kind="bytes")))
    assert raw.manifest["tokens"]["train"] == m["tokens"]["train"]  # ASCII: one byte per character


def test_a_character_cap_says_how_much_of_the_text_it_cut(tmp_path):
    corpus = write_text(tmp_path / "dna.txt", dna(60) + ["NNNNNNNNNN"], sep="\n")
    data = data_of(sweep(str(corpus), kind="chars", vocab_size=6))  # keeps 4 characters: A C G T, not N
    prepared, built = prepare(data, tmp_path / "r")
    m = prepared.manifest
    assert m["unknown_chars"] == 10
    line = summary_line("data.d", None, "h", prepared.location, built, m)
    assert "10 characters (" in line and "of the text) are not among the 4 it keeps" in line


def test_reversed_text_works_with_every_kind(tmp_path):
    corpus = write_text(tmp_path / "dna.txt", ["AACG"] * 30, sep="\n")
    for kind in ("bytes", "chars", "bpe"):
        extra = {"vocab_size": 257} if kind == "bpe" else {}
        fw = prepare(data_of(sweep(str(corpus), kind=kind, **extra)), tmp_path / kind)[0]
        bw = prepare(data_of(sweep(str(corpus), kind=kind, reverse_chars=True, **extra)), tmp_path / kind)[0]
        tok = Tokenizer.from_file(str(bw.path / "tokenizer.json"))
        first = tok.decode(np.asarray(bw.train[: np.flatnonzero(np.asarray(bw.train) == 0)[0]]).tolist())
        assert first == "GCAA", kind  # the document, character-reversed before tokenizing
        assert fw.path != bw.path


def test_the_kind_is_part_of_the_data_version(tmp_path):
    corpus = write_text(tmp_path / "dna.txt", dna(10), sep="\n")
    hashes = {k: data_hash(data_of(sweep(str(corpus), kind=k))) for k in ("bpe", "bytes", "chars")}
    assert len(set(hashes.values())) == 3


def test_each_kind_is_prepared_once_per_corpus(tmp_path):
    corpus = write_text(tmp_path / "dna.txt", dna(30), sep="\n")
    data = data_of(sweep(str(corpus), kind="chars", vocab_size=8))
    assert prepare(data, tmp_path / "r")[1] is True and prepare(data, tmp_path / "r")[1] is False
    assert json.loads((prepare(data, tmp_path / "r")[0].path / "manifest.json").read_text())["vocab_size"] == 6


@pytest.mark.parametrize("kind,size,message", [
    ("bytes", 100, "data.d.tokenizer.vocab_size: must be at least 257 for kind bytes (256 bytes + <|endoftext|>)"),
    ("chars", 2, "data.d.tokenizer.vocab_size: must be at least 3 for kind chars"),
    ("bpe", 200, "data.d.tokenizer.vocab_size: must be at least 257 for kind bpe"),
])
def test_a_vocabulary_too_small_for_its_ids_is_refused(kind, size, message):
    with pytest.raises(SpecError) as err:
        parse_sweep(sweep("x.txt", kind=kind, vocab_size=size))
    assert str(err.value).startswith(message), str(err.value)


def test_the_dna_example_prepares_one_token_per_base_and_says_what_it_cut(tmp_path, capsys):
    from pathlib import Path

    from aot_ray.cli import main

    corpus = write_text(tmp_path / "dna.txt", dna(200) + ["ACGTNNNNACGT"], sep="\n")
    sweep_file = Path(__file__).resolve().parent.parent / "sweeps" / "dna-local.yaml"
    sets = ["--set", f"data.dna.paths=['{corpus}']"]
    assert main(["prepare", str(sweep_file), "--storage", str(tmp_path / "r"), *sets]) == 0
    out = capsys.readouterr().out
    assert "4 characters (" in out and "are not among the 4 it keeps" in out  # the Ns
    assert main(["plan", str(sweep_file), "--storage", str(tmp_path / "r"), *sets,
                 "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 0
    assert "dataset dna: prepared" in capsys.readouterr().out


@pytest.mark.integration
def test_the_dna_example_runs_forward_and_backward(tmp_path, ray_local):
    from pathlib import Path

    from aot_ray import sweep

    corpus = write_text(tmp_path / "dna.txt", dna(300), sep="\n")
    resolved = sweep.resolve(str(Path(__file__).resolve().parent.parent / "sweeps" / "dna-local.yaml"),
                             sets=[f"data.dna.paths=['{corpus}']", "grid.seed=[0]",
                                   "defaults.train={steps: 20, batch_size: 8, eval_every: 10, checkpoint_every: 10}",
                                   "defaults.optim.warmup_steps=2"],
                             tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", storage=str(tmp_path / "r"))
    out = sweep.run(resolved, verbose=0, say=lambda _: None)
    assert len(out.ran) == 2 and not out.failed and len(out.report["pairs"]) == 1
