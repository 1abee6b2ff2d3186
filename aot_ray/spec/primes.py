"""Primes below a bound: the one sieve, shared by the schema (how many distinct lines a primes dataset can have)
and the generator (which primes it draws). Pure."""

from __future__ import annotations

import math


def prime_sieve(n: int) -> bytearray:
    """sieve[i] == 1 exactly when i < n is prime (Eratosthenes; n is at most 10**6 here). The one sieve: the
    spec counts distinct lines with it, the generator draws primes from it."""
    sieve = bytearray([1]) * n
    sieve[:2] = bytes(min(n, 2))
    for p in range(2, math.isqrt(max(n - 1, 0)) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, n, p)))
    return sieve


def count_primes_below(n: int) -> int:
    """The number of primes below n."""
    return sum(prime_sieve(n))
