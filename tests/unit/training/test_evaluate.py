"""Holdout metrics on cases computed by hand; the two AUC limits from a tiny truth table."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tasks.core.files import write_parquet_atomic
from tasks.core.layout import table_path
from tasks.core.schema import TRUE_CHURN_PROBABILITY
from tasks.training.evaluate import (
    EvaluationError,
    best_achievable_auc,
    calibration_curve,
    calibration_error,
    holdout_metrics,
    observable_oracle_auc,
    operating_threshold,
    pr_points,
    roc_points,
)

D1, D2, D3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)


def two_days() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two days of 10 subscribers, p descending within each day.

    Day 1: churners ranked 1st and 2nd (of 2). Day 2: its one churner ranked 3rd.
    """
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05] * 2)
    y = np.zeros(20)
    y[[0, 1]] = 1
    y[10 + 2] = 1
    days = np.array([D1] * 10 + [D2] * 10, dtype=object)
    return y, p, days


# ----------------------------------------------------------------------------- ranking and top K


def test_perfect_ranking_scores_one():
    y, p, days = two_days()
    p = np.where(y == 1, 0.95, 0.05)

    metrics = holdout_metrics(y, p, days, capacity=3)

    assert metrics["roc_auc"] == 1.0
    assert metrics["pr_auc"] == 1.0


def test_top_k_precision_recall_and_lift_are_averaged_over_days():
    y, p, days = two_days()

    metrics = holdout_metrics(y, p, days, capacity=2)

    # Day 1: 2 of 2 called churn (precision 1, recall 1, base rate 0.2, lift 5).
    # Day 2: 0 of 2 (precision 0, recall 0, lift 0).
    assert metrics["precision_at_k"] == pytest.approx(0.5)
    assert metrics["recall_at_k"] == pytest.approx(0.5)
    assert metrics["lift_at_k"] == pytest.approx(2.5)
    # The 2nd highest probability on each day.
    assert metrics["operating_threshold"] == pytest.approx(0.8)
    assert metrics["base_rate"] == pytest.approx(3 / 20)
    assert (metrics["rows"], metrics["positives"], metrics["days"]) == (20.0, 3.0, 2.0)


def test_a_day_without_churn_counts_for_precision_only():
    y, p, days = two_days()
    y = np.concatenate([y, np.zeros(5)])
    p = np.concatenate([p, [0.99, 0.98, 0.1, 0.1, 0.1]])
    days = np.concatenate([days, np.array([D3] * 5, dtype=object)])

    metrics = holdout_metrics(y, p, days, capacity=2)

    assert metrics["precision_at_k"] == pytest.approx((1 + 0 + 0) / 3)
    assert metrics["recall_at_k"] == pytest.approx(0.5)  # days 1 and 2 only
    assert metrics["lift_at_k"] == pytest.approx(2.5)


def test_capacity_beyond_a_day_calls_everyone_and_ties_break_by_row_order():
    y = np.array([1, 0, 0, 1, 0])
    p = np.array([0.3, 0.3, 0.3, 0.2, 0.1])
    days = [D1] * 3 + [D2] * 2

    metrics = holdout_metrics(y, p, days, capacity=1)
    everyone = holdout_metrics(y, p, days, capacity=10)

    # Day 1: three tied at 0.3, the first row (a churner) is called. Day 2: 0.2 (a churner).
    assert metrics["precision_at_k"] == 1.0 and metrics["recall_at_k"] == 1.0
    assert operating_threshold(p, days, 1) == pytest.approx((0.3 + 0.2) / 2)
    # Everyone called: recall 1, lift 1, threshold the lowest probability of each day.
    assert everyone["recall_at_k"] == 1.0 and everyone["lift_at_k"] == pytest.approx(1.0)
    assert everyone["operating_threshold"] == pytest.approx((0.3 + 0.1) / 2)


def test_brier_and_log_loss_by_hand():
    metrics = holdout_metrics([0, 1], [0.2, 0.6], [D1, D1], capacity=1)

    assert metrics["brier"] == pytest.approx((0.2**2 + 0.4**2) / 2)
    assert metrics["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)


def test_log_loss_is_finite_for_certain_mistakes():
    metrics = holdout_metrics([0, 1], [1.0, 0.0], [D1, D1], capacity=1)

    assert math.isfinite(metrics["log_loss"]) and metrics["log_loss"] > 30


# ----------------------------------------------------------------------------- calibration


def calibrated() -> tuple[np.ndarray, np.ndarray]:
    """10 groups of 10 rows: group b predicts b/10 and has exactly b churners."""
    p = np.repeat(np.arange(10) / 10, 10)
    y = np.concatenate([np.r_[np.ones(b), np.zeros(10 - b)] for b in range(10)])
    return y, p


def test_calibration_error_of_calibrated_probabilities_is_zero():
    y, p = calibrated()

    assert calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_calibration_error_of_halved_probabilities():
    y, p = calibrated()

    # Each bin: observed b/10, predicted b/20, gap b/20; mean over b = 0..9 is 4.5/20.
    assert calibration_error(y, p / 2) == pytest.approx(0.225)
    assert holdout_metrics(y, p / 2, [D1] * 100, 10)["calibration_error"] == pytest.approx(0.225)


def test_calibration_curve_uses_equal_frequency_bins():
    rng = np.random.default_rng(1)
    p = rng.beta(1, 30, size=1003)  # skewed like churn: equal-width bins would be nearly empty
    y = (rng.random(1003) < p).astype(int)

    curve = calibration_curve(y, p)

    assert list(curve.columns) == [
        "bin",
        "rows",
        "mean_predicted",
        "observed_rate",
        "p_min",
        "p_max",
    ]
    assert list(curve["bin"]) == list(range(1, 11))
    assert set(curve["rows"]) == {100, 101} and curve["rows"].sum() == 1003
    assert (curve["p_max"].to_numpy()[:-1] <= curve["p_min"].to_numpy()[1:]).all()
    assert len(calibration_curve([0, 1, 1], [0.1, 0.5, 0.9])) == 3  # fewer rows than bins


# ----------------------------------------------------------------------------- curves


def test_roc_and_pr_points():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=5000)
    p = np.clip(0.3 * y + rng.random(5000) * 0.7, 0, 1)

    roc = roc_points(y, p, max_points=200)
    pr = pr_points(y, p, max_points=200)

    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert len(roc) <= 200 and roc["fpr"].is_monotonic_increasing
    assert (roc.iloc[0][["fpr", "tpr"]].tolist(), roc.iloc[-1][["fpr", "tpr"]].tolist()) == (
        [0.0, 0.0],
        [1.0, 1.0],
    )
    assert roc["threshold"].max() <= 1.0
    assert list(pr.columns) == ["recall", "precision", "threshold"]
    assert len(pr) <= 200 and pr["recall"].iloc[0] == 1.0 and pr["recall"].iloc[-1] == 0.0
    assert np.isfinite(pr["threshold"]).all() and np.isfinite(roc["threshold"]).all()
    assert len(roc_points(y, p, max_points=None)) > 200


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1, 0], [0.1, 0.2], "3 labels but 2 probabilities"),
        ([0, 0, 0], [0.1, 0.2, 0.3], "single class (0 churned of 3 rows)"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0/1: 1 are not"),
        ([0, 1, 0], [0.1, 1.2, np.nan], "2 probabilities are NaN or outside [0, 1]"),
        ([], [], "nothing to evaluate"),
    ],
)
def test_metrics_refuse_what_cannot_be_judged(y, p, message):
    with pytest.raises(EvaluationError) as raised:
        holdout_metrics(y, p, [D1] * len(p), capacity=1)

    assert message in str(raised.value)


# ----------------------------------------------------------------------------- best achievable AUC


def write_truth(
    truth_dir: Path,
    rows: list[tuple[int, date, float]],
    name: str,
    observable: list[float] | None = None,
) -> None:
    """One Parquet file of ``true_churn_probability`` under ``truth_dir``.

    ``observable`` defaults to the true probabilities; ``[]`` writes a generator-version-1 file
    without the observable column.
    """
    ids, days, probs = zip(*rows, strict=True)
    columns = {
        "subscriber_id": pa.array(ids, pa.int64()),
        "date": pa.array(days, pa.date32()),
        "true_churn_prob_30d": pa.array(probs, pa.float32()),
    }
    schema = TRUE_CHURN_PROBABILITY.arrow_schema
    if observable == []:
        schema = pa.schema([schema.field(c) for c in columns])
    else:
        columns["observable_churn_prob_30d"] = pa.array(
            probs if observable is None else observable, pa.float32()
        )
    table = pa.table(columns, schema=schema)
    write_parquet_atomic(table, table_path(truth_dir, TRUE_CHURN_PROBABILITY) / name)


def holdout_frame() -> pd.DataFrame:
    """Four holdout rows over two days; subscribers 1 and 4 churned."""
    return pd.DataFrame(
        {
            "subscriber_id": [1, 2, 3, 4],
            "snapshot_date": [D2, D2, D3, D3],
            "churned_30d": np.array([1, 0, 0, 1], dtype=np.int8),
            "region": ["north"] * 4,
        }
    )


@pytest.fixture
def truth_dir(tmp_path: Path) -> Path:
    truth = tmp_path / "truth"
    # Other days of the same subscribers, with the opposite ranking, must not be read.
    write_truth(
        truth, [(i, D1, p) for i, p in [(1, 0.01), (2, 0.9), (3, 0.9), (4, 0.01)]], "a.parquet"
    )
    # Without frailty and the age term, non-churner 3 (0.35) outranks churner 4 (0.3).
    write_truth(
        truth,
        [(1, D2, 0.4), (2, D2, 0.1), (3, D3, 0.2), (4, D3, 0.3), (5, D3, 0.99)],
        "b.parquet",
        observable=[0.4, 0.1, 0.35, 0.3, 0.99],
    )
    return truth


def test_best_achievable_auc_joins_on_subscriber_and_day(truth_dir: Path):
    # Churners 0.4 and 0.3 above the others' 0.1 and 0.2: a perfect ranking.
    assert best_achievable_auc(truth_dir, holdout_frame()) == 1.0

    # Subscriber 4's churn labelled on subscriber 3 instead: 3 of 4 pairs ordered right.
    swapped = holdout_frame().assign(churned_30d=np.array([1, 0, 1, 0], dtype=np.int8))
    assert best_achievable_auc(truth_dir, swapped) == pytest.approx(0.75)


def test_best_achievable_auc_accepts_timestamps_as_days(truth_dir: Path):
    holdout = holdout_frame().assign(snapshot_date=lambda f: pd.to_datetime(f["snapshot_date"]))

    assert best_achievable_auc(truth_dir, holdout) == 1.0


def test_best_achievable_auc_is_none_without_truth(tmp_path: Path):
    assert best_achievable_auc(tmp_path / "imported-data-has-no-truth", holdout_frame()) is None
    (tmp_path / "empty" / "true_churn_probability").mkdir(parents=True)
    assert best_achievable_auc(tmp_path / "empty", holdout_frame()) is None


def test_best_achievable_auc_is_none_when_the_truth_covers_too_little(truth_dir: Path):
    # A 5th row on a day the truth never saw: 4 of 5 rows covered (80% < 99%).
    holdout = pd.concat(
        [
            holdout_frame(),
            pd.DataFrame(
                {
                    "subscriber_id": [1],
                    "snapshot_date": [D3 + timedelta(days=1)],
                    "churned_30d": np.array([0], dtype=np.int8),
                }
            ),
        ],
        ignore_index=True,
    )

    assert best_achievable_auc(truth_dir, holdout) is None


# ----------------------------------------------------------------------------- observable oracle


def test_observable_oracle_auc_scores_the_observable_column_on_the_same_rows(truth_dir: Path):
    # Churners 1 (0.4) and 4 (0.3) against 2 (0.1) and 3 (0.35): 3 of 4 pairs ordered right,
    # while the true probability orders all 4.
    assert observable_oracle_auc(truth_dir, holdout_frame()) == pytest.approx(0.75)
    assert best_achievable_auc(truth_dir, holdout_frame()) == 1.0

    swapped = holdout_frame().assign(churned_30d=np.array([1, 0, 1, 0], dtype=np.int8))
    assert observable_oracle_auc(truth_dir, swapped) == pytest.approx(1.0)


def test_observable_oracle_auc_is_none_without_truth_or_enough_of_it(
    tmp_path: Path, truth_dir: Path
):
    assert observable_oracle_auc(tmp_path / "imported-data-has-no-truth", holdout_frame()) is None
    one_day = holdout_frame().iloc[:2].assign(churned_30d=np.array([0, 0], dtype=np.int8))
    assert observable_oracle_auc(truth_dir, one_day) is None  # a single class
    late = holdout_frame().assign(snapshot_date=D3 + timedelta(days=5))
    assert observable_oracle_auc(truth_dir, late) is None  # no coverage


def test_observable_oracle_auc_is_none_on_truth_written_before_the_column(tmp_path: Path):
    old = tmp_path / "truth"
    write_truth(
        old, [(1, D2, 0.4), (2, D2, 0.1), (3, D3, 0.2), (4, D3, 0.3)], "a.parquet", observable=[]
    )
    assert observable_oracle_auc(old, holdout_frame()) is None
    assert best_achievable_auc(old, holdout_frame()) == 1.0
