"""Natural-language corpora: sources, BPE, document split, prepared-data cache, bad input."""

import json
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aot_ray.data.prepare import MARKER, data_dir, prepare
from aot_ray.data.sources import documents, is_validation
from aot_ray.data.tokenizer import train_bpe
from aot_ray.errors import DataError
from aot_ray.spec import HFData, TextData, TokenizerSpec

from corpus_util import docs, write_text

ROOT = Path(__file__).parent.parent
SMALL_BPE = TokenizerSpec(vocab_size=300, sample_bytes=10**6)


@pytest.mark.parametrize("name", ["a.txt", "a.txt.gz", "a.txt.xz"])
def test_text_source_blank_line_documents_and_compression(tmp_path, name):
    texts = [t.replace(" ", "\n", 1) for t in docs("en", 50)]  # multi-line documents
    write_text(tmp_path / name, texts)
    got = list(documents(TextData(paths=(str(tmp_path / name),)), "data.x"))
    assert got == texts


def test_text_source_lines_globs_and_caps(tmp_path):
    write_text(tmp_path / "p1.txt", docs("en", 30), sep="\n")
    write_text(tmp_path / "p2.txt", docs("fr", 30), sep="\n")
    data = TextData(paths=(str(tmp_path / "p*.txt"),), doc_sep="line")
    got = list(documents(data, "data.x"))
    assert got == docs("en", 30) + docs("fr", 30)
    capped = TextData(paths=(str(tmp_path / "p*.txt"),), doc_sep="line", max_documents=7)
    assert len(list(documents(capped, "data.x"))) == 7
    by_bytes = TextData(paths=(str(tmp_path / "p*.txt"),), doc_sep="line", max_bytes=500)
    assert 0 < sum(len(d) for d in documents(by_bytes, "data.x")) < 800


def test_hf_source_on_local_json_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = docs("de", 40)
    (tmp_path / "de.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)))
    pq.write_table(pa.table({"content": texts}), tmp_path / "de.parquet")
    js = HFData(path="json", data_files=(str(tmp_path / "de.jsonl"),))
    assert list(documents(js, "data.x")) == texts
    assert list(documents(HFData(path="json", data_files=(str(tmp_path / "de.jsonl"),), streaming=True), "d")) == texts
    pa_ = HFData(path="parquet", data_files=(str(tmp_path / "de.parquet"),), text_field="content")
    assert list(documents(pa_, "data.x")) == texts


def hf_folder(tmp: Path) -> Path:
    """A local dataset folder with one config per language, declared in its README (as hub datasets do)."""
    root = tmp / "ds"
    for lang in ("en", "fr"):
        (root / lang).mkdir(parents=True, exist_ok=True)
        (root / lang / "part-0.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in docs(lang, 30)))
    (root / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {lang}\n  data_files: {lang}/*.jsonl\n" for lang in ("en", "fr")) + "---\n")
    return root


def test_hf_configs_per_language(tmp_path):
    root = hf_folder(tmp_path)
    for lang in ("en", "fr"):
        assert list(documents(HFData(path=str(root), name=lang), "data.x")) == docs(lang, 30)


def test_bpe_trains_and_round_trips():
    tok = train_bpe(docs("fr", 300), vocab_size=400)
    assert tok.get_vocab_size() == 400 and tok.token_to_id("<|endoftext|>") == 0
    text = "doc1 le chat ent ionque désolé — ünïcödé 123"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: any text round-trips


def test_split_is_by_document_and_disjoint(tmp_path):
    write_text(tmp_path / "en.txt", docs("en", 400))
    data = TextData(paths=(str(tmp_path / "en.txt"),), val_fraction=0.1, tokenizer=SMALL_BPE)
    prepared, built = prepare(data, tmp_path / "store", "data.en")
    assert built
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(prepared.path / "tokenizer.json"))

    def split_docs(arr):
        text = tok.decode(np.asarray(arr).tolist(), skip_special_tokens=False)
        return {d.strip() for d in text.split("<|endoftext|>") if d.strip()}

    train, val = split_docs(prepared.train), split_docs(prepared.val)
    assert val and train and not train & val
    expected_val = {d for i, d in enumerate(docs("en", 400)) if is_validation(0, i, 0.1)}
    assert val == expected_val
    m = prepared.manifest
    assert m["documents"] == {"train": len(train), "val": len(val)}
    assert m["tokens"]["train"] == len(prepared.train) and m["dtype"] == "uint16"
    assert prepared.train[-1] == 0  # every document ends with <|endoftext|>


def test_reverse_chars_control(tmp_path):
    write_text(tmp_path / "en.txt", docs("en", 200))
    rev = TextData(paths=(str(tmp_path / "en.txt"),), tokenizer=TokenizerSpec(vocab_size=300, reverse_chars=True))
    fwd = TextData(paths=(str(tmp_path / "en.txt"),), tokenizer=SMALL_BPE)
    p_rev, _ = prepare(rev, tmp_path / "s")
    p_fwd, _ = prepare(fwd, tmp_path / "s")
    assert p_rev.path != p_fwd.path
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(p_rev.path / "tokenizer.json"))
    first = tok.decode(np.asarray(p_rev.train[:200]).tolist(), skip_special_tokens=False).split("<|endoftext|>")[0]
    assert first.endswith("0cod") or first.endswith("cod")  # "doc0 ..." reversed ends with "0cod"


def _prepare_in_process(args):
    path, store = args
    data = TextData(paths=(path,), tokenizer=SMALL_BPE)
    prepared, built = prepare(data, store)
    return str(prepared.path), built


def test_concurrent_prepare_builds_one_folder(tmp_path):
    write_text(tmp_path / "en.txt", docs("en", 600))
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_prepare_in_process, [(str(tmp_path / "en.txt"), str(tmp_path / "store"))] * 2)
    assert results[0][0] == results[1][0]
    folders = list((tmp_path / "store" / "data").iterdir())
    assert [f.name for f in folders] == [Path(results[0][0]).name]  # no temporary folder left behind
    assert (folders[0] / MARKER).is_file()
    _, again = _prepare_in_process((str(tmp_path / "en.txt"), str(tmp_path / "store")))
    assert not again


def test_changed_file_is_prepared_again(tmp_path):
    f = write_text(tmp_path / "en.txt", docs("en", 200))
    data = TextData(paths=(str(f),), tokenizer=SMALL_BPE)
    first = data_dir(tmp_path, data)
    write_text(f, docs("en", 250))
    assert data_dir(tmp_path, data) != first


@pytest.mark.parametrize("data,needle", [
    (lambda t: TextData(paths=(str(t / "missing.txt"),)), "data.x.paths[0]: no such file"),
    (lambda t: TextData(paths=(str(write_text(t / "empty.txt", [""])),), tokenizer=SMALL_BPE),
     "data.x: no documents (empty corpus)"),
    (lambda t: HFData(path="no-such-org/no-such-dataset"), "data.x: cannot load Hugging Face dataset 'no-such-org/no-such-dataset'"),
    (lambda t: HFData(path=str(hf_folder(t)), name="nope"), "(config 'nope'): BuilderConfig 'nope' not found"),
    (lambda t: HFData(path="json", data_files=(str(t / "d.jsonl"),), text_field="body"), "data.x.text_field: 'body' is not a column"),
    (lambda t: TextData(paths=(str(t / "en.txt"),), tokenizer=TokenizerSpec(vocab_size=50257)), "data.x.tokenizer.vocab_size: 50257 is more than this corpus supports"),
])
def test_bad_corpora_are_one_line_errors(tmp_path, data, needle):
    write_text(tmp_path / "en.txt", docs("en", 50))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in docs("en", 20)))
    with pytest.raises(DataError) as err:
        prepare(data(tmp_path), tmp_path / "store", "data.x")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / "store" / "data").glob("*")) if (tmp_path / "store" / "data").exists() else True


def test_prepare_command_reports_prepared_then_reused(tmp_path):
    for lang in ("en", "fr"):
        write_text(tmp_path / "corpora" / f"{lang}.txt", docs(lang, 300))
    sweep = tmp_path / "s.yaml"
    sweep.write_text((ROOT / "sweeps" / "languages-local.yaml").read_text())
    cmd = [sys.executable, "-m", "aot_ray.cli", "prepare", str(sweep), "--storage", str(tmp_path / "store"),
           "--set", "grid.language=[en, fr]", "--set", "data.local.tokenizer.vocab_size=300",
           "--set", "grid.context_length=[32]"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    assert len(lines) == 2 and all(l.startswith("prepared data.local[") for l in lines)
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert [l.split()[0] for l in second.stdout.strip().splitlines()] == ["reused", "reused"]
    missing = subprocess.run(cmd + ["--set", "grid.language=[de]"], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "aot-ray: error: data.local.paths[0]: no such file: corpora/de.txt"


def test_languages_sweep_plans_offline(capsys):
    from aot_ray.cli import main

    assert main(["plan", str(ROOT / "sweeps" / "languages.yaml"), "--json",
                 "--tracking-uri", "sqlite:////nonexistent/x.db"]) == 0
    trials = json.loads(capsys.readouterr().out)
    assert [t["language"] for t in trials[::2]] == "en fr de fi tr el id vi ar he tl".split()
    assert {t["direction"] for t in trials} == {"forward", "backward"}
    assert all(t["model"] == "gpt-405m" and abs(t["n_params"] - 405e6) / 405e6 < 0.01 for t in trials)


def test_uri_storage_publishes_then_trials_fetch_into_local_cache(tmp_path, monkeypatch):
    """The object-store path (s3://, gs://) exercised through file:// URIs: same fsspec code."""
    from aot_ray.data.prepare import load

    monkeypatch.setenv("AOT_RAY_CACHE", str(tmp_path / "cache-node-a"))
    write_text(tmp_path / "en.txt", docs("en", 300))
    data = TextData(paths=(str(tmp_path / "en.txt"),), tokenizer=SMALL_BPE)
    root = f"file://{tmp_path}/bucket"
    first, built = prepare(data, root, "data.en")
    assert built and first.uri.startswith(root + "/data/text-")
    remote_dir = tmp_path / "bucket" / "data" / first.uri.rsplit("/", 1)[-1]
    assert sorted(p.name for p in remote_dir.iterdir()) == ["_SUCCESS", "manifest.json", "tokenizer.json",
                                                            "train.bin", "val.bin"]
    monkeypatch.setenv("AOT_RAY_CACHE", str(tmp_path / "cache-node-b"))  # another node: nothing local yet
    again, built2 = prepare(data, root, "data.en")
    assert not built2
    on_b = load(first.uri)
    assert str(on_b.path).startswith(str(tmp_path / "cache-node-b"))
    np.testing.assert_array_equal(np.asarray(on_b.train), np.asarray(first.train))
    with pytest.raises(DataError, match="not a prepared dataset"):
        load(f"file://{tmp_path}/bucket/data/text-0000")


# ---------------------------------------------------------------- prepared data is checked, not trusted


def _prepared_synthetic(tmp_path):
    from aot_ray.data.prepare import prepare
    from aot_ray.spec.schema import LinearData

    d = LinearData(bits=8, k=2, n_samples=256)
    p, built = prepare(d, tmp_path)
    assert built
    return d, p


def test_a_truncated_token_file_is_refused_in_one_line_and_rebuilt_by_prepare(tmp_path):
    import pytest

    from aot_ray.data.prepare import load, prepare
    from aot_ray.errors import DataError

    d, p = _prepared_synthetic(tmp_path)
    good = (p.path / "train.bin").read_bytes()
    (p.path / "train.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"is damaged: train.bin is [\d,]+ bytes, its manifest says"):
        load(p.path)
    with pytest.warns(UserWarning, match="rebuilding it"):
        again, built = prepare(d, tmp_path)
    assert built and (again.path / "train.bin").read_bytes() == good


def test_a_zero_filled_token_file_of_the_right_size_fails_its_checksum(tmp_path):
    import os

    import pytest

    from aot_ray.data.prepare import load
    from aot_ray.errors import DataError

    _, p = _prepared_synthetic(tmp_path)
    load(p.path)  # verified once on this node: a stamp records it
    stamps = list(p.path.glob(".verified-*"))
    assert len(stamps) == 1
    f = p.path / "train.bin"
    size = f.stat().st_size
    f.write_bytes(bytes(size))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # a changed file, as a rewrite leaves it
    with pytest.raises(DataError, match="does not match its manifest's checksum"):
        load(p.path)


def test_plan_says_damaged_prepared_data(tmp_path, capsys):
    import yaml

    from aot_ray.cli import main

    raw = {"name": "dmg", "data": {"lin": {"kind": "linear", "bits": 8, "k": 2, "n_samples": 256, "windows": "stream"}},
           "defaults": {"optim": {"warmup_steps": 2}, "train": {"steps": 10}},
           "grid": {"dataset": ["lin"], "model": ["micro"], "context_length": [16]}}
    f = tmp_path / "dmg.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert main(["prepare", str(f), "--storage", str(tmp_path / "s")]) == 0
    (train_bin,) = (tmp_path / "s" / "data").glob("*/train.bin")
    train_bin.write_bytes(train_bin.read_bytes()[:10])
    capsys.readouterr()
    assert main(["plan", str(f), "--storage", str(tmp_path / "s"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0
    assert "DAMAGED (rebuilt by prepare/run)" in capsys.readouterr().out


def test_a_binary_corpus_file_is_read_with_a_warning_and_text_is_split_as_before(tmp_path):
    import pytest

    from aot_ray.data.sources import documents
    from aot_ray.spec.schema import TextData

    text = tmp_path / "t.txt"
    body = "".join(f"line {i} " + "x" * (i % 50) + "\n" + ("\n" if i % 7 == 0 else "") for i in range(20000))
    text.write_text(body)  # longer than the 64 KB probe: a line straddles its end
    want = [b.strip("\n") for b in body.split("\n\n") if b.strip()]
    assert list(documents(TextData(paths=(str(text),)), "data.t")) == want
    lines = [ln for ln in body.splitlines() if ln.strip()]
    assert list(documents(TextData(paths=(str(text),), doc_sep="line"), "data.t")) == lines
    binary = tmp_path / "b.bin"
    binary.write_bytes(bytes(range(256)) * 100)
    with pytest.warns(UserWarning, match=r"data.b.paths: .*b.bin does not look like UTF-8 text"):
        list(documents(TextData(paths=(str(binary),)), "data.b"))
