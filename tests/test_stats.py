"""The report's statistics on synthetic numbers with known answers: interval coverage at the stated rate, slopes
recovered, the sign test's p-values, and the sequential sign test holding its error rate under repeated looks."""

import math

import numpy as np
import pytest

from aot_ray import stats


def pair(rng, n, gap, base=1.0, spread=0.2, noise=0.05):
    """Per-window losses of a pair whose population gap in mean loss is exactly `gap` nats."""
    fw = base + spread * rng.standard_normal(n)
    bw = fw + gap + noise * rng.standard_normal(n)
    return fw, bw


def test_delta_definition():
    assert stats.delta(1.0, 1.1) == pytest.approx(0.1 / 1.05)
    assert stats.delta(2.0, 2.0) == 0


def test_paired_bootstrap_covers_the_true_gap_at_the_stated_rate():
    rng = np.random.default_rng(1)
    true = stats.delta(1.0, 1.02)
    hits, widths = 0, []
    reps = 300
    for i in range(reps):
        fw, bw = pair(rng, 200, 0.02)
        ci = stats.paired_bootstrap(fw, bw, n_boot=800, conf=0.9, seed=i)
        hits += ci.lo <= true <= ci.hi
        widths.append(ci.hi - ci.lo)
    # 90% nominal; 300 draws give a binomial sd of 1.7 points
    assert 0.85 <= hits / reps <= 0.95, hits / reps
    # pairing matters: the interval reflects the 0.05 noise of the difference, not the 0.2 spread of the losses
    assert np.median(widths) < 0.02


def test_paired_bootstrap_rejects_unpaired_input():
    with pytest.raises(ValueError, match="one length"):
        stats.paired_bootstrap([1.0, 2.0], [1.0])


def test_mean_interval_is_a_t_interval():
    ci = stats.mean_interval([1.0, 2.0, 3.0], conf=0.95)
    assert ci.estimate == 2.0 and ci.hi - 2.0 == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert math.isnan(stats.mean_interval([1.0]).lo)


def test_fit_trend_recovers_a_known_slope_exactly_without_noise():
    x = [1e6, 1e7, 1e8, 1e9]
    y = [0.01 + 0.004 * math.log10(v) for v in x]
    t = stats.fit_trend(x, y)
    assert t.slope == pytest.approx(0.004) and t.intercept == pytest.approx(0.01) and t.r2 == pytest.approx(1.0)


def test_fit_trend_interval_covers_the_slope_at_the_stated_rate():
    rng = np.random.default_rng(7)
    x = np.array([5e6, 1.4e7, 2.2e7, 5.6e7, 1.6e8, 4e8])
    hits, reps = 0, 2000
    for _ in range(reps):
        y = -0.02 + 0.006 * np.log10(x) + 0.003 * rng.standard_normal(len(x))
        t = stats.fit_trend(x, y, conf=0.9)
        hits += t.slope_lo <= 0.006 <= t.slope_hi
    assert 0.88 <= hits / reps <= 0.92, hits / reps


def test_fit_trend_needs_usable_points():
    with pytest.raises(ValueError, match="x > 0"):
        stats.fit_trend([0, 1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        stats.fit_trend([5, 5], [1, 2])
    assert math.isnan(stats.fit_trend([1, 10], [0.0, 1.0]).slope_lo)  # two points: a slope, no interval


def test_sign_test_p_values():
    assert stats.sign_test([0.1] * 11).p_value == pytest.approx(2 * 0.5**11)  # all 11 languages agree
    t = stats.sign_test([0.1, -0.1, 0.2, float("nan"), 0.0])
    assert (t.positive, t.negative) == (2, 1) and t.p_value == pytest.approx(1.0)


def test_spending_over_planned_looks_sums_to_alpha_and_stops_there():
    assert sum(stats.spend(0.05, k, 13) for k in range(1, 14)) == pytest.approx(0.05)
    assert stats.spend(0.05, 14, 13) == 0.0


def test_spending_sums_to_alpha():
    assert sum(stats.spend(0.05, k) for k in range(1, 200000)) == pytest.approx(0.05, rel=1e-4)
