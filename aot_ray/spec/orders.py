"""Token orders: one fixed permutation of a window's T positions, applied to every window of a trial before BOS is
prepended (the authors' `perm_generator.py`). The i-th token fed is window[perm[i]]; every token of the window is
predicted, so every order scores exactly the tokens forward scores, and all orders have the same joint entropy:
an order can be easier only computationally.

Named orders (their permutations at T = 8 are README's table, and tests/test_orders.py checks the code against
it): forward, backward, middle_out, end_in, even_odd, odd_even, half_back_forward, half_forward_back, and the
quarter forms (each half of the window in middle-out or end-in order, the halves interleaved or concatenated; T a
multiple of 4). Drawn from the trial's `order_seed`: uniform_random (a uniformly random permutation) and
random_chunk (the window's chunks of `chunk` tokens in a random order, each chunk forward; T a multiple of the
chunk). A custom order is a permutation given in the sweep (`orders.custom`)."""

from __future__ import annotations

from typing import Callable

import numpy as np

RANDOM = ("uniform_random", "random_chunk")


def _middle_out(n: int) -> list[int]:
    m = n // 2
    out = [m]
    for i in range(1, n):
        for j in (m - i, m + i):
            if 0 <= j < n and len(out) < n:
                out.append(j)
    return out


def _end_in(n: int) -> list[int]:
    out = []
    lo, hi = 0, n - 1
    while lo <= hi:
        out.append(lo)
        if hi != lo:
            out.append(hi)
        lo, hi = lo + 1, hi - 1
    return out


def _halves(form: Callable[[int], list[int]], interleave: bool) -> Callable[[int], list[int]]:
    def perm(n: int) -> list[int]:
        h = n // 2
        first, second = form(h), [h + i for i in form(h)]
        return [x for pair in zip(first, second) for x in pair] if interleave else first + second
    return perm


NAMED: dict[str, Callable[[int], list[int]]] = {
    "forward": lambda n: list(range(n)),
    "backward": lambda n: list(range(n - 1, -1, -1)),
    "middle_out": _middle_out,
    "end_in": _end_in,
    "even_odd": lambda n: list(range(0, n, 2)) + list(range(1, n, 2)),
    "odd_even": lambda n: list(range(1, n, 2)) + list(range(0, n, 2)),
    "half_back_forward": lambda n: list(range(n // 2 - 1, -1, -1)) + list(range(n // 2, n)),
    "half_forward_back": lambda n: list(range(n // 2)) + list(range(n - 1, n // 2 - 1, -1)),
    "quarter_middle_out_interleave": _halves(_middle_out, True),
    "quarter_middle_out_concat": _halves(_middle_out, False),
    "quarter_end_in_interleave": _halves(_end_in, True),
    "quarter_end_in_concat": _halves(_end_in, False),
}
QUARTER = tuple(n for n in NAMED if n.startswith("quarter_"))
# one model on both directions: windows alternate forward and reversed, each led by its own direction token (two ids
# past the text's vocabulary) in place of BOS; evaluated in each direction on the same windows (TokenTextFWBW)
JOINT = "joint"
PERMUTATIONS = (*NAMED, *RANDOM)
KNOWN = (*PERMUTATIONS, JOINT)
# the short names in trial ids (forward and backward keep theirs)
SHORT = {"forward": "fw", "backward": "bw", "middle_out": "mo", "end_in": "ei", "even_odd": "eo", "odd_even": "oe",
         "half_back_forward": "hbf", "half_forward_back": "hfb", "quarter_middle_out_interleave": "qmoi",
         "quarter_middle_out_concat": "qmoc", "quarter_end_in_interleave": "qeii", "quarter_end_in_concat": "qeic",
         "uniform_random": "ur", "random_chunk": "rc", JOINT: "jt"}


def problem(order: str, context: int, chunk: int = 8, custom: tuple[int, ...] | None = None) -> str | None:
    """Why `order` cannot permute windows of `context` tokens, in words; None when it can."""
    if custom is not None:
        if len(custom) != context:
            return f"has {len(custom)} positions; a window has {context} (context_length)"
        if sorted(custom) != list(range(context)):
            return f"is not a permutation of 0..{context - 1}"
        return None
    if order not in KNOWN:
        return None  # (unknown names are the loader's to name)
    if order in QUARTER and context % 4:
        return f"needs a context that is a multiple of 4, got {context}"
    if order == "random_chunk" and context % chunk:
        return f"needs a context that is a multiple of its chunk ({chunk}), got {context}"
    return None


def permutation(order: str, context: int, seed: int = 0, chunk: int = 8,
                custom: tuple[int, ...] | None = None) -> np.ndarray:
    """The positions of a window in the order they are fed (`perm[i]`: the i-th token fed)."""
    why = problem(order, context, chunk, custom)
    if why is not None:
        raise ValueError(f"order {order}: {why}")
    if custom is not None:
        return np.asarray(custom, dtype=np.int64)
    if order == "uniform_random":
        return np.random.default_rng([seed, 0x0DE]).permutation(context).astype(np.int64)
    if order == "random_chunk":
        chunks = np.random.default_rng([seed, 0xC4]).permutation(context // chunk)
        return (chunks[:, None] * chunk + np.arange(chunk)[None, :]).reshape(-1).astype(np.int64)
    return np.asarray(NAMED[order](context), dtype=np.int64)

