"""Windows over a token array, the batch order as a pure function of (seed, sample index), and the token order.

The trials of a pair share the data seed, so they draw the same windows in the same order; an order other than
forward permutes each window after tokenization (backward reverses it; `spec.orders`). BOS is prepended after the
permutation and every token of the window is predicted, so every order scores exactly the same tokens.
"""

from __future__ import annotations

import numpy as np


class Windows:
    def __init__(self, tokens: np.ndarray, context_length: int, stride: int) -> None:
        if len(tokens) < context_length:
            raise ValueError(f"{len(tokens)} tokens cannot fill one window of {context_length}")
        self.tokens = tokens
        self.context_length = context_length
        self.starts = np.arange(0, len(tokens) - context_length + 1, stride, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def get(self, idx: np.ndarray) -> np.ndarray:
        """Windows `idx` as an int64 array [len(idx), context_length]."""
        offsets = self.starts[np.asarray(idx)][:, None] + np.arange(self.context_length)[None, :]
        return np.asarray(self.tokens[offsets], dtype=np.int64)


class BatchOrder:
    """Epoch e visits the windows in permutation(seed, e); sample i is the (i mod n)-th of epoch i // n."""

    def __init__(self, n_windows: int, seed: int) -> None:
        self.n = n_windows
        self.seed = seed
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return self._perm

    def indices(self, start: int, count: int) -> np.ndarray:
        i = np.arange(start, start + count, dtype=np.int64)
        epochs = i // self.n
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs).tolist():  # a batch spans at most a couple of epochs
            mask = epochs == e
            out[mask] = self._permutation(e)[i[mask] % self.n]
        return out


def orient(windows: np.ndarray, order: np.ndarray | str | None) -> np.ndarray:
    """Every window's tokens in a trial's order: a permutation of the positions (`TrialSpec.permutation`; one
    gather on the batch), "backward" (reversed), or None / "forward" (as they are)."""
    if order is None or (isinstance(order, str) and order == "forward"):
        return windows
    if isinstance(order, str):
        return np.ascontiguousarray(windows[:, ::-1])
    return np.ascontiguousarray(windows[:, order])


def with_bos(windows: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): inputs = BOS + window[:-1], targets = the whole window."""
    inputs = np.empty_like(windows)
    inputs[:, 0] = bos_id
    inputs[:, 1:] = windows[:, :-1]
    return inputs, windows


def with_direction(windows: np.ndarray, backward: np.ndarray, first_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The joint model's (inputs, targets): each window forward, or reversed where `backward`, led by its direction
    token (`first_id` for forward, `first_id + 1` for backward) in place of BOS; every token predicted."""
    targets = np.where(backward[:, None], windows[:, ::-1], windows)
    inputs = np.empty_like(targets)
    inputs[:, 0] = np.where(backward, first_id + 1, first_id)
    inputs[:, 1:] = targets[:, :-1]
    return inputs, targets


def eval_indices(n_windows: int, cap: int) -> np.ndarray:
    """A fixed, evenly spread subset of validation windows: the same for every trial, seed and direction."""
    if n_windows <= cap:
        return np.arange(n_windows)
    return np.unique(np.linspace(0, n_windows - 1, num=cap).round().astype(np.int64))
