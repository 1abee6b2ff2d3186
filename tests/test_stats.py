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


def test_weighted_fit_trusts_precise_points():
    x = [1, 10, 100, 1000]
    y = [0.0, 0.1, 0.2, 5.0]  # the last point is wild and imprecise
    plain = stats.fit_trend(x, y)
    weighted = stats.fit_trend(x, y, weights=[1e4, 1e4, 1e4, 1e-4])
    assert weighted.slope == pytest.approx(0.1, abs=1e-3) and plain.slope > 1


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


def test_spending_sums_to_alpha():
    assert sum(stats.spend(0.05, k) for k in range(1, 200000)) == pytest.approx(0.05, rel=1e-4)


def test_sequential_sign_test_holds_its_error_rate_under_the_null():
    """No true gap, 20 looks at correlated evaluations (the models drift, the windows stay): a sign must be
    declared in at most alpha of the runs."""
    rng = np.random.default_rng(3)
    alpha, reps, looks = 0.1, 400, 20
    false = 0
    for _ in range(reps):
        base = 1.0 + 0.2 * rng.standard_normal(256)
        drift = np.zeros(256)
        seq = []
        for k in range(looks):
            drift = 0.8 * drift + 0.05 * rng.standard_normal(256)  # correlated across looks, mean zero
            seq.append(((k + 1) * 100, base, base + drift))
        false += any(s.sign for s in stats.sign_sequence(seq, alpha))  # any look that declared a sign
    # the union bound is conservative: the rate is well below alpha, and must not exceed it
    assert false / reps <= alpha, false / reps


def test_sequential_sign_test_finds_a_real_gap_and_its_sign():
    rng = np.random.default_rng(5)
    seq = []
    for k in range(10):
        fw, bw = pair(rng, 512, -0.03 * (k + 1) / 10)  # a backward arrow that grows while training
        seq.append(((k + 1) * 50, fw, bw))
    states = stats.sign_sequence(seq, alpha=0.05)
    assert states[-1].sign == -1 and states[-1].established_at is not None
    first = next(s for s in states if s.sign)
    assert first.step == states[-1].established_at and first.hi < 0
    assert all(s.lo <= s.delta <= s.hi for s in states)


def test_a_gap_that_changes_sign_while_training_is_reported_as_it_is_at_each_look():
    rng = np.random.default_rng(9)
    gaps = [-0.05, -0.05, 0.0, 0.05, 0.05]
    seq = [((k + 1) * 10, *pair(rng, 1000, g)) for k, g in enumerate(gaps)]
    states = stats.sign_sequence(seq, alpha=0.05)
    assert [s.sign for s in states] == [-1, -1, 0, 1, 1]
    assert [s.established_at for s in states] == [10, 10, None, 40, 40]
