"""The paper's synthetic datasets, generated deterministically from the dataset's own seed (no download).

primes: `p * q = n` with primes p < q below 10**digits, zero-padded, and n = p*q zero-padded to 2*digits and
written least-significant digit first. linear: `x : y` with y = A x over F2, A = I + k off-diagonal ones,
invertible, and each bit of y flipped with probability `noise`. Lines are distinct, so a split by line is disjoint.
"""

from __future__ import annotations


import numpy as np

from ..errors import DataError
from ..spec.primes import prime_sieve
from ..spec.schema import DatasetSpec, LinearData, PrimesData, split_sizes

ENUMERATE_LIMIT = 20_000_000  # below this many possible lines, sample without replacement from all of them
ALPHABETS = {"primes": "0123456789*= \n", "linear": "01: \n"}


def primes_below(n: int) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(bytes(prime_sieve(n)), dtype=np.uint8))


def _distinct(rng: np.random.Generator, total: int, n: int) -> np.ndarray:
    if total <= ENUMERATE_LIMIT:
        return rng.choice(total, size=n, replace=False)
    chosen: dict[int, None] = {}
    while len(chosen) < n:  # n is far below total here, so rejection is cheap
        for v in rng.integers(0, total, size=n - len(chosen)).tolist():
            chosen.setdefault(v, None)
    return np.fromiter(chosen, dtype=np.int64, count=n)


def primes_lines(data: PrimesData) -> list[str]:
    rng = np.random.default_rng([data.seed, 1])
    primes = primes_below(10**data.digits)
    n = len(primes)
    # decode a flat index into the (i < j) upper triangle, row by row
    flat = _distinct(rng, n * (n - 1) // 2, data.n_samples)
    row_start = np.concatenate([[0], np.cumsum(np.arange(n - 1, 0, -1))])
    i = np.searchsorted(row_start, flat, side="right") - 1
    j = flat - row_start[i] + i + 1
    d = data.digits
    return [
        f"{p:0{d}d} * {q:0{d}d} = {str(p * q).zfill(2 * d)[::-1]}"
        for p, q in zip(primes[i].tolist(), primes[j].tolist())
    ]


def f2_rank(a: np.ndarray) -> int:
    m = a.copy().astype(np.uint8) % 2
    rank = 0
    rows, cols = m.shape
    for c in range(cols):
        pivot = next((r for r in range(rank, rows) if m[r, c]), None)
        if pivot is None:
            continue
        m[[rank, pivot]] = m[[pivot, rank]]
        for r in range(rows):
            if r != rank and m[r, c]:
                m[r] ^= m[rank]
        rank += 1
    return rank


def linear_matrix(data: LinearData) -> np.ndarray:
    """A = I + exactly k off-diagonal ones, invertible over F2 (resampled until it is)."""
    rng = np.random.default_rng([data.seed, 2])
    m = data.bits
    off = np.array([(i, j) for i in range(m) for j in range(m) if i != j]).reshape(-1, 2)
    for _ in range(10_000):
        a = np.eye(m, dtype=np.uint8)
        if data.k:
            pick = off[rng.choice(len(off), size=data.k, replace=False)]
            a[pick[:, 0], pick[:, 1]] = 1
        if f2_rank(a) == m:
            return a
    raise DataError(f"no invertible {m}x{m} matrix with k={data.k} off-diagonal ones found; lower data.k")


def linear_lines(data: LinearData) -> list[str]:
    a = linear_matrix(data)
    rng = np.random.default_rng([data.seed, 3])
    m = data.bits
    xs = _distinct(rng, 2**m, data.n_samples).astype(np.uint64)
    x = ((xs[:, None] >> np.arange(m, dtype=np.uint64)[None, :]) & np.uint64(1)).astype(np.uint8)
    y = (x.astype(np.int64) @ a.T.astype(np.int64)) % 2
    if data.noise:
        y ^= (rng.random(y.shape) < data.noise).astype(np.int64)
    table = np.array(["0", "1"])
    return [f"{''.join(xr)} : {''.join(yr)}" for xr, yr in zip(table[x], table[y])]


def generate(data: DatasetSpec) -> tuple[list[str], list[str]]:
    """(train lines, validation lines), disjoint by line."""
    lines = primes_lines(data) if isinstance(data, PrimesData) else linear_lines(data)
    n_train, _ = split_sizes(data)
    return lines[:n_train], lines[n_train:]
