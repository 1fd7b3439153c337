"""Confidence intervals for fairness at the operating point, computed on group counts (DESIGN §6).

Rates. Each group's selection rate (selected / rows), true-positive rate (selected churners /
churners) and false-positive rate (selected non-churners / non-churners) gets a **Wilson score
interval**. At the operating point these rates are tiny (at 1M subscribers the team's 500 calls a
day select 0.05% of a group) and the counts behind them can be a few dozen: the Wald interval
``p ± z·sqrt(p(1-p)/n)`` collapses to zero width at 0 selected and under-covers near 0, while
Wilson's stays inside [0, 1], keeps close to its nominal coverage at such counts and is closed
form on the counts, so 1M rows cost no more than 1,000.

Disparities. The demographic-parity ratio is ``min / max`` of the groups' selection rates and
the equalized-odds difference is the larger of the TPR and FPR gaps ``max - min``: statistics
of the *extreme* groups, picked after looking. Their interval is the **projection of
simultaneous Wilson intervals**: every group's interval is widened by Bonferroni (level
``1 - (1 - confidence) / m`` for ``m`` rates), so that with probability at least ``confidence``
every true rate lies in its interval at once; the true ratio and difference then lie in the
bounds the intervals allow:

* ratio ``[min(lows) / max(highs), min(1, min(highs) / max(lows))]``;
* difference ``[max(0, max(lows) - min(highs)), max(highs) - min(lows)]``.

So the coverage is at least ``confidence`` whatever the number of groups and whichever pair
turns out extreme, deterministically (no random stream) and in microseconds on the group
counts. It is conservative, which is the side a refusal rule should err on: a disparity is
*credible* only when even the most favourable reading of the evidence is beyond the threshold.
A wide interval of a small group widens neither ``max(lows)`` nor ``min(highs)``, so small groups
do not cost the test its power against a disparity between large ones.

Not chosen: the percentile bootstrap of ``min / max`` starts from the observed extremes, which
overshoot the true ones (the max of noisy rates is biased up, the min down: the very noise that
refused a fair candidate at 1M), so its interval leans towards disparity, and it needs thousands
of seeded replicates; a delta-method interval of ``log(r_i / r_j)`` for the observed extreme pair
ignores that the pair was chosen for being extreme and leans on normality of counts near 30.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A closed interval ``[low, high]`` of a fairness measure at some confidence."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"[{self.low:.2f}, {self.high:.2f}]"

    def to_dict(self) -> dict[str, float]:
        return {"low": float(self.low), "high": float(self.high)}


def z_value(confidence: float, intervals: int = 1) -> float:
    """Two-sided normal quantile for ``intervals`` simultaneous intervals (Bonferroni).

    Raises:
        ValueError: ``confidence`` outside (0, 1) or ``intervals`` < 1.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    if intervals < 1:
        raise ValueError(f"at least one interval is needed, got {intervals}")
    alpha = (1.0 - confidence) / intervals
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def wilson_interval(
    successes: np.ndarray | float, trials: np.ndarray | float, z: float
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``successes / trials`` with normal quantile ``z``, elementwise.

    Where ``trials`` is 0 there is no measurement: the interval is NaN.

    Raises:
        ValueError: negative counts, or more successes than trials.
    """
    x = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    if (x < 0).any() or (n < 0).any() or (x > n).any():
        raise ValueError("Wilson interval needs 0 <= successes <= trials for every group")
    with np.errstate(invalid="ignore", divide="ignore"):
        z2 = z * z
        centre = (x + z2 / 2) / (n + z2)
        half = z / (n + z2) * np.sqrt(x * (n - x) / n + z2 / 4)
        low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    # At 0 (or all) successes the bound is exactly 0 (or 1); clip away float dust around it.
    low = np.where((x == 0) & (n > 0), 0.0, low)
    high = np.where((x == n) & (n > 0), 1.0, high)
    return low, high


def ratio_interval(lows: np.ndarray, highs: np.ndarray) -> Interval:
    """Bounds on ``min / max`` of rates known to lie in ``[lows, highs]`` (one pair per group).

    The upper bound is 1 when the intervals share a point (the rates may all be equal), and when
    every lower bound is 0 (nothing rules equal rates out).
    """
    lows, highs = np.asarray(lows, dtype=float), np.asarray(highs, dtype=float)
    _check_bounds(lows, highs)
    top_high, top_low = float(highs.max()), float(lows.max())
    low = float(lows.min()) / top_high if top_high > 0 else 0.0
    high = min(1.0, float(highs.min()) / top_low) if top_low > 0 else 1.0
    return Interval(low, high)


def gap_interval(lows: np.ndarray, highs: np.ndarray) -> Interval:
    """Bounds on ``max - min`` of rates known to lie in ``[lows, highs]`` (one pair per group)."""
    lows, highs = np.asarray(lows, dtype=float), np.asarray(highs, dtype=float)
    _check_bounds(lows, highs)
    return Interval(
        max(0.0, float(lows.max()) - float(highs.min())), float(highs.max()) - float(lows.min())
    )


def worse_gap(*gaps: Interval) -> Interval:
    """Bounds on the larger of several gaps (equalized odds: the worse of the TPR and FPR gaps)."""
    return Interval(max(g.low for g in gaps), max(g.high for g in gaps))


def _check_bounds(lows: np.ndarray, highs: np.ndarray) -> None:
    if len(lows) == 0 or len(lows) != len(highs):
        raise ValueError(
            f"need one (low, high) per group, got {len(lows)} lows, {len(highs)} highs"
        )
    if np.isnan(lows).any() or np.isnan(highs).any():
        raise ValueError("a group's rate has no interval (no rows behind it): it cannot be judged")
    if (lows > highs + 1e-12).any() or (lows < -1e-12).any() or (highs > 1 + 1e-12).any():
        raise ValueError("interval bounds must satisfy 0 <= low <= high <= 1 for every group")


def finite_or_none(value: float | None) -> float | None:
    """``None`` for a missing or NaN number (JSON and MLflow take no NaN), else a float."""
    if value is None or math.isnan(value):
        return None
    return float(value)
