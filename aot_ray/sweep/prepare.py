"""`aot-ray prepare`: every distinct dataset of a resolved sweep prepared once in this process (`run` prepares
them as Ray tasks), one summary line each, and the check that every trial's context fits its prepared splits."""

from __future__ import annotations

from typing import Callable

from ..data.prepare import prepare
from ..errors import DataError
from ..spec import TrialSpec
from .resolved import ResolvedSweep
from .sweep_plan import where_of


def summary_line(where: str, lang: str | None, h: str, path: str, built: bool, m: dict) -> str:
    label = where + (f"[{lang}]" if lang else "")
    docs, toks = m["documents"], m["tokens"]
    unknown = m.get("unknown_chars") or 0
    share = unknown / max(1, toks["train"] + toks["val"] - docs["train"] - docs["val"])  # characters: ids - EOTs
    cut = (f"; {unknown:,} characters ({share:.2%} of the text) are not among the {m['vocab_size'] - 2:,} it keeps "
           f"(tokenizer.vocab_size) and map to the unknown id" if unknown else "")
    return (f"{'prepared' if built else 'reused'} {label} ({h}): {docs['train']:,}+{docs['val']:,} documents, "
            f"{toks['train']:,}+{toks['val']:,} tokens (train+val), {m.get('bytes', 0) / 1e6:.1f} MB, "
            f"{m.get('seconds', 0):.1f} s -> {path}{cut}")


def check_context_fits(trials: list[TrialSpec], hashes: dict[str, str], manifests: dict[str, dict]) -> None:
    """Every trial's context must fit in its prepared splits: checked before any trial starts."""
    for t in trials:
        tokens = manifests[hashes[t.trial_id]]["tokens"]
        for split, name in (("val", "validation"), ("train", "training")):
            if tokens[split] < t.context_length:
                lang = f" ({t.language})" if t.language else ""
                raise DataError(f"{where_of(t)}{lang}: the {name} split has {tokens[split]} tokens, fewer than "
                                f"context_length {t.context_length}; add text or raise val_fraction")


def prepare_local(sweep: ResolvedSweep, say: Callable[[str], None] = print,
                  progress: bool = False) -> dict[str, dict]:
    """Every distinct dataset once, in this process; one summary line each. Returns hash -> manifest."""
    sweep.storage.check_writable()
    sp = sweep.plan()
    manifests = {}
    for h, (where, d, lang) in sp.datasets.items():
        prepared, built = prepare(d, sweep.storage, where, progress=progress)
        manifests[h] = prepared.manifest
        say(summary_line(where, lang, h, prepared.location, built, prepared.manifest))
    check_context_fits(sp.trials, sp.versions, manifests)
    return manifests
