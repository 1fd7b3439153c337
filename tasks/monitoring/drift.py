"""Drift of a scoring day against the champion's training window: PSI, KS, chi-square, severity.

Plain typed functions; decisions use effect sizes only (PSI, KS statistic) against the thresholds
in settings, and p-values are reported beside them. With a million rows a p-value flags any
difference at all, and whylogs' sketch-based KS p-values are not stable (whylogs#684), so no
whylogs sketch is read here.

**Reference** (:func:`~tasks.monitoring.reference.build_reference`, saved per model version by :func:`~tasks.monitoring.reference.save_reference`)::

    $CHURN_HOME/monitoring/reference/v{version}/
      bins.json            per feature: kind, bin edges / categories, reference rows per bin
      sample.parquet       a seeded uniform sample (<= max_rows rows) of the numeric features
      prediction.parquet   a sample of the reference predicted probabilities
      profile.bin          optional whylogs profile of the window (tasks.monitoring.profiles)

**Bins.** A numeric feature gets up to ``bins`` (10) bins on the reference quantiles, right-closed:
``(-inf, e1], (e1, e2], ..., (ek, +inf)`` with edges that are reference values (quantile method
``inverted_cdf``), deduplicated. A value that holds at least one bin's worth of the reference
(a repeated quantile: the zeros of ``charge_change_90d``, the 30s of ``active_days_30d``) gets a
bin of its own, ``= v``, by adding the float just below it as an edge, so a point mass never
shares a bin with its neighbours. Nulls (and NaN) are a bin of their own, last. A categorical
feature has one bin per reference category (sorted), then ``__unseen__`` (categories the
reference never had, reference share 0) and ``__null__``. The reference shares are counted over
the whole frame given to :func:`~tasks.monitoring.reference.build_reference`; the edges come from its sample.

**PSI** ``= sum((c - r) * ln(c / r))`` over bins of current (c) and reference (r) shares; a share
below :data:`PSI_EPSILON` (1e-4) counts as 1e-4, on both sides. Without the floor one empty bin
makes PSI infinite; with it, a bin empty in the reference that holds 1% of the day adds
``(0.01 - 0.0001) * ln(100) = 0.046``, a bin holding 5% adds 0.31 (an alert by itself).

**KS** (numeric features and the prediction) is scipy's two-sample statistic between the
reference sample and the day's non-null values. Days above ``ks_max_rows`` (200,000) rows are
compared on a seeded uniform sample of that many rows (drawn with replacement, nulls then
dropped). Error bound (Dvoretzky–Kiefer–Wolfowitz): each sample's ECDF is within
``sqrt(ln(2 / alpha) / (2 n))`` of the full data's everywhere with probability ``1 - alpha``;
with 200,000 rows on both sides and alpha = 1e-3 the statistic is within 0.009 of the full-day
statistic against the full window, a tenth of ``drift_ks_warn``. Nulls take no part in KS; a
change in the null share shows in PSI's null bin.

**Chi-square** (categorical features): scipy's ``chi2_contingency`` on the 2 x k table of
reference and current rows per bin (no continuity correction), bins empty on both sides left
out; unseen categories and nulls are bins like the others.

**Levels per row** (feature or ``prediction``): ``alert`` when PSI >= ``drift_psi_alert`` or (not
categorical) KS >= ``drift_ks_alert``; ``warn`` likewise with the ``*_warn`` thresholds; else
``none``.

**Severity of the day** (:func:`day_severity`): ``retrain`` when at least
``drift_retrain_features`` features alert, or the prediction row alerts; ``alert`` when one
feature alerts; ``warn`` when any row warns; else ``none``. The features that made the level are
listed, the most drifted first (largest ratio of PSI or KS to its alert threshold).

**Calibration** (simulator, champion trained at day 210, reference = its 90-day window; 20,000
subscribers seed 7 and 10,000 seed 11; ``churn_model_v1`` and ``v2``). Baseline, 78 scoring days:
every feature's KS stays below 0.04 and PSI below 0.01 except ``tenure_days``, which drifts
steadily as the base ages away from the window (KS 0.04 on day 1, +0.0005 a day, 0.08-0.09 on
day 78; PSI 0.02-0.06); no weekly or billing-cycle oscillation is visible (bills are staggered by
signup day). ``price_shock``, first scoring day: ``charge_change_90d`` (PSI 0.73-0.76, KS 0.28),
``plan_changes_90d`` (0.61, 0.28), ``charge_to_list_ratio`` (0.24, KS 0.19). ``usage_shift``,
first scoring day (one shifted day in the 7-day windows): ``data_ratio_7d_baseline`` KS
0.137-0.147 and ``data_trend_7d_30d`` KS 0.130-0.136 (PSI ~0.1), twice that a day later. So a
KS alert at 0.12 (not 0.20) alerts on the first scoring day of both shifts, and baseline stays
alert-free for ~4 months after training (tenure reaches 0.12 around day 130-155).

The reference and its bins are :mod:`tasks.monitoring.reference`; the history of days is
:mod:`tasks.monitoring.drift_history`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats

from tasks.core.settings import Settings
from tasks.monitoring.reference import (
    CATEGORICAL,
    PREDICTION,
    DriftError,
    FeatureReference,
    Reference,
    as_floats,
    bin_counts,
    category_counts,
)

LEVELS = ("none", "warn", "alert")
SEVERITIES = ("none", "warn", "alert", "retrain")

PSI_EPSILON = 1e-4
KS_MAX_ROWS = 200_000
KS_EXACT_ROWS = 10_000

DRIFT_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("test", pa.string(), nullable=False),
        pa.field("statistic", pa.float64()),
        pa.field("p_value", pa.float64()),
        pa.field("psi", pa.float64(), nullable=False),
        pa.field("level", pa.string(), nullable=False),
        pa.field("reference_rows", pa.int64(), nullable=False),
        pa.field("current_rows", pa.int64(), nullable=False),
        pa.field("reference_null_share", pa.float64(), nullable=False),
        pa.field("current_null_share", pa.float64(), nullable=False),
        pa.field("bins", pa.list_(pa.string()), nullable=False),
        pa.field("reference_share", pa.list_(pa.float64()), nullable=False),
        pa.field("current_share", pa.list_(pa.float64()), nullable=False),
    ]
)


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class StatResult:
    """A test's statistic and p-value (NaN when a side has nothing to test)."""

    statistic: float
    p_value: float


def psi(
    ref_props: Sequence[float], cur_props: Sequence[float], epsilon: float = PSI_EPSILON
) -> float:
    """Population stability index of two share vectors over the same bins.

    Shares below ``epsilon`` count as ``epsilon`` (both sides), so an empty bin gives a finite
    value; identical shares give 0.
    """
    r = np.asarray(ref_props, dtype=np.float64)
    c = np.asarray(cur_props, dtype=np.float64)
    if r.shape != c.shape:
        raise ValueError(f"share vectors differ in length: {len(r)} reference, {len(c)} current")
    r, c = np.maximum(r, epsilon), np.maximum(c, epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def ks(ref: np.ndarray, cur: np.ndarray) -> StatResult:
    """Two-sample Kolmogorov–Smirnov (scipy) on the non-null values of both sides."""
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(cur, dtype=np.float64)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        return StatResult(math.nan, math.nan)
    # scipy's "auto" computes the exact p-value up to 10,000 rows a side; beyond, the
    # asymptotic one is as good and far cheaper to compute.
    method = "exact" if max(len(a), len(b)) <= KS_EXACT_ROWS else "asymp"
    result = stats.ks_2samp(a, b, method=method)
    return StatResult(float(result.statistic), float(result.pvalue))


def chi_square(ref_counts: Sequence[int], cur_counts: Sequence[int]) -> StatResult:
    """Chi-square test of homogeneity on the 2 x k table of rows per bin (no continuity correction).

    Bins empty on both sides are left out; fewer than two bins left (or an empty side) gives
    statistic 0 and p-value 1: there is nothing that could differ.
    """
    table = np.array([ref_counts, cur_counts], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return StatResult(0.0, 1.0)
    statistic, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    return StatResult(float(statistic), float(p_value))


# ----------------------------------------------------------------------------- drift of a day


def feature_drift(
    reference: Reference,
    current_frame: pa.Table,
    current_probabilities: np.ndarray | None,
    settings: Settings,
    *,
    ks_max_rows: int = KS_MAX_ROWS,
    seed: int = 0,
) -> pa.Table:
    """Drift of one day against ``reference``: one row per feature, then ``prediction``.

    Grain: one row per monitored feature in reference order, plus one row ``prediction`` when
    the reference has predictions and ``current_probabilities`` is given (see
    :data:`DRIFT_SCHEMA`). PSI is counted over every row of the day; KS on at most
    ``ks_max_rows`` sampled rows (seeded by ``seed``).

    Raises:
        DriftError: the day lacks a feature of the reference, or has no rows.
    """
    missing = [n for n in reference.names if n not in current_frame.column_names]
    if missing:
        raise DriftError(f"the day's frame lacks feature(s) {', '.join(missing)}")
    if current_frame.num_rows == 0:
        raise DriftError("the day's frame has no rows: there is nothing to compare")
    rng = np.random.default_rng(seed)
    picked = _ks_rows(rng, current_frame.num_rows, ks_max_rows)
    rows = []
    for ref in reference.features:
        column = current_frame.column(ref.name)
        if ref.kind == CATEGORICAL:
            rows.append(_categorical_row(ref, column, settings))
        else:
            values = as_floats(column)
            rows.append(
                _numeric_row(
                    ref,
                    values,
                    as_floats(reference.sample.column(ref.name)),
                    picked,
                    settings,
                )
            )
    if reference.prediction is not None and current_probabilities is not None:
        p = np.asarray(current_probabilities, dtype=np.float64)
        if len(p):
            prediction_rows = _ks_rows(rng, len(p), ks_max_rows)
            rows.append(
                _numeric_row(
                    reference.prediction, p, reference.prediction_sample, prediction_rows, settings
                )
            )
    return pa.Table.from_pylist(rows, schema=DRIFT_SCHEMA)


def _ks_rows(rng: np.random.Generator, rows: int, max_rows: int) -> np.ndarray | None:
    """Row indices of the day's KS sample (iid, with replacement), or None for every row."""
    if rows <= max_rows:
        return None
    return rng.integers(0, rows, size=max_rows)


def _numeric_row(
    ref: FeatureReference,
    values: np.ndarray,
    ref_sample: np.ndarray,
    picked: np.ndarray | None,
    settings: Settings,
) -> dict[str, Any]:
    counts = bin_counts(values, ref.edges)
    shares = counts / counts.sum()
    value = psi(ref.shares, shares)
    test = ks(ref_sample, values[picked] if picked is not None else values)
    return _row(ref, "ks", test, value, counts, shares, settings)


def _categorical_row(
    ref: FeatureReference, column: pa.ChunkedArray, settings: Settings
) -> dict[str, Any]:
    found = category_counts(column)
    nulls = found.pop(None, 0)
    known = set(ref.categories)
    unseen = sum(n for value, n in found.items() if value not in known)
    counts = np.array([*(found.get(c, 0) for c in ref.categories), unseen, nulls], dtype=np.int64)
    shares = counts / counts.sum()
    value = psi(ref.shares, shares)
    test = chi_square(ref.counts, counts)
    return _row(ref, "chi2", test, value, counts, shares, settings)


def _row(
    ref: FeatureReference,
    test_name: str,
    test: StatResult,
    psi_value: float,
    counts: np.ndarray,
    shares: np.ndarray,
    settings: Settings,
) -> dict[str, Any]:
    ref_shares = ref.shares
    return {
        "feature": ref.name,
        "kind": ref.kind,
        "test": test_name,
        "statistic": None if math.isnan(test.statistic) else test.statistic,
        "p_value": None if math.isnan(test.p_value) else test.p_value,
        "psi": psi_value,
        "level": drift_level(ref.kind, psi_value, test.statistic, settings),
        "reference_rows": ref.rows,
        "current_rows": int(counts.sum()),
        "reference_null_share": float(ref_shares[-1]),
        "current_null_share": float(shares[-1]),
        "bins": list(ref.bins),
        "reference_share": [float(s) for s in ref_shares],
        "current_share": [float(s) for s in shares],
    }


def drift_level(kind: str, psi_value: float, ks_statistic: float | None, settings: Settings) -> str:
    """``alert`` / ``warn`` / ``none`` from PSI and (numeric, prediction) the KS statistic."""
    use_ks = kind != CATEGORICAL and ks_statistic is not None and not math.isnan(ks_statistic)
    ks_value = ks_statistic if use_ks else -math.inf
    if psi_value >= settings.drift_psi_alert or ks_value >= settings.drift_ks_alert:
        return "alert"
    if psi_value >= settings.drift_psi_warn or ks_value >= settings.drift_ks_warn:
        return "warn"
    return "none"


# ----------------------------------------------------------------------------- severity


@dataclass(frozen=True)
class Severity:
    """The day's verdict: ``level`` (none / warn / alert / retrain) and the rows that made it."""

    level: str
    features: tuple[str, ...] = ()
    """Features (and ``prediction``) behind the level, most drifted first."""
    reason: str = ""

    @property
    def retrain(self) -> bool:
        return self.level == "retrain"

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "features": list(self.features), "reason": self.reason}


def day_severity(drift_table: pa.Table, settings: Settings) -> Severity:
    """The day's severity from its drift table (rule in the module docstring)."""
    rows = drift_table.to_pylist()

    def strength(row: dict[str, Any]) -> float:
        ratios = [row["psi"] / settings.drift_psi_alert]
        if row["kind"] != CATEGORICAL and row["statistic"] is not None:
            ratios.append(row["statistic"] / settings.drift_ks_alert)
        return max(ratios)

    ranked = sorted(rows, key=strength, reverse=True)
    alerting = [r for r in ranked if r["level"] == "alert" and r["kind"] != PREDICTION]
    prediction = [r for r in ranked if r["level"] == "alert" and r["kind"] == PREDICTION]
    warning = [r for r in ranked if r["level"] == "warn"]

    def named(selected: list[dict[str, Any]]) -> str:
        return ", ".join(_describe(r) for r in selected)

    need = settings.drift_retrain_features
    if len(alerting) >= need or prediction:
        why = []
        if len(alerting) >= need:
            why.append(f"{len(alerting)} feature(s) alert (retrain from {need}): {named(alerting)}")
        elif alerting:
            why.append(f"{len(alerting)} feature(s) alert: {named(alerting)}")
        if prediction:
            why.append(f"the prediction distribution shifted: {named(prediction)}")
        features = tuple(r["feature"] for r in alerting + prediction)
        return Severity("retrain", features, "; ".join(why))
    if alerting:
        return Severity(
            "alert",
            tuple(r["feature"] for r in alerting),
            f"{len(alerting)} feature(s) alert: {named(alerting)}",
        )
    if warning:
        return Severity(
            "warn",
            tuple(r["feature"] for r in warning),
            f"{len(warning)} row(s) warn: {named(warning)}",
        )
    return Severity("none", (), "no feature drifted beyond the warning thresholds")


def _describe(row: dict[str, Any]) -> str:
    parts = [f"PSI {row['psi']:.3f}"]
    if row["kind"] != CATEGORICAL and row["statistic"] is not None:
        parts.append(f"KS {row['statistic']:.3f}")
    return f"{row['feature']} ({', '.join(parts)})"
