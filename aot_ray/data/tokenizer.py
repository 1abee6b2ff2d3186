"""Character-level tokenizer for the synthetic sets: id 0 is BOS (also EOS/pad), then one id per character."""

from __future__ import annotations

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
