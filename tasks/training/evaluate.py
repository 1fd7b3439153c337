"""Judge a model on the holdout: ranking, calibration, the retention team's top K, the AUC limits.

Plain functions over arrays (labels, probabilities, snapshot days), so the challenger and the
champion are measured the same way on the same rows. Curves come back as small DataFrames for a
later step to plot into MLflow.

Calibration error is the *expected calibration error over 10 equal-frequency bins*: rows sorted by
probability are cut into 10 bins of (nearly) equal count, and the error is the row-weighted mean
of ``|observed churn rate - mean probability|`` over the bins. Equal-frequency rather than
equal-width bins because at a 2.5% base rate nearly every probability falls below 0.1, so
equal-width bins would put almost all rows into the first bin and say nothing about the rest.

Two limits on a simulated world, both AUCs on the holdout's own rows: the *best achievable* AUC
scores the simulator's true probability, which includes a per-subscriber frailty no table shows
and the protected age term no model may use; the *observable oracle* AUC scores the same
probability without those two terms, the honest target for a model (it is lower, by about 0.03
on the baseline world). Its probabilities rank but are not calibrated: they take frailty as 0
rather than averaging over it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from tasks.core.errors import ChurnError
from tasks.core.layout import table_path
from tasks.core.schema import TRUE_CHURN_PROBABILITY

logger = logging.getLogger(__name__)

LABEL = "churned_30d"
DAY = "snapshot_date"
CALIBRATION_BINS = 10
MIN_TRUTH_COVERAGE = 0.99
"""Share of holdout rows that must have a truth row for either AUC limit to be given."""
_EPS = 1e-15


class EvaluationError(ChurnError):
    """Labels and probabilities that cannot be judged (lengths differ, one class, invalid values)."""


def _arrays(y_true, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    prob = np.asarray(p, dtype=np.float64).ravel()
    if len(y) != len(prob):
        raise EvaluationError(f"{len(y):,} labels but {len(prob):,} probabilities")
    if len(y) == 0:
        raise EvaluationError("nothing to evaluate: no rows")
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise EvaluationError(
            f"labels must be 0/1: {int((~np.isin(y, (0.0, 1.0))).sum()):,} are not"
        )
    bad = int((np.isnan(prob) | (prob < 0) | (prob > 1)).sum())
    if bad:
        raise EvaluationError(f"{bad:,} probabilities are NaN or outside [0, 1]")
    return y, prob


def _require_both_classes(y: np.ndarray) -> None:
    positives = int(y.sum())
    if positives in (0, len(y)):
        raise EvaluationError(
            f"the labels hold a single class ({positives:,} churned of {len(y):,} rows): "
            "ranking metrics are undefined"
        )


# ----------------------------------------------------------------------------- calibration


def _equal_frequency_bins(p: np.ndarray, bins: int) -> list[np.ndarray]:
    """Row indices of ``bins`` equal-count bins of ``p`` ascending (ties kept in row order)."""
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(bins, len(p))) if len(b)]


def calibration_curve(y, p, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Reliability table over equal-frequency bins of the probability.

    Grain: one row per bin, lowest probabilities first; columns: bin (1-based), rows,
    mean_predicted, observed_rate, p_min, p_max.
    """
    y, prob = _arrays(y, p)
    rows = [
        {
            "bin": i + 1,
            "rows": len(idx),
            "mean_predicted": float(prob[idx].mean()),
            "observed_rate": float(y[idx].mean()),
            "p_min": float(prob[idx].min()),
            "p_max": float(prob[idx].max()),
        }
        for i, idx in enumerate(_equal_frequency_bins(prob, bins))
    ]
    return pd.DataFrame(rows)


def calibration_error(y, p, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error over ``bins`` equal-frequency bins (see the module docstring)."""
    curve = calibration_curve(y, p, bins)
    weights = curve["rows"] / curve["rows"].sum()
    return float((weights * (curve["observed_rate"] - curve["mean_predicted"]).abs()).sum())


# ----------------------------------------------------------------------------- top K per day


def _top_k(p: np.ndarray, snapshot_dates, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Per row, whether it is among the ``capacity`` highest probabilities of its day; day codes.

    Ties are broken by row order, so the selection is deterministic.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    codes, uniques = pd.factorize(pd.Series(snapshot_dates), sort=True)
    if len(codes) != len(p):
        raise EvaluationError(f"{len(codes):,} snapshot dates but {len(p):,} probabilities")
    if (codes < 0).any():
        raise EvaluationError(f"{int((codes < 0).sum()):,} snapshot dates are null")
    order = np.lexsort((np.arange(len(p)), -p, codes))  # by day, then p descending, then row
    sorted_codes = codes[order]
    day_start = np.searchsorted(sorted_codes, sorted_codes, side="left")
    rank = np.arange(len(p)) - day_start
    top = np.zeros(len(p), dtype=bool)
    top[order[rank < capacity]] = True
    return top, codes, len(uniques)


def operating_threshold(p, snapshot_dates, capacity: int) -> float:
    """The probability at which the team's capacity is used: per day the K-th highest, averaged.

    A day with fewer than ``capacity`` subscribers contributes its lowest probability (everyone
    is called).
    """
    prob = np.asarray(p, dtype=np.float64).ravel()
    if len(prob) == 0:
        raise EvaluationError("nothing to evaluate: no rows")
    top, codes, _ = _top_k(prob, snapshot_dates, capacity)
    lowest_called = pd.Series(prob[top]).groupby(codes[top]).min()
    return float(lowest_called.mean())


def _at_capacity(y: np.ndarray, p: np.ndarray, snapshot_dates, capacity: int) -> dict[str, float]:
    top, codes, days = _top_k(p, snapshot_dates, capacity)
    rows = np.bincount(codes, minlength=days)
    positives = np.bincount(codes, weights=y, minlength=days)
    called = np.bincount(codes[top], minlength=days)
    hits = np.bincount(codes[top], weights=y[top], minlength=days)
    precision = hits / called
    with_churn = positives > 0  # recall and lift are undefined on a day without churn
    recall = hits[with_churn] / positives[with_churn]
    lift = precision[with_churn] / (positives[with_churn] / rows[with_churn])
    return {
        "precision_at_k": float(precision.mean()),
        "recall_at_k": float(recall.mean()) if with_churn.any() else float("nan"),
        "lift_at_k": float(lift.mean()) if with_churn.any() else float("nan"),
    }


# ----------------------------------------------------------------------------- all metrics


def holdout_metrics(y_true, p, snapshot_dates, capacity: int) -> dict[str, float]:
    """Every holdout metric of a model, as floats (MLflow metrics).

    * ``roc_auc``, ``pr_auc`` (average precision), ``brier``, ``log_loss`` (probabilities
      clipped to [1e-15, 1 - 1e-15]), ``calibration_error`` (ECE, 10 equal-frequency bins),
      ``base_rate``;
    * at the retention team's capacity K: per snapshot day the K highest probabilities are
      "called"; ``precision_at_k``, ``recall_at_k`` and ``lift_at_k`` (precision / that day's
      base rate) are averaged over days (recall and lift over days with at least one churner);
      ``operating_threshold`` is the K-th highest probability per day, averaged;
    * ``rows``, ``positives``, ``days`` for context.

    Raises:
        EvaluationError: lengths differ, labels are not 0/1 or hold a single class, or
            probabilities are outside [0, 1].
    """
    y, prob = _arrays(y_true, p)
    _require_both_classes(y)
    clipped = np.clip(prob, _EPS, 1 - _EPS)
    top = _at_capacity(y, prob, snapshot_dates, capacity)
    return {
        "roc_auc": float(roc_auc_score(y, prob)),
        "pr_auc": float(average_precision_score(y, prob)),
        "brier": float(np.mean((prob - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "calibration_error": calibration_error(y, prob),
        "base_rate": float(y.mean()),
        **top,
        "operating_threshold": operating_threshold(prob, snapshot_dates, capacity),
        "rows": float(len(y)),
        "positives": float(y.sum()),
        "days": float(pd.Series(snapshot_dates).nunique()),
    }


# ----------------------------------------------------------------------------- curves


def _thin(frame: pd.DataFrame, max_points: int | None) -> pd.DataFrame:
    """At most ``max_points`` rows, evenly spaced, first and last kept."""
    if max_points is None or len(frame) <= max_points:
        return frame.reset_index(drop=True)
    keep = np.unique(np.linspace(0, len(frame) - 1, max(max_points, 2)).round().astype(int))
    return frame.iloc[keep].reset_index(drop=True)


def roc_points(y, p, max_points: int | None = 1000) -> pd.DataFrame:
    """ROC curve: columns fpr, tpr, threshold (1.0 on the first point, where nobody is selected)."""
    y, prob = _arrays(y, p)
    _require_both_classes(y)
    fpr, tpr, thresholds = roc_curve(y, prob)
    frame = pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thresholds, 1.0)})
    return _thin(frame, max_points)


def pr_points(y, p, max_points: int | None = 1000) -> pd.DataFrame:
    """Precision-recall curve by ascending threshold: columns recall, precision, threshold.

    The last point (recall 0, precision 1) is sklearn's end point, where nobody is selected;
    its threshold is given as 1.0.
    """
    y, prob = _arrays(y, p)
    _require_both_classes(y)
    precision, recall, thresholds = precision_recall_curve(y, prob)
    frame = pd.DataFrame(
        {"recall": recall, "precision": precision, "threshold": np.append(thresholds, 1.0)}
    )
    return _thin(frame, max_points)


# ----------------------------------------------------------------------------- the limit


TRUE_PROBABILITY = "true_churn_prob_30d"
OBSERVABLE_PROBABILITY = "observable_churn_prob_30d"


def best_achievable_auc(truth_dir: Path, holdout: pd.DataFrame) -> float | None:
    """ROC-AUC of the simulator's true churn probability on the holdout rows: the limit any model has.

    Joins the holdout's (subscriber_id, snapshot_date) to ``true_churn_probability`` on
    (subscriber_id, date) and scores the true probability against ``churned_30d``. Only the
    holdout's days are read (a filter pushed down to the Parquet scan).

    Returns None when there is no truth (imported data), or when fewer than
    ``MIN_TRUTH_COVERAGE`` (99%) of the holdout rows have a true probability (the truth belongs
    to another world or range), or when the matched rows hold a single class. With partial
    coverage above that share, the AUC is over the matched rows.
    """
    return _truth_auc(Path(truth_dir), holdout, TRUE_PROBABILITY)


def observable_oracle_auc(truth_dir: Path, holdout: pd.DataFrame) -> float | None:
    """ROC-AUC of the simulator's *observable* churn probability on the holdout rows.

    The observable probability is the true one recomputed without the per-subscriber frailty
    (which no table shows) and without the protected 18-24 age term (which a model may not
    use): the best a model restricted to what it may legitimately know can reach, so the honest
    target for a model's AUC. Same join, coverage rule and None cases as
    :func:`best_achievable_auc`; also None when the truth predates the column (a world written
    by simulator generator version 1).
    """
    return _truth_auc(Path(truth_dir), holdout, OBSERVABLE_PROBABILITY)


def _truth_auc(truth_dir: Path, holdout: pd.DataFrame, column: str) -> float | None:
    """ROC-AUC of one probability column of ``true_churn_probability`` on the holdout rows."""
    root = table_path(truth_dir, TRUE_CHURN_PROBABILITY)
    files = sorted(root.glob("*.parquet")) if root.is_dir() else []
    if not files or len(holdout) == 0:
        return None
    if column not in pq.read_schema(files[0]).names:
        logger.warning(
            "AUC of %s not given: the truth at %s predates that column (re-simulate the world)",
            column,
            truth_dir,
        )
        return None
    keys = pl.DataFrame(
        {
            "subscriber_id": pd.Series(holdout["subscriber_id"]).to_numpy(dtype=np.int64),
            "date": pd.to_datetime(pd.Series(holdout[DAY])).to_numpy(dtype="datetime64[D]"),
            LABEL: pd.Series(holdout[LABEL]).to_numpy(dtype=np.int8),
        }
    ).with_columns(pl.col("date").cast(pl.Date))
    days = keys.get_column("date").unique().to_list()
    truth = (
        pl.scan_parquet([str(f) for f in files])
        .select("subscriber_id", "date", column)
        .filter(pl.col("date").is_in(days))
    )
    joined = keys.lazy().join(truth, on=["subscriber_id", "date"], how="inner").collect()
    coverage = joined.height / keys.height
    if coverage < MIN_TRUTH_COVERAGE:
        logger.warning(
            "AUC of %s not given: %d of %d holdout rows (%.1f%%) have a truth row",
            column,
            joined.height,
            keys.height,
            100 * coverage,
        )
        return None
    y = joined.get_column(LABEL).to_numpy()
    if y.min() == y.max():
        return None
    return float(roc_auc_score(y, joined.get_column(column).to_numpy()))
