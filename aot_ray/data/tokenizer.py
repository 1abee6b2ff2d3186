"""Tokenizers. The synthetic sets' character tokenizer (`CharTokenizer`: id 0 is BOS, also EOS/pad, then one id
per character of a fixed alphabet); a corpus's, made with `tokenizers` (`make_tokenizer`: byte-level BPE, UTF-8
bytes, or characters), with id 0 <|endoftext|>."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..errors import DataError


class CharTokenizer:
    BOS = "<bos>"

    def __init__(self, alphabet: str) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet has repeated characters")
        self.alphabet = alphabet
        self.bos_id = 0
        self._lut = np.full(256, -1, dtype=np.int32)
        for i, ch in enumerate(alphabet):
            self._lut[ord(ch)] = i + 1

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1

    def spec(self) -> dict:
        return {"type": "char", "alphabet": self.alphabet, "bos_id": self.bos_id}

    def encode(self, text: str) -> np.ndarray:
        raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        ids = self._lut[raw]
        if (ids < 0).any():
            bad = chr(int(raw[np.argmax(ids < 0)]))
            raise DataError(f"character {bad!r} is not in the tokenizer's alphabet {self.alphabet!r}")
        return ids.astype(np.uint16)

    def decode(self, ids) -> str:
        return "".join(self.BOS if i == 0 else self.alphabet[i - 1] for i in np.asarray(ids).tolist())


EOT = "<|endoftext|>"
UNK = "<unk>"  # the characters a `chars` tokenizer does not keep


def make_tokenizer(spec: Any, texts: Iterable[str], show_progress: bool = False) -> Any:
    """The corpus's tokenizer of `spec.kind`, from the training sample `texts` (not read for `bytes`)."""
    if spec.kind == "bytes":
        return bytes_tokenizer()
    if spec.kind == "chars":
        return train_chars(texts, spec.vocab_size, show_progress)
    return train_bpe(texts, spec.vocab_size, spec.min_frequency, show_progress)


def bytes_tokenizer() -> Any:
    """UTF-8 bytes: `tokenizers`' byte-level alphabet as a BPE without merges, <|endoftext|> id 0 (257 ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={EOT: 0, **{c: i + 1 for i, c in enumerate(alphabet)}}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_chars(texts: Iterable[str], cap: int, show_progress: bool = False) -> Any:
    """One id per character: `tokenizers`' WordLevel over single characters, the `cap - 2` most frequent of the
    sample kept, every other character <unk> (id 1)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character a word
    tok.decoder = decoders.Fuse()  # characters join without spaces
    trainer = trainers.WordLevelTrainer(vocab_size=cap, min_frequency=1, special_tokens=[EOT, UNK],
                                        show_progress=show_progress)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_bpe(texts, vocab_size: int, min_frequency: int = 2, show_progress: bool = False):
    """Byte-level BPE with `tokenizers` (as GPT-2): id 0 is <|endoftext|>, used as BOS and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.token_to_id(EOT) != 0:
        raise AssertionError("<|endoftext|> must be id 0")
    return tok
