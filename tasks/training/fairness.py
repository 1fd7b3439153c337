"""Fairness of a scored holdout across protected groups, at the operating threshold (DESIGN §6).

For each protected attribute (a column of ``groups``, e.g. ``age_band``) a fairlearn
``MetricFrame`` gives, per group: row count, positives (churners), selection rate, true- and
false-positive rate. A subscriber is *selected* when ``p >= threshold``.

Which groups are judged. A group is judged when it has at least ``min_group_size`` rows and at
least ``min_group_outcomes`` positives *and* as many negatives: with fewer, its TPR or FPR is
undefined or moves in steps so coarse that one subscriber can swing the verdict. The disparity
measures are fairlearn's own ``demographic_parity_ratio`` (min/max selection rate) and
``equalized_odds_difference`` (worst of the TPR and FPR gaps, ``between_groups``), called on the
judged groups only, so an unjudged group can neither fail nor pass an attribute.

How fairlearn is fed: not row by row but one row per (group, label, prediction) cell with its row
count as ``sample_weight``. Every metric here is a ratio of counts, so the results are the same
as on the raw rows (the tests check this against fairlearn on raw rows), and fairlearn's per-row
Python work (an ``np.stack`` over each group's rows) shrinks from millions of rows to a few cells:
1M rows x 3 attributes takes well under a second instead of about a minute.

The policy, explicitly:

* An attribute passes when it has at least two judged groups, its demographic-parity ratio is
  ``>= min_dp_ratio`` and its equalized-odds difference is ``<= max_eo_difference``.
* Fewer than two judged groups: the attribute *cannot be judged*, which FAILS it (and so the
  report and the fairness gate), with a reason naming every group and why it was not judged.
  Not being able to look is never taken as looking and finding nothing.
* A group too small to judge, beside at least two judged ones, does not fail the attribute but is
  never silent: it is listed in ``too_small``, explained in ``notes`` (and so in the gate's
  detail), and appears with ``judged=False`` in :meth:`FairnessReport.to_frame`.
* A ratio that is undefined (no judged group has anyone selected: 0/0) fails the attribute.

TPR is reported as NaN for a group without positives and FPR as NaN for a group without
negatives (fairlearn reports 0.0 there, which reads like a measured rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)

MIN_GROUP_OUTCOMES = 5
"""Default least positives and least negatives a judged group needs (TPR/FPR steps of ≤ 0.2)."""

MISSING_GROUP = "(missing)"
"""Group label given to rows whose protected attribute is null, so they are counted, not dropped."""

GROUP_COLUMNS = ("group", "count", "positives", "selection_rate", "tpr", "fpr", "judged")
"""Columns of :attr:`AttributeFairness.by_group`, in order."""


@dataclass(frozen=True)
class AttributeFairness:
    """The fairness verdict for one protected attribute.

    ``by_group`` has one row per group (columns :data:`GROUP_COLUMNS`), ordered by group name.
    ``reasons`` says why the attribute failed (empty when it passed); ``notes`` names the groups
    that were not judged and why, whether or not the attribute passed.
    """

    attribute: str
    by_group: pd.DataFrame
    dp_ratio: float | None
    eo_difference: float | None
    too_small: list[str]
    passed: bool
    reasons: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes ``None``, numpy scalars become Python numbers."""
        return {
            "attribute": self.attribute,
            "dp_ratio": _json_number(self.dp_ratio),
            "eo_difference": _json_number(self.eo_difference),
            "too_small": list(self.too_small),
            "passed": self.passed,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "groups": [
                {k: _json_value(v) for k, v in row.items()}
                for row in self.by_group.to_dict(orient="records")
            ],
        }


@dataclass(frozen=True)
class FairnessReport:
    """Fairness of one set of predictions across every protected attribute.

    ``passed`` is true only when every attribute passed; ``reasons`` gathers the attributes'
    failure reasons and ``notes`` their unjudged groups, in attribute order.
    """

    threshold: float
    attributes: list[AttributeFairness]
    passed: bool
    reasons: list[str]
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """Long table, one row per (attribute, group): the fairness-by-group artifact.

        Columns: attribute, group, count, positives, selection_rate, tpr, fpr, judged.
        """
        frames = [a.by_group.assign(attribute=a.attribute) for a in self.attributes]
        columns = ["attribute", *GROUP_COLUMNS]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True)[columns]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for MLflow artifacts and the model card."""
        return {
            "threshold": float(self.threshold),
            "passed": self.passed,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "attributes": [a.to_dict() for a in self.attributes],
        }


def fairness_report(
    y_true: Sequence[int] | np.ndarray | pd.Series,
    p: Sequence[float] | np.ndarray | pd.Series,
    threshold: float,
    groups: pd.DataFrame,
    *,
    min_dp_ratio: float,
    max_eo_difference: float,
    min_group_size: int,
    min_group_outcomes: int = MIN_GROUP_OUTCOMES,
) -> FairnessReport:
    """Judge predictions ``p >= threshold`` for every protected attribute in ``groups``' columns.

    Args:
        y_true: observed labels, 0/1, one per row.
        p: predicted probabilities, one per row, aligned with ``y_true`` by position.
        threshold: operating threshold; a row is selected when ``p >= threshold``.
        groups: one column per protected attribute (e.g. ``PROTECTED_ATTRIBUTES``), aligned with
            ``y_true`` by position (its index is ignored). Nulls form the group ``(missing)``.
        min_dp_ratio: lowest demographic-parity ratio an attribute may have.
        max_eo_difference: largest equalized-odds difference an attribute may have.
        min_group_size: fewest rows a group needs to be judged.
        min_group_outcomes: fewest positives, and fewest negatives, a group needs to be judged.

    Returns:
        The report; see the module docstring for the pass/fail policy.

    Raises:
        ValueError: lengths differ, there are no rows or no attribute columns, labels are not
            0/1, a probability is NaN or the threshold is not finite.
    """
    y = np.asarray(y_true)
    scores = np.asarray(p, dtype=float)
    if not (len(y) == len(scores) == len(groups)):
        raise ValueError(
            f"y_true, p and groups must have one entry per row: got {len(y)}, {len(scores)} "
            f"and {len(groups)} rows"
        )
    if len(y) == 0:
        raise ValueError("fairness needs at least one scored row, got none")
    if groups.shape[1] == 0:
        raise ValueError("groups has no columns: no protected attribute to judge")
    if pd.isna(y).any() or not np.isin(y, (0, 1)).all():
        bad = sorted({str(v) for v in pd.unique(y[pd.isna(y) | ~np.isin(y, (0, 1))])})[:5]
        raise ValueError(f"y_true must be 0/1 labels, found {', '.join(bad)}")
    if np.isnan(scores).any():
        raise ValueError(f"p has {int(np.isnan(scores).sum()):,} NaN probabilities")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")

    y = y.astype(int)
    selected = (scores >= threshold).astype(int)
    attributes = [
        _judge_attribute(
            str(name),
            y,
            selected,
            _group_labels(groups[name]),
            min_dp_ratio=min_dp_ratio,
            max_eo_difference=max_eo_difference,
            min_group_size=min_group_size,
            min_group_outcomes=min_group_outcomes,
        )
        for name in groups.columns
    ]
    return FairnessReport(
        threshold=float(threshold),
        attributes=attributes,
        passed=all(a.passed for a in attributes),
        reasons=[r for a in attributes for r in a.reasons],
        notes=[n for a in attributes for n in a.notes],
    )


def _group_labels(column: pd.Series) -> np.ndarray:
    """Group labels as strings (categoricals lose unobserved levels; nulls become a group)."""
    labels = column.astype(object).where(column.notna(), MISSING_GROUP)
    return labels.astype(str).to_numpy()


def _rows(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    """Rows behind the cells (fairlearn's ``count`` would count the cells)."""
    return float(np.sum(sample_weight))


def _positives(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.dot(y_true, sample_weight))


def _judge_attribute(
    attribute: str,
    y: np.ndarray,
    selected: np.ndarray,
    labels: np.ndarray,
    *,
    min_dp_ratio: float,
    max_eo_difference: float,
    min_group_size: int,
    min_group_outcomes: int,
) -> AttributeFairness:
    # One row per (group, label, prediction) cell weighted by its row count: every metric here
    # is a ratio of counts, so the weighted cells give fairlearn's per-row results exactly, while
    # fairlearn's per-row Python work (np.stack over each group's rows) shrinks to a few cells.
    cells = (
        pd.DataFrame({"group": labels, "y": y, "pred": selected})
        .groupby(["group", "y", "pred"], sort=True)
        .size()
        .reset_index(name="rows")
    )
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
    )
    by_group = frame.by_group.reset_index()
    by_group["count"] = by_group["count"].astype(int)
    by_group["positives"] = by_group["positives"].astype(int)
    negatives = by_group["count"] - by_group["positives"]
    # fairlearn reports 0.0 for a rate whose denominator is empty; that is no measurement.
    by_group["tpr"] = by_group["tpr"].where(by_group["positives"] > 0, np.nan).astype(float)
    by_group["fpr"] = by_group["fpr"].where(negatives > 0, np.nan).astype(float)
    by_group["judged"] = (
        (by_group["count"] >= min_group_size)
        & (by_group["positives"] >= min_group_outcomes)
        & (negatives >= min_group_outcomes)
    ).astype(bool)
    by_group = by_group[list(GROUP_COLUMNS)].sort_values("group", ignore_index=True)

    unjudged = by_group[~by_group["judged"]]
    too_small = unjudged["group"].tolist()
    why_not = [
        f"{row.group} ({_why_unjudged(row, min_group_size, min_group_outcomes)})"
        for row in unjudged.itertuples()
    ]
    judged = by_group[by_group["judged"]]

    notes = []
    if too_small:
        notes.append(f"{attribute}: not judged, too small: {', '.join(why_not)}")

    if len(judged) < 2:
        judged_names = ", ".join(judged["group"]) or "none"
        reason = (
            f"{attribute}: cannot be judged: {len(judged)} of {len(by_group)} groups "
            f"judgeable ({judged_names}), at least 2 needed"
        )
        if why_not:
            reason += f"; too small: {', '.join(why_not)}"
        return AttributeFairness(
            attribute=attribute,
            by_group=by_group,
            dp_ratio=None,
            eo_difference=None,
            too_small=too_small,
            passed=False,
            reasons=[reason],
            notes=notes,
        )

    # fairlearn's own functions on the judged groups' cells: its semantics, unjudged groups out.
    keep = cells["group"].isin(judged["group"]).to_numpy()
    judged_cells = {
        "y_true": cells["y"].to_numpy()[keep],
        "y_pred": cells["pred"].to_numpy()[keep],
        "sensitive_features": cells["group"].to_numpy()[keep],
        "sample_weight": weights[keep],
    }
    dp = float(demographic_parity_ratio(**judged_cells))
    eo = float(equalized_odds_difference(**judged_cells))

    reasons = []
    if math.isnan(dp) or dp < min_dp_ratio:
        reasons.append(_dp_reason(attribute, dp, min_dp_ratio, judged))
    if math.isnan(eo) or eo > max_eo_difference:
        reasons.append(_eo_reason(attribute, eo, max_eo_difference, judged))
    return AttributeFairness(
        attribute=attribute,
        by_group=by_group,
        dp_ratio=dp,
        eo_difference=eo,
        too_small=too_small,
        passed=not reasons,
        reasons=reasons,
        notes=notes,
    )


def _why_unjudged(row: Any, min_group_size: int, min_group_outcomes: int) -> str:
    negatives = row.count - row.positives
    parts = []
    if row.count < min_group_size:
        parts.append(f"{row.count:,} rows < {min_group_size:,}")
    if row.positives < min_group_outcomes:
        parts.append(f"{row.positives:,} positives < {min_group_outcomes:,}")
    if negatives < min_group_outcomes:
        parts.append(f"{negatives:,} negatives < {min_group_outcomes:,}")
    return ", ".join(parts)


def _dp_reason(attribute: str, dp: float, floor: float, judged: pd.DataFrame) -> str:
    hi = judged.loc[judged["selection_rate"].idxmax()]
    lo = judged.loc[judged["selection_rate"].idxmin()]
    rates = (
        f"{hi['group']} selected {hi['selection_rate']:.1%}, "
        f"{lo['group']} {lo['selection_rate']:.1%}"
    )
    if math.isnan(dp):
        return (
            f"{attribute}: demographic-parity ratio undefined, nobody selected in any judged "
            f"group ({rates})"
        )
    return f"{attribute}: demographic-parity ratio {dp:.3f} < {floor:.3f} ({rates})"


def _eo_reason(attribute: str, eo: float, ceiling: float, judged: pd.DataFrame) -> str:
    gaps = {
        rate: judged[rate].max() - judged[rate].min() for rate in ("tpr", "fpr")
    }  # equalized odds is the worse of the two gaps
    rate = max(gaps, key=lambda r: gaps[r])
    hi = judged.loc[judged[rate].idxmax()]
    lo = judged.loc[judged[rate].idxmin()]
    name = "true-positive rate" if rate == "tpr" else "false-positive rate"
    return (
        f"{attribute}: equalized-odds difference {eo:.3f} > {ceiling:.3f} ({name}: "
        f"{hi['group']} {hi[rate]:.1%}, {lo['group']} {lo[rate]:.1%})"
    )


def _json_number(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return float(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _json_number(float(value))
    return value
