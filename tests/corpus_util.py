"""Small multilingual-looking corpora made by the tests (no download)."""

import random
from pathlib import Path

SYLLABLES = {
    "en": ["the", "an", "ing", "tion", "er", "st", "ow", "ar", "is", "on", "ly", "and"],
    "fr": ["le", "la", "ent", "ion", "eau", "oi", "que", "des", "ais", "ou", "ne", "et"],
    "de": ["der", "die", "ung", "sch", "ein", "ich", "en", "zu", "st", "au", "ge", "und"],
    "fi": ["ja", "en", "ssa", "lla", "kin", "tta", "oi", "uu", "ka", "mi", "nen", "ei"],
    "tr": ["bir", "ve", "lar", "ler", "dir", "yor", "cak", "in", "da", "mak", "si", "ko"],
    "id": ["yang", "dan", "di", "ke", "kan", "nya", "ber", "me", "an", "ini", "itu", "ada"],
}


def document(lang: str, i: int, rng: random.Random) -> str:
    syl = SYLLABLES[lang]
    words = ["".join(rng.choice(syl) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(8, 30))]
    return f"doc{i} " + " ".join(words) + "."


def docs(lang: str, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(f"{lang}/{seed}")
    return [document(lang, i, rng) for i in range(n)]


def write_text(path: Path, texts: list[str], sep: str = "\n\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = sep.join(texts) + "\n"
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    elif path.suffix == ".xz":
        import lzma

        with lzma.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path
