"""The paper's synthetic datasets: correct content, requested sparsity, determinism, disjoint splits."""

import numpy as np
import pytest

from aot_ray.data.synthetic import f2_rank, generate, linear_lines, linear_matrix, primes_below, primes_lines
from aot_ray.spec import LinearData, PrimesData


def is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))


def test_primes_below():
    assert primes_below(30).tolist() == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


@pytest.mark.parametrize("digits", [2, 3, 5])  # 5 digits takes the rejection-sampling path
def test_primes_lines_are_products_of_primes(digits):
    data = PrimesData(digits=digits, n_samples=300, seed=7)
    lines = primes_lines(data)
    assert len(lines) == len(set(lines)) == 300
    for line in lines:
        p, rest = line.split(" * ")
        q, n = rest.split(" = ")
        assert len(p) == len(q) == digits and len(n) == 2 * digits
        assert len(line) + 1 == data.line_tokens()
        p, q = int(p), int(q)
        assert p < q and is_prime(p) and is_prime(q)
        assert int(n[::-1]) == p * q  # least-significant digit first


def test_linear_matrix_is_invertible_with_requested_sparsity():
    for k in (0, 1, 5, 20, 50):
        a = linear_matrix(LinearData(bits=25, k=k, seed=k))
        assert np.array_equal(np.diag(a), np.ones(25))
        assert int(a.sum()) - 25 == k
        assert f2_rank(a) == 25


def test_linear_lines_satisfy_y_equals_ax():
    data = LinearData(bits=12, k=6, n_samples=500, seed=3)
    a = linear_matrix(data)
    lines = linear_lines(data)
    assert len(set(l.split(" : ")[0] for l in lines)) == 500
    for line in lines:
        xs, ys = line.split(" : ")
        x = np.array([int(c) for c in xs])
        y = np.array([int(c) for c in ys])
        assert np.array_equal((a.astype(int) @ x) % 2, y)


def test_linear_noise_flips_the_requested_fraction():
    data = LinearData(bits=16, k=3, n_samples=4000, noise=0.1, seed=1)
    a = linear_matrix(data)
    flips = total = 0
    for line in linear_lines(data):
        xs, ys = line.split(" : ")
        expect = (a.astype(int) @ np.array([int(c) for c in xs])) % 2
        flips += int((expect != np.array([int(c) for c in ys])).sum())
        total += 16
    assert abs(flips / total - 0.1) < 0.01


def test_generation_is_deterministic_and_split_is_disjoint():
    for data in (PrimesData(digits=3, n_samples=1000), LinearData(bits=10, k=3, n_samples=800)):
        tr, va = generate(data)
        assert (tr, va) == generate(data)
        assert not set(tr) & set(va)
        assert len(va) == round(data.n_samples * data.val_fraction)
    assert generate(PrimesData(seed=1, n_samples=100)) != generate(PrimesData(seed=2, n_samples=100))
