"""One seed, split into named sub-seeds, so changing how one consumer draws never shifts another's stream."""

from __future__ import annotations

import hashlib

# Named streams. Direction is deliberately absent: forward and backward of a pair share all of them.
MODEL_INIT = "model_init"
DATA_ORDER = "data_order"
DROPOUT = "dropout"


def derive(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:4], "little")
