"""Fairness interval math: Wilson against published values, coverage, and the projected bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.training.fairness_intervals import (
    Interval,
    gap_interval,
    ratio_interval,
    wilson_interval,
    worse_gap,
    z_value,
)

Z95 = z_value(0.95)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (Wilson score).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0),
    ],
)
def test_wilson_matches_published_values(successes, trials, low, high) -> None:
    lo, hi = wilson_interval(successes, trials, Z95)
    assert (float(lo), float(hi)) == pytest.approx((low, high), abs=5e-5)


def test_wilson_is_elementwise_and_nan_without_trials() -> None:
    lo, hi = wilson_interval(np.array([0, 5, 0]), np.array([10, 10, 0]), Z95)
    assert lo[:2] == pytest.approx([0.0, 0.2366], abs=5e-5)
    assert hi[:2] == pytest.approx([0.2775, 0.7634], abs=5e-5)
    assert math.isnan(lo[2]) and math.isnan(hi[2])


@pytest.mark.parametrize(
    ("successes", "trials"),
    [(-1, 10), (11, 10), (3, -2)],
)
def test_wilson_refuses_impossible_counts(successes, trials) -> None:
    with pytest.raises(ValueError, match="0 <= successes <= trials"):
        wilson_interval(successes, trials, Z95)


def test_bonferroni_z_widens_with_the_number_of_intervals() -> None:
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_value(0.95, 5) == pytest.approx(2.575829, abs=1e-6)  # 0.05 / 5 = 0.01 two-sided
    assert z_value(0.95, 10) > z_value(0.95, 5)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_confidence_must_be_a_probability(confidence) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        z_value(confidence)


@pytest.mark.parametrize(
    ("trials", "rate"),
    [
        # A few dozen selections: the smallest groups the gate still judges.
        (200, 0.15),
        # The operating point at 1M subscribers: ~0.05% of a region's 400,000 rows selected.
        (400_000, 0.0005),
        # Few events in a small group, where the Wald interval fails badly.
        (300, 0.02),
    ],
)
def test_wilson_covers_close_to_its_nominal_level(trials, rate) -> None:
    rng = np.random.default_rng(11)
    draws = rng.binomial(trials, rate, size=20_000)
    lo, hi = wilson_interval(draws, np.full(len(draws), trials), Z95)
    coverage = float(np.mean((lo <= rate) & (rate <= hi)))
    assert 0.93 <= coverage <= 0.975, coverage


def test_simultaneous_ratio_and_gap_intervals_cover_at_least_the_confidence() -> None:
    # Five groups with different true selection rates (a true ratio of 0.6): how often do the
    # projected intervals of min/max and max-min contain the true values?
    rng = np.random.default_rng(5)
    rows = np.array([440_000, 400_000, 400_000, 360_000, 400_000])
    rates = np.array([0.0005, 0.0004, 0.0003, 0.0005, 0.00045])
    true_ratio, true_gap = rates.min() / rates.max(), rates.max() - rates.min()
    z = z_value(0.95, len(rows))
    hits_ratio = hits_gap = 0
    trials = 2_000
    for selected in rng.binomial(rows, rates, size=(trials, len(rows))):
        lo, hi = wilson_interval(selected, rows, z)
        ratio, gap = ratio_interval(lo, hi), gap_interval(lo, hi)
        hits_ratio += ratio.low <= true_ratio <= ratio.high
        hits_gap += gap.low <= true_gap <= gap.high
    assert hits_ratio / trials >= 0.95 and hits_gap / trials >= 0.95


def test_point_estimates_of_equal_groups_look_unequal_but_the_interval_reaches_one() -> None:
    # The noise that refused a fair candidate at 1M: five equal regions, ~200 selected each.
    rng = np.random.default_rng(2)
    rows = np.full(5, 400_000)
    selected = rng.binomial(rows, 0.0005, size=(500, 5))
    points = selected.min(axis=1) / selected.max(axis=1)
    highs = []
    for draw in selected:
        lo, hi = wilson_interval(draw, rows, z_value(0.95, 5))
        highs.append(ratio_interval(lo, hi).high)
    assert np.median(points) < 0.85  # the ratio of noisy tiny rates is typically far from 1 ...
    assert np.mean(np.array(highs) == 1.0) >= 0.95  # ... but nothing rules equal rates out


@pytest.mark.parametrize(
    ("lows", "highs", "ratio", "gap"),
    [
        # Overlapping intervals: the rates may be equal, so ratio up to 1 and gap down to 0.
        ([0.1, 0.2], [0.3, 0.4], Interval(0.25, 1.0), Interval(0.0, 0.3)),
        # Disjoint intervals: the ratio is at most 0.2 / 0.5 and the gap at least 0.3.
        ([0.1, 0.5], [0.2, 0.6], Interval(0.1 / 0.6, 0.4), Interval(0.3, 0.5)),
        # Nobody selected anywhere and nothing rules equality out: ratio up to 1.
        ([0.0, 0.0], [0.01, 0.02], Interval(0.0, 1.0), Interval(0.0, 0.02)),
    ],
)
def test_projected_bounds(lows, highs, ratio, gap) -> None:
    found_ratio = ratio_interval(np.array(lows), np.array(highs))
    found_gap = gap_interval(np.array(lows), np.array(highs))
    assert (found_ratio.low, found_ratio.high) == pytest.approx((ratio.low, ratio.high))
    assert (found_gap.low, found_gap.high) == pytest.approx((gap.low, gap.high))


def test_projected_bounds_contain_every_point_of_the_box() -> None:
    rng = np.random.default_rng(8)
    lows = rng.uniform(0.0, 0.3, 4)
    highs = lows + rng.uniform(0.0, 0.2, 4)
    ratio, gap = ratio_interval(lows, highs), gap_interval(lows, highs)
    points = rng.uniform(lows, highs, size=(5_000, 4))
    ratios = points.min(axis=1) / points.max(axis=1)
    gaps = points.max(axis=1) - points.min(axis=1)
    assert ratio.low <= ratios.min() and ratios.max() <= ratio.high
    assert gap.low <= gaps.min() and gaps.max() <= gap.high


def test_worse_gap_is_the_larger_of_the_two() -> None:
    assert worse_gap(Interval(0.1, 0.3), Interval(0.0, 0.5)) == Interval(0.1, 0.5)


@pytest.mark.parametrize(
    ("lows", "highs", "message"),
    [
        ([], [], "one \\(low, high\\) per group"),
        ([0.1, math.nan], [0.2, 0.3], "no interval"),
        ([0.3], [0.2], "0 <= low <= high <= 1"),
    ],
)
def test_bounds_refuse_bad_intervals(lows, highs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ratio_interval(np.array(lows), np.array(highs))
