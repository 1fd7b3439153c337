"""Drift of a scoring day against the champion's training window: PSI, KS, chi-square, severity, history.

Plain typed functions; decisions use effect sizes only (PSI, KS statistic) against the thresholds
in settings, and p-values are reported beside them. With a million rows a p-value flags any
difference at all, and whylogs' sketch-based KS p-values are not stable (whylogs#684), so no
whylogs sketch is read here.

**Reference** (:func:`build_reference`, saved per model version by :func:`save_reference`)::

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
the whole frame given to :func:`build_reference`; the edges come from its sample.

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
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import stats

from tasks.core.errors import ChurnError
from tasks.core.files import atomic_dir, write_parquet_atomic
from tasks.core.settings import Settings

if TYPE_CHECKING:
    from tasks.monitoring.profiles import ProfileHandle

logger = logging.getLogger(__name__)

NUMERIC, CATEGORICAL, PREDICTION = "numeric", "categorical", "prediction"
PREDICTION_NAME = "prediction"
"""The row of the drift table that compares predicted probabilities."""
NULL_BIN, UNSEEN_BIN = "__null__", "__unseen__"
LEVELS = ("none", "warn", "alert")
SEVERITIES = ("none", "warn", "alert", "retrain")

PSI_EPSILON = 1e-4
"""Floor of a bin's share in PSI (see the module docstring)."""
DEFAULT_BINS = 10
KS_MAX_ROWS = 200_000
"""Rows of the day KS compares at most (see the module docstring for the bound)."""
KS_EXACT_ROWS = 10_000
"""Up to this many rows a side, KS p-values are exact (scipy); beyond, asymptotic."""
REFERENCE_FORMAT = 1

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
"""One row per feature, in reference order, then one for ``prediction`` (when both sides have
predictions). ``test`` is ``ks`` (numeric, prediction) or ``chi2`` (categorical), ``statistic``
and ``p_value`` its result (null when a side has no non-null value); ``bins`` and the shares are
what PSI compared (the report's charts draw them)."""

HISTORY_KEYS = pa.schema(
    [
        pa.field("score_date", pa.date32(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("severity_features", pa.list_(pa.string()), nullable=False),
    ]
)
HISTORY_SCHEMA = pa.schema([*HISTORY_KEYS, *DRIFT_SCHEMA])
"""The drift table of each day with the day's keys and severity in front (one file per day)."""


class DriftError(ChurnError):
    """Drift cannot be computed as asked (missing feature, empty day, bad reference)."""


class ReferenceNotFound(DriftError):
    """No drift reference was saved for a model version."""


# ----------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class FeatureReference:
    """One feature's reference distribution: bins and reference rows per bin.

    ``edges`` (numeric and prediction only) are the interior right-closed edges; ``bins`` has
    ``len(edges) + 1`` value bins then ``__null__`` (numeric), or the categories, ``__unseen__``
    and ``__null__`` (categorical).
    """

    name: str
    kind: str
    bins: tuple[str, ...]
    counts: tuple[int, ...]
    edges: tuple[float, ...] = ()

    @property
    def rows(self) -> int:
        return int(sum(self.counts))

    @property
    def shares(self) -> np.ndarray:
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / counts.sum() if counts.sum() else counts

    @property
    def categories(self) -> tuple[str, ...]:
        """The reference categories (categorical features only)."""
        return self.bins[:-2] if self.kind == CATEGORICAL else ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "bins": list(self.bins),
            "counts": list(self.counts),
            "edges": list(self.edges),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureReference:
        return cls(
            name=data["name"],
            kind=data["kind"],
            bins=tuple(data["bins"]),
            counts=tuple(int(c) for c in data["counts"]),
            edges=tuple(float(e) for e in data["edges"]),
        )


@dataclass(frozen=True, eq=False)
class Reference:
    """What a model version's days are compared with: its training window, binned and sampled.

    ``sample`` holds the numeric features' values of up to ``max_rows`` sampled rows (nulls
    kept, types as in the frame), ``prediction_sample`` up to as many reference probabilities; ``rows`` is the size of
    the frame the bins were counted on.
    """

    features: tuple[FeatureReference, ...]
    sample: pa.Table
    prediction: FeatureReference | None = None
    prediction_sample: np.ndarray = field(default_factory=lambda: np.empty(0))
    rows: int = 0
    seed: int = 0
    created_at: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> FeatureReference:
        for ref in self.features:
            if ref.name == name:
                return ref
        if name == PREDICTION_NAME and self.prediction is not None:
            return self.prediction
        raise KeyError(f"no reference for {name!r}; the reference has {', '.join(self.names)}")


def build_reference(
    frame: pa.Table,
    features: Sequence[str],
    categorical: Sequence[str],
    probabilities: np.ndarray | None = None,
    max_rows: int = 200_000,
    seed: int = 0,
    bins: int = DEFAULT_BINS,
) -> Reference:
    """The reference of a training window: bins and shares per feature, samples for KS.

    Args:
        frame: the window's features (e.g. the training frame), any number of rows.
        features: the model inputs to monitor, in order.
        categorical: which of them are categorical (the others are numeric).
        probabilities: the model's probabilities on the window (any length; None: no
            prediction reference).
        max_rows: rows kept in the samples (``settings.drift_reference_rows``).
        seed: seed of the samples.
        bins: quantile bins per numeric feature (fewer where values repeat).

    Raises:
        DriftError: a feature is missing from the frame, the frame is empty, or a categorical
            name is not among the features.
    """
    missing = [f for f in features if f not in frame.column_names]
    if missing:
        raise DriftError(f"the reference frame lacks feature(s) {', '.join(missing)}")
    stray = [c for c in categorical if c not in features]
    if stray:
        raise DriftError(f"categorical feature(s) {', '.join(stray)} are not among the features")
    if frame.num_rows == 0:
        raise DriftError("the reference frame is empty: nothing to compare days with")
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    rng = np.random.default_rng(seed)
    picked = _sample_rows(rng, frame.num_rows, max_rows)
    numeric = [f for f in features if f not in set(categorical)]
    sample = frame.select(numeric).take(picked) if picked is not None else frame.select(numeric)
    sample = sample.combine_chunks().replace_schema_metadata(None)
    references = []
    for name in features:
        if name in categorical:
            references.append(_categorical_reference(name, frame.column(name)))
        else:
            values = _floats(frame.column(name))
            edges = quantile_edges(_floats(sample.column(name)), bins)
            references.append(_numeric_reference(name, NUMERIC, values, edges))
    prediction, prediction_sample = None, np.empty(0)
    if probabilities is not None:
        p = np.asarray(probabilities, dtype=np.float64)
        if len(p) == 0:
            raise DriftError("no reference probabilities: pass None to skip the prediction row")
        chosen = _sample_rows(rng, len(p), max_rows)
        prediction_sample = p[chosen] if chosen is not None else p.copy()
        edges = quantile_edges(prediction_sample, bins)
        prediction = _numeric_reference(PREDICTION_NAME, PREDICTION, p, edges)
    return Reference(
        features=tuple(references),
        sample=sample,
        prediction=prediction,
        prediction_sample=prediction_sample,
        rows=frame.num_rows,
        seed=seed,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[float, ...]:
    """Interior right-closed bin edges on the quantiles of ``values`` (NaN ignored).

    Edges are values of the data (``inverted_cdf``), deduplicated; a value that is the quantile
    at two or more cut points (a point mass of at least one bin) also gets the float just below
    it as an edge, so it forms a bin ``= v`` of its own (unless no reference value lies between
    it and the edge below, where its bin holds it alone already). No non-null value: no edge.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return ()
    cuts = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    quantiles = np.quantile(values, cuts, method="inverted_cdf")
    unique, repeats = np.unique(quantiles, return_counts=True)
    edges = set(unique.tolist())
    below = -np.inf
    for value, count in zip(unique.tolist(), repeats.tolist(), strict=True):
        # Split (below, value] into (below, value) and {value} only where the reference has
        # values strictly in between: otherwise the bin already holds the point mass alone.
        if count > 1 and np.any((values > below) & (values < value)):
            edges.add(float(np.nextafter(value, -np.inf)))
        below = value
    return tuple(sorted(edges))


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Rows per bin of :func:`quantile_edges` (right-closed), then the nulls (NaN) as the last bin.

    Counted as ``count(values <= edge)`` per edge and differenced: with ~10 edges, one streaming
    comparison per edge is several times faster than a binary search per value (searchsorted)
    on a 10M-row day. NaN compares false with everything, so it falls out of every bin.
    """
    values = np.asarray(values, dtype=np.float64)
    nulls = int(np.count_nonzero(np.isnan(values)))
    present = len(values) - nulls
    at_most = [int(np.count_nonzero(values <= edge)) for edge in edges]
    counts = np.diff(np.array([0, *at_most, present], dtype=np.int64))
    return np.append(counts, nulls)


def bin_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """Readable labels of the bins of ``edges``: ``<= a``, ``(a, b]``, ``= v``, ``> z``, then null.

    Around a point-mass bin ``= v`` the neighbours read ``< v`` / ``(a, v)`` and ``(v, b]``.
    """
    if not edges:
        return ("all values", NULL_BIN)
    e = [float(x) for x in edges]
    k = len(e)

    def point(i: int) -> bool:  # bin i is (e[i-1], e[i]] with e[i-1] the float just below e[i]
        return 1 <= i <= k - 1 and float(np.nextafter(e[i], -np.inf)) == e[i - 1]

    labels = []
    for i in range(k + 1):
        if point(i):
            labels.append(f"= {_number(e[i])}")
        elif i == k:
            labels.append(f"> {_number(e[k - 1])}")
        else:
            upper = f"{_number(e[i + 1])})" if point(i + 1) else f"{_number(e[i])}]"
            if i == 0:
                labels.append(f"< {upper[:-1]}" if point(1) else f"<= {upper[:-1]}")
            else:
                labels.append(f"({_number(e[i - 1])}, {upper}")
    labels.append(NULL_BIN)
    return tuple(labels)


def _numeric_reference(
    name: str, kind: str, values: np.ndarray, edges: tuple[float, ...]
) -> FeatureReference:
    counts = bin_counts(values, edges)
    return FeatureReference(
        name=name,
        kind=kind,
        bins=bin_labels(edges),
        counts=tuple(int(c) for c in counts),
        edges=edges,
    )


def _categorical_reference(name: str, column: pa.ChunkedArray) -> FeatureReference:
    counts = _category_counts(column)
    nulls = counts.pop(None, 0)
    categories = sorted(counts)
    return FeatureReference(
        name=name,
        kind=CATEGORICAL,
        bins=(*categories, UNSEEN_BIN, NULL_BIN),
        counts=(*(counts[c] for c in categories), 0, nulls),
    )


def _category_counts(column: pa.ChunkedArray) -> dict[str | None, int]:
    """Rows per value (None: nulls) of a string-like column."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    counts: dict[str | None, int] = {}
    nulls = column.null_count
    if nulls:
        counts[None] = nulls
    if nulls < len(column):
        found = pc.value_counts(column.drop_null())
        for value, count in zip(
            found.field("values").to_pylist(), found.field("counts").to_pylist(), strict=True
        ):
            counts[value] = int(count)
    return counts


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric (or boolean) column as float64 with NaN for nulls."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (
        pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
        or pa.types.is_boolean(column.type)
        or pa.types.is_null(column.type)
    ):
        raise DriftError(f"numeric drift needs a numeric column, found {column.type}")
    return np.asarray(
        pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
    )


def _sample_rows(rng: np.random.Generator, rows: int, max_rows: int) -> np.ndarray | None:
    """Sorted row indices of a uniform sample without replacement, or None when all rows fit."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if rows <= max_rows:
        return None
    return np.sort(rng.choice(rows, size=max_rows, replace=False))


def _number(value: float) -> str:
    return f"{value:.4g}"


# ----------------------------------------------------------------------------- save / load


def reference_dir(settings: Settings, model_version: int) -> Path:
    """``$CHURN_HOME/monitoring/reference/v{version}``."""
    return settings.monitoring_dir / "reference" / f"v{int(model_version)}"


def reference_profile_path(settings: Settings, model_version: int) -> Path:
    """The whylogs profile saved beside a version's reference (if one was given)."""
    return reference_dir(settings, model_version) / "profile.bin"


def save_reference(
    settings: Settings,
    model_version: int,
    reference: Reference,
    profile: ProfileHandle | None = None,
) -> Path:
    """Write a model version's reference (and its whylogs profile) atomically; replaces an old one."""
    if int(model_version) < 1:
        raise ValueError(f"model_version must be a positive integer, got {model_version}")
    target = reference_dir(settings, model_version)
    meta = {
        "format": REFERENCE_FORMAT,
        "model_version": int(model_version),
        "rows": reference.rows,
        "seed": reference.seed,
        "created_at": reference.created_at,
        "features": [f.to_dict() for f in reference.features],
        "prediction": reference.prediction.to_dict() if reference.prediction else None,
    }
    with atomic_dir(target) as tmp:
        (tmp / "bins.json").write_text(json.dumps(meta, indent=1) + "\n")
        pq.write_table(reference.sample, tmp / "sample.parquet", compression="zstd")
        pq.write_table(
            pa.table({PREDICTION_NAME: pa.array(reference.prediction_sample, pa.float64())}),
            tmp / "prediction.parquet",
            compression="zstd",
        )
        if profile is not None:
            from tasks.monitoring.profiles import write_profile

            write_profile(profile, tmp / "profile.bin")
    logger.info("drift reference of version %s saved to %s", model_version, target)
    return target


def load_reference(settings: Settings, model_version: int) -> Reference:
    """The reference saved for ``model_version``.

    Raises:
        ReferenceNotFound: nothing was saved for that version (or the folder is incomplete).
    """
    directory = reference_dir(settings, model_version)
    needed = [directory / n for n in ("bins.json", "sample.parquet", "prediction.parquet")]
    absent = [p.name for p in needed if not p.is_file()]
    if absent:
        saved = (
            sorted(p.name for p in directory.parent.glob("v*")) if directory.parent.is_dir() else []
        )
        raise ReferenceNotFound(
            f"no drift reference for model version {model_version} at {directory} "
            f"(missing {', '.join(absent)}); one is saved when a version is trained "
            f"(tasks.monitoring.drift.save_reference). Saved versions: {', '.join(saved) or 'none'}"
        )
    meta = json.loads(needed[0].read_text())
    if meta.get("format") != REFERENCE_FORMAT:
        raise DriftError(
            f"reference of version {model_version} has format {meta.get('format')!r}; "
            f"this code reads format {REFERENCE_FORMAT}"
        )
    prediction = pq.read_table(needed[2]).column(PREDICTION_NAME)
    return Reference(
        features=tuple(FeatureReference.from_dict(f) for f in meta["features"]),
        sample=pq.read_table(needed[1]),
        prediction=FeatureReference.from_dict(meta["prediction"]) if meta["prediction"] else None,
        prediction_sample=prediction.to_numpy().astype(np.float64),
        rows=int(meta["rows"]),
        seed=int(meta["seed"]),
        created_at=str(meta.get("created_at", "")),
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
            values = _floats(column)
            rows.append(
                _numeric_row(
                    ref,
                    values,
                    _floats(reference.sample.column(ref.name)),
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
    found = _category_counts(column)
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


# ----------------------------------------------------------------------------- history


def history_dir(settings: Settings) -> Path:
    """``$CHURN_HOME/monitoring/drift``: one Parquet file per score date."""
    return settings.monitoring_dir / "drift"


def append_history(
    settings: Settings,
    score_date: date,
    model_version: int,
    drift_table: pa.Table,
    severity: Severity,
) -> Path:
    """Record the day's drift table and severity; a rerun of the same date replaces that day's file."""
    n = drift_table.num_rows
    keys = pa.table(
        {
            "score_date": pa.array([score_date] * n, pa.date32()),
            "model_version": pa.array([int(model_version)] * n, pa.int32()),
            "severity": pa.array([severity.level] * n, pa.string()),
            "severity_features": pa.array([list(severity.features)] * n, pa.list_(pa.string())),
        },
        schema=HISTORY_KEYS,
    )
    table = pa.Table.from_arrays(
        [*keys.columns, *drift_table.cast(DRIFT_SCHEMA).columns], schema=HISTORY_SCHEMA
    )
    path = history_dir(settings) / f"{score_date.isoformat()}.parquet"
    return write_parquet_atomic(table, path)


def read_history(
    settings: Settings, start: date | None = None, end: date | None = None
) -> pa.Table:
    """Every recorded day (or those in ``[start, end]``), oldest first, rows in drift-table order."""
    directory = history_dir(settings)
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    tables = []
    for path in files:
        day = date.fromisoformat(path.stem)
        if (start is None or day >= start) and (end is None or day <= end):
            tables.append(pq.read_table(path, schema=HISTORY_SCHEMA))
    if not tables:
        return HISTORY_SCHEMA.empty_table()
    return pa.concat_tables(tables)


DAY_HISTORY_SCHEMA = pa.schema(
    [
        ("score_date", pa.date32()),
        ("model_version", pa.int32()),
        ("severity", pa.string()),
        ("severity_features", pa.list_(pa.string())),
        ("alerts", pa.int64()),
        ("warnings", pa.int64()),
        ("max_psi_feature", pa.string()),
        ("max_psi", pa.float64()),
        ("max_ks_feature", pa.string()),
        ("max_ks", pa.float64()),
        ("prediction_psi", pa.float64()),
    ]
)


def history_by_day(history: pa.Table) -> pa.Table:
    """One row per day of :func:`read_history`'s table: severity, counts, largest PSI and KS."""
    out: dict[date, dict[str, Any]] = {}
    for row in history.to_pylist():
        day = out.setdefault(
            row["score_date"],
            {
                "score_date": row["score_date"],
                "model_version": row["model_version"],
                "severity": row["severity"],
                "severity_features": row["severity_features"],
                "alerts": 0,
                "warnings": 0,
                "max_psi": -1.0,
                "max_ks": -1.0,
                "max_psi_feature": None,
                "max_ks_feature": None,
                "prediction_psi": None,
            },
        )
        if row["kind"] == PREDICTION:
            day["prediction_psi"] = row["psi"]
            continue
        day["alerts"] += row["level"] == "alert"
        day["warnings"] += row["level"] == "warn"
        if row["psi"] > day["max_psi"]:
            day["max_psi"], day["max_psi_feature"] = row["psi"], row["feature"]
        if (
            row["test"] == "ks"
            and row["statistic"] is not None
            and row["statistic"] > day["max_ks"]
        ):
            day["max_ks"], day["max_ks_feature"] = row["statistic"], row["feature"]
    for day in out.values():
        day["max_psi"] = None if day["max_psi"] < 0 else day["max_psi"]
        day["max_ks"] = None if day["max_ks"] < 0 else day["max_ks"]
    return pa.Table.from_pylist([out[d] for d in sorted(out)], schema=DAY_HISTORY_SCHEMA)
