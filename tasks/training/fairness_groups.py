"""One protected attribute's groups on a scored holdout: counts, fairlearn rates, intervals (DESIGN §6).

The per-group table behind :mod:`tasks.training.fairness`: one row per group with its rows,
churners (``positives``), selected subscribers, selected churners and non-churners, fairlearn's
selection rate, TPR and FPR, and each rate's Wilson interval
(:mod:`tasks.training.fairness_intervals`).

How fairlearn is fed: not row by row but one row per (group, label, prediction) cell with its row
count as ``sample_weight``. Every metric here is a ratio of counts, so the results are the same
as on the raw rows (the tests check this against fairlearn on raw rows), and fairlearn's per-row
Python work (an ``np.stack`` over each group's rows) shrinks from millions of rows to a few cells;
the intervals are closed-form on the same counts. TPR is NaN for a group without churners and FPR
for a group without non-churners (fairlearn reports 0.0 there, which reads like a measurement).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)

from tasks.training.fairness_intervals import wilson_interval

MISSING_GROUP = "(missing)"
"""Group label given to rows whose protected attribute is null, so they are counted, not dropped."""

GROUP_COLUMNS = (
    "group",
    "count",
    "positives",
    "negatives",
    "expected_selected",
    "judged",
    "selected",
    "selection_rate",
    "selection_rate_low",
    "selection_rate_high",
    "true_positives",
    "tpr",
    "tpr_low",
    "tpr_high",
    "false_positives",
    "fpr",
    "fpr_low",
    "fpr_high",
)
"""Columns of the per-group table (``AttributeFairness.by_group``), in order. ``*_low``/``*_high`` are the
simultaneous Wilson bounds the decision uses (Bonferroni over the attribute's judged groups)."""


def group_codes(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group as a code into the sorted group names (strings; nulls are a group).

    One factorize of the column, then the few distinct values are named by ``str``: converting
    2M labels to strings first would cost more than everything else here.
    """
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    labels = [str(v) for v in np.asarray(uniques, dtype=object)]
    if (codes < 0).any():
        codes = np.where(codes < 0, len(labels), codes)
        labels.append(MISSING_GROUP)
    # Sorted by name; values that print alike (1 and "1") become one group, as strings do.
    names, remap = np.unique(np.array(labels, dtype=object), return_inverse=True)
    return remap[codes], names


def _rows(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    """Rows behind the cells (fairlearn's ``count`` would count the cells)."""
    return float(np.sum(sample_weight))


def _positives(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.dot(y_true, sample_weight))


def cell_counts(
    groups: tuple[np.ndarray, np.ndarray], y: np.ndarray, selected: np.ndarray
) -> pd.DataFrame:
    """Rows per (group, label, selected) cell: columns group, y, pred, rows.

    ``groups`` is each row's group code and the group names; counting integer keys with
    ``bincount`` is far faster than grouping strings at 2M rows.
    """
    codes, names = groups
    key = (codes.astype(np.int64) * 2 + y) * 2 + selected
    counts = np.bincount(key, minlength=len(names) * 4)
    present = np.flatnonzero(counts)
    return pd.DataFrame(
        {
            "group": names[present // 4],
            "y": (present // 2) % 2,
            "pred": present % 2,
            "rows": counts[present],
        }
    )


def group_rates(cells: pd.DataFrame) -> pd.DataFrame:
    """Per group: fairlearn's MetricFrame rates beside the counts behind them."""
    metrics = {
        "count": _rows,
        "positives": _positives,
        "selection_rate": selection_rate,
        "tpr": true_positive_rate,
        "fpr": false_positive_rate,
    }
    weights = cells["rows"].to_numpy(dtype=float)
    frame = MetricFrame(
        metrics=metrics,
        y_true=cells["y"].to_numpy(),
        y_pred=cells["pred"].to_numpy(),
        sensitive_features=cells["group"],
        sample_params={name: {"sample_weight": weights} for name in metrics},
    ).by_group
    picked = cells[cells["pred"] == 1]
    counts = pd.DataFrame(
        {
            "selected": picked.groupby("group")["rows"].sum(),
            "true_positives": picked[picked["y"] == 1].groupby("group")["rows"].sum(),
            "false_positives": picked[picked["y"] == 0].groupby("group")["rows"].sum(),
        }
    )
    by_group = frame.join(counts).fillna({"selected": 0, "true_positives": 0, "false_positives": 0})
    by_group.index.name = "group"
    by_group = by_group.reset_index()
    for column in ("count", "positives", "selected", "true_positives", "false_positives"):
        by_group[column] = by_group[column].astype(int)
    by_group["negatives"] = by_group["count"] - by_group["positives"]
    # fairlearn reports 0.0 for a rate whose denominator is empty; that is no measurement.
    by_group["tpr"] = by_group["tpr"].where(by_group["positives"] > 0, np.nan).astype(float)
    by_group["fpr"] = by_group["fpr"].where(by_group["negatives"] > 0, np.nan).astype(float)
    return by_group


def with_intervals(by_group: pd.DataFrame, z_parity: float, z_odds: float) -> pd.DataFrame:
    """``by_group`` with each rate's Wilson bounds, columns in :data:`GROUP_COLUMNS` order,
    sorted by group name.

    Args:
        by_group: :func:`group_rates`' table plus ``expected_selected`` and ``judged``.
        z_parity: normal quantile of the selection rates' intervals.
        z_odds: normal quantile of the TPRs' and FPRs' intervals.
    """
    table = by_group.copy()
    for rate, hits, trials, z in (
        ("selection_rate", "selected", "count", z_parity),
        ("tpr", "true_positives", "positives", z_odds),
        ("fpr", "false_positives", "negatives", z_odds),
    ):
        low, high = wilson_interval(table[hits], table[trials], z)
        table[f"{rate}_low"], table[f"{rate}_high"] = low, high
    return table[list(GROUP_COLUMNS)].sort_values("group", ignore_index=True)
