"""Statistics of the Arrow-of-Time gap (pure numpy/scipy, no I/O).

- `paired_bootstrap`: delta of a forward/backward pair on the same validation windows, with a percentile interval
  from resampling windows (the same indices on both sides, so the pairing is kept).
- `mean_interval`: a Student-t interval for a mean (the spread of delta over seeds).
- `fit_trend`: delta against log10 of a size-like axis (parameters, context, tokens, k), ordinary or weighted
  least squares, with a t interval on the slope: "how much delta changes per 10x".
- `sign_test`: an exact two-sided binomial test on the signs of deltas (per language, over cells and seeds).
- `seed_sign_sequence`: an anytime-valid sequential test for the sign of a cell's mean delta while its pairs
  train. The unit is the seed: at the k-th look (an evaluation step at or after the test's start) the deltas of
  the cell's n seeds at that step give a Student-t interval for their mean at level 1 - alpha_k, with
  alpha_k = alpha / K when the number of looks K is known in advance (evaluations from the start of the test to
  the end of training), else alpha * 6 / (pi^2 k^2). The alpha_k sum to at most alpha, so by the union bound: if at every look the seeds'
  deltas are independent draws from a normal distribution with mean 0, the chance that any look ever declares a
  sign is at most alpha, however many looks and however the looks depend on each other (the same seeds are seen
  at every look). When the mean at a look is not 0, the chance of declaring the opposite sign there is at most
  alpha / 2. One seed gives no interval: the sign is undetermined. Windows never decide a sign: two trained
  models differ by their training trajectories, which no number of validation windows averages away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


def _scipy_stats():
    """scipy.stats, imported where a statistic needs it: it takes most of a second to import, and the commands
    that compute none (plan, status, run until its report) must not pay for it."""
    from scipy import stats

    return stats


def delta(l_fw: float | np.ndarray, l_bw: float | np.ndarray) -> float | np.ndarray:
    """(L_bw - L_fw) / (0.5 (L_bw + L_fw)): > 0 when the forward direction is easier."""
    return (l_bw - l_fw) / (0.5 * (l_bw + l_fw))


def t_half(conf: float, df: int, se: float) -> float:
    """Half-width of a two-sided Student-t interval at level `conf` with `df` degrees of freedom (the one copy)."""
    return float(_scipy_stats().t.ppf((1 + conf) / 2, df)) * se


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float
    n: int  # observations behind it (windows, seeds)


def paired_bootstrap(fw: Sequence[float] | np.ndarray, bw: Sequence[float] | np.ndarray, *, n_boot: int = 2000,
                     conf: float = 0.95, seed: int = 0) -> Interval:
    """delta from per-window losses of the two directions (window i of one is window i of the other)."""
    a, b = np.asarray(fw, dtype=float), np.asarray(bw, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired per-window losses must be two 1-d arrays of one length, got {a.shape} and {b.shape}")
    est = float(delta(a.mean(), b.mean()))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    chunk = max(1, 2_000_000 // len(a))  # bounded memory for long window lists
    for i in range(0, n_boot, chunk):
        idx = rng.integers(0, len(a), size=(min(chunk, n_boot - i), len(a)))
        boots[i : i + len(idx)] = delta(a[idx].mean(axis=1), b[idx].mean(axis=1))
    lo, hi = np.quantile(boots, [(1 - conf) / 2, (1 + conf) / 2])
    return Interval(est, float(lo), float(hi), len(a))


def mean_interval(values: Iterable[float], conf: float = 0.95) -> Interval:
    """Mean with a Student-t interval; with one value the interval is undefined (nan)."""
    v = np.asarray(list(values), dtype=float)
    m = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return Interval(m, float("nan"), float("nan"), len(v))
    half = t_half(conf, len(v) - 1, v.std(ddof=1) / math.sqrt(len(v)))
    return Interval(m, m - half, m + half, len(v))


@dataclass(frozen=True)
class Trend:
    """delta = intercept + slope * log10(x); the slope is the change of delta per 10x of x."""

    slope: float
    slope_lo: float
    slope_hi: float
    intercept: float
    r2: float
    p_value: float  # two-sided, slope == 0
    n: int


def fit_trend(x: Sequence[float], y: Sequence[float], conf: float = 0.95, log_x: bool = True) -> Trend:
    """Least squares of y on log10(x) (or x); the interval is a t interval with n - 2 degrees of freedom from the
    residual scatter (nan below 3 points)."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("a trend needs at least 2 points with x and y")
    if log_x:
        if (xs <= 0).any():
            raise ValueError("log-space trends need x > 0")
        xs = np.log10(xs)
    if np.ptp(xs) == 0:
        raise ValueError("a trend needs at least 2 distinct x values")
    X = np.column_stack([np.ones_like(xs), xs])
    coef, *_ = np.linalg.lstsq(X, ys, rcond=None)
    intercept, slope = float(coef[0]), float(coef[1])
    resid = ys - intercept - slope * xs
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    n = len(xs)
    if n < 3:
        return Trend(slope, float("nan"), float("nan"), intercept, r2, float("nan"), n)
    sigma2 = float((resid**2).sum()) / (n - 2)
    cov = sigma2 * np.linalg.inv(X.T @ X)
    se = math.sqrt(cov[1, 1])
    if se == 0:
        return Trend(slope, slope, slope, intercept, r2, 0.0, n)
    half = t_half(conf, n - 2, se)
    p = float(2 * _scipy_stats().t.sf(abs(slope) / se, n - 2))
    return Trend(slope, slope - half, slope + half, intercept, r2, p, n)


@dataclass(frozen=True)
class SignTest:
    positive: int
    negative: int
    p_value: float  # two-sided exact binomial, H0: either sign equally likely


def sign_test(deltas: Iterable[float]) -> SignTest:
    """Exact binomial test on the signs (zeros and nan dropped)."""
    d = [x for x in deltas if x == x and x != 0]
    pos = sum(x > 0 for x in d)
    neg = len(d) - pos
    p = float(_scipy_stats().binomtest(pos, len(d), 0.5).pvalue) if d else 1.0
    return SignTest(pos, neg, p)


def spend(alpha: float, look: int, planned: int | None = None) -> float:
    """The share of alpha spent at look k. With the number of looks known in advance (`planned`), alpha / planned
    at each of them (none beyond); else alpha * 6 / (pi^2 k^2). Either way the shares sum to at most alpha."""
    if planned:
        return alpha / planned if look <= planned else 0.0
    return alpha * 6 / (math.pi**2 * look**2)


@dataclass(frozen=True)
class SignState:
    look: int
    step: int
    delta: float  # mean over the seeds at this look
    lo: float  # t interval over seeds at level 1 - spend(alpha, look); nan with fewer than 2 seeds
    hi: float
    n: int  # seeds (pairs) at this look
    sign: int  # +1 / -1 when this look establishes a sign, else 0
    established_at: int | None  # first step of the current run of looks with this same sign; None when sign is 0


def seed_sign_look(deltas: Sequence[float] | np.ndarray, look: int, alpha: float, planned: int | None = None
                   ) -> tuple[float, float, float, int]:
    """(mean, lo, hi, sign) at one look from the deltas of a cell's seeds at that step."""
    d = np.asarray(deltas, dtype=float)
    m = float(d.mean()) if len(d) else float("nan")
    a = spend(alpha, look, planned)
    if len(d) < 2 or a <= 0:
        return m, float("nan"), float("nan"), 0
    half = t_half(1 - a, len(d) - 1, float(d.std(ddof=1)) / math.sqrt(len(d)))
    lo, hi = m - half, m + half
    return m, lo, hi, 1 if lo > 0 else -1 if hi < 0 else 0


def seed_sign_sequence(looks: Iterable[tuple[int, Sequence[float]]], alpha: float = 0.05,
                       planned: int | None = None) -> list[SignState]:
    """The sequential test over a cell's looks (step, deltas of its seeds at that step), in step order, spending
    alpha over `planned` looks when their number is known (see `spend`). The gap moves while the models train (it
    can change sign), so each look states the sign at that step; `established_at` says since when it held."""
    out: list[SignState] = []
    since: int | None = None
    for k, (step, deltas) in enumerate(looks, start=1):
        m, lo, hi, sign = seed_sign_look(deltas, k, alpha, planned)
        if not sign:
            since = None
        elif not out or out[-1].sign != sign:
            since = step
        out.append(SignState(k, step, m, lo, hi, len(deltas), sign, since))
    return out
