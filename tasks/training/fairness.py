"""Fairness of a scored holdout across protected groups, at the operating threshold (DESIGN §6).

Where it is judged: at the operating point that matters, the probability at which the retention
team's daily capacity is used (``operating_threshold`` in :mod:`tasks.training.evaluate`: the
top ``retention_capacity`` a day). A subscriber is *selected* when ``p >= threshold``.

What is measured, per protected attribute (a column of ``groups``, e.g. ``age_band``): a fairlearn
``MetricFrame`` per group (rows, churners, selection rate, true- and false-positive rate) beside
the counts behind them (selected, selected churners, selected non-churners), every rate with its
Wilson interval; across the judged groups, fairlearn's ``demographic_parity_ratio`` (min/max
selection rate) and ``equalized_odds_difference`` (the worse of the TPR and FPR gaps), each with
a simultaneous confidence interval (:mod:`tasks.training.fairness_intervals` says which and why).

Which groups are judged: those with at least ``min_group_size`` rows, ``min_group_outcomes``
churners and as many non-churners (fewer, and TPR or FPR is undefined or moves in steps of a
whole subscriber), and at least ``min_selected_per_group`` *expected* selections: its rows times
the share of the holdout selected, the number it would have selected had the model treated it
like everyone else. That is how much the operating point can say about the group. The model's
own count is not used: a model that selected nobody from a group would then exempt that group
from judgement by the very disparity under test. Unjudged groups stay out of the disparity
measures, so they can neither fail nor pass an attribute; they are never silent either.

The policy, explicitly:

* **Credibly unfair** (fails the attribute, the report and the fairness gate): the demographic-
  parity interval lies entirely below ``min_dp_ratio``, or the equalized-odds interval entirely
  above ``max_eo_difference``. So is a judged attribute whose judged groups all selected nobody
  although each was expected to select at least ``min_selected_per_group``.
* A point estimate beyond a threshold whose interval reaches back across it is reported as "not
  credibly below/above" and passes: at the operating point such an estimate is noise as often as
  not (at 1M subscribers each region's selection rate is ~0.05%).
* **Not judged**: fewer than two judged groups. Reported, not failed. DESIGN §6 says a group too
  small to judge is reported, not failed, and an attribute without two judgeable groups is that
  case for all its groups at once; failing it would refuse on no evidence (a first training
  would leave no champion at all, and a later one would keep a champion whose fairness is just
  as unmeasurable on the same rows). The note names every group and why, and it goes into the
  gate's detail, the model card and MLflow.
* Whether the candidate is clearly worse than the champion on the same holdout is the other
  refusal rule; :mod:`tasks.training.fairness_compare` applies it.

Per group, the counts and rates come from :mod:`tasks.training.fairness_groups` (fairlearn fed
with one row per cell, so 2M rows cost no more than a few cells).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import demographic_parity_ratio, equalized_odds_difference

from tasks.training.fairness_groups import (
    GROUP_COLUMNS,
    cell_counts,
    group_codes,
    group_rates,
    with_intervals,
)
from tasks.training.fairness_intervals import (
    Interval,
    finite_or_none,
    gap_interval,
    ratio_interval,
    worse_gap,
    z_value,
)

MIN_GROUP_OUTCOMES = 5
"""Default least churners and least non-churners a judged group needs (TPR/FPR steps ≤ 0.2)."""

FAIR = "no credible disparity"
UNFAIR = "credibly unfair"
NOT_JUDGED = "not judged"
"""An attribute's status: what :attr:`AttributeFairness.status` can be."""

_TIE = 1e-9


@dataclass(frozen=True)
class FairnessLimits:
    """The thresholds and evidence rules one report was judged by."""

    min_dp_ratio: float
    max_eo_difference: float
    min_group_size: int
    min_selected_per_group: int
    confidence: float
    min_group_outcomes: int = MIN_GROUP_OUTCOMES

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_dp_ratio": self.min_dp_ratio,
            "max_eo_difference": self.max_eo_difference,
            "min_group_size": self.min_group_size,
            "min_selected_per_group": self.min_selected_per_group,
            "confidence": self.confidence,
            "min_group_outcomes": self.min_group_outcomes,
        }


@dataclass(frozen=True)
class AttributeFairness:
    """The fairness verdict for one protected attribute at the operating threshold.

    ``by_group`` has one row per group (columns :data:`GROUP_COLUMNS`), ordered by group name.
    ``status`` is :data:`FAIR`, :data:`UNFAIR` or :data:`NOT_JUDGED`; ``reasons`` says why it is
    unfair (empty otherwise); ``notes`` names the groups that were not judged and why.
    """

    attribute: str
    by_group: pd.DataFrame
    dp_ratio: float | None
    dp_interval: Interval | None
    eo_difference: float | None
    eo_interval: Interval | None
    too_small: list[str]
    status: str
    reasons: list[str]
    limits: FairnessLimits
    notes: list[str] = field(default_factory=list)
    too_small_why: list[str] = field(default_factory=list)
    """Each unjudged group with why, e.g. ``unspecified (12.0 expected selected < 30)``."""

    @property
    def passed(self) -> bool:
        """Only a credible disparity fails; an attribute that cannot be judged is reported."""
        return self.status != UNFAIR

    @property
    def judged(self) -> bool:
        return self.status != NOT_JUDGED

    @property
    def dp_credibly_low(self) -> bool:
        """The whole demographic-parity interval lies below the floor."""
        return self.dp_interval is not None and self.dp_interval.high < (
            self.limits.min_dp_ratio - _TIE
        )

    @property
    def eo_credibly_high(self) -> bool:
        """The whole equalized-odds interval lies above the ceiling."""
        return self.eo_interval is not None and self.eo_interval.low > (
            self.limits.max_eo_difference + _TIE
        )

    def dp_text(self) -> str:
        """E.g. ``DP ratio 0.59 [0.48, 0.71], not credibly below 0.60``."""
        floor = self.limits.min_dp_ratio
        if self.dp_ratio is None or self.dp_interval is None:
            return "DP ratio not measured"
        if math.isnan(self.dp_ratio):
            return "DP ratio undefined (nobody selected in any judged group)"
        if self.dp_credibly_low:
            finding = f"credibly below {floor:.2f}"
        elif self.dp_ratio < floor:
            finding = f"not credibly below {floor:.2f}"
        else:
            finding = f"≥ {floor:.2f}"
        return f"DP ratio {self.dp_ratio:.2f} {self.dp_interval}, {finding}"

    def eo_text(self) -> str:
        """E.g. ``EO difference 0.259 [0.041, 0.472], not credibly above 0.25``."""
        ceiling = self.limits.max_eo_difference
        if self.eo_difference is None or self.eo_interval is None:
            return "EO difference not measured"
        if self.eo_credibly_high:
            finding = f"credibly above {ceiling:.2f}"
        elif self.eo_difference > ceiling:
            finding = f"not credibly above {ceiling:.2f}"
        else:
            finding = f"≤ {ceiling:.2f}"
        interval = f"[{self.eo_interval.low:.3f}, {self.eo_interval.high:.3f}]"
        return f"EO difference {self.eo_difference:.3f} {interval}, {finding}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes ``None``, numpy scalars become Python numbers."""
        return {
            "attribute": self.attribute,
            "status": self.status,
            "passed": self.passed,
            "dp_ratio": finite_or_none(self.dp_ratio),
            "dp_interval": self.dp_interval.to_dict() if self.dp_interval else None,
            "eo_difference": finite_or_none(self.eo_difference),
            "eo_interval": self.eo_interval.to_dict() if self.eo_interval else None,
            "too_small": list(self.too_small),
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

    ``passed`` is true unless some attribute is credibly unfair; ``reasons`` gathers the
    attributes' failure reasons and ``notes`` their unjudged groups, in attribute order.
    ``rows`` and ``selected`` count the whole holdout and its selected subscribers.
    """

    threshold: float
    attributes: list[AttributeFairness]
    limits: FairnessLimits
    rows: int
    selected: int
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.attributes)

    def attribute(self, name: str) -> AttributeFairness | None:
        """The named attribute's verdict, or ``None`` if this report has no such column."""
        return next((a for a in self.attributes if a.attribute == name), None)

    def to_frame(self) -> pd.DataFrame:
        """Long table, one row per (attribute, group): the fairness-by-group artifact.

        Columns: ``attribute`` then :data:`GROUP_COLUMNS`.
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
            "rows": self.rows,
            "selected": self.selected,
            "limits": self.limits.to_dict(),
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
    min_selected_per_group: int,
    confidence: float,
    min_group_outcomes: int = MIN_GROUP_OUTCOMES,
) -> FairnessReport:
    """Judge predictions ``p >= threshold`` for every protected attribute in ``groups``' columns.

    Args:
        y_true: observed labels, 0/1, one per row.
        p: predicted probabilities, one per row, aligned with ``y_true`` by position.
        threshold: operating threshold; a row is selected when ``p >= threshold``.
        groups: one column per protected attribute (e.g. ``PROTECTED_ATTRIBUTES``), aligned with
            ``y_true`` by position (its index is ignored). Nulls form the group ``(missing)``.
        min_dp_ratio: the demographic-parity ratio below which a credible disparity fails.
        max_eo_difference: the equalized-odds difference above which a credible one fails.
        min_group_size: fewest rows a group needs to be judged.
        min_selected_per_group: fewest expected selections (rows × share selected) to be judged.
        confidence: simultaneous confidence of each attribute's intervals, e.g. 0.95.
        min_group_outcomes: fewest churners, and fewest non-churners, a group needs to be judged.

    Returns:
        The report; see the module docstring for the policy.

    Raises:
        ValueError: lengths differ, there are no rows or no attribute columns, labels are not
            0/1, a probability is NaN, the threshold is not finite or ``confidence`` is not in
            (0, 1).
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
    z_value(confidence)  # raises on a confidence outside (0, 1), before any work

    limits = FairnessLimits(
        min_dp_ratio=min_dp_ratio,
        max_eo_difference=max_eo_difference,
        min_group_size=min_group_size,
        min_selected_per_group=min_selected_per_group,
        confidence=confidence,
        min_group_outcomes=min_group_outcomes,
    )
    y = y.astype(np.int8)
    selected = (scores >= threshold).astype(np.int8)
    share_selected = float(selected.mean())
    attributes = [
        _judge_attribute(str(name), y, selected, group_codes(groups[name]), share_selected, limits)
        for name in groups.columns
    ]
    return FairnessReport(
        threshold=float(threshold),
        attributes=attributes,
        limits=limits,
        rows=len(y),
        selected=int(selected.sum()),
        reasons=[r for a in attributes for r in a.reasons],
        notes=[n for a in attributes for n in a.notes],
    )


def _judge_attribute(
    attribute: str,
    y: np.ndarray,
    selected: np.ndarray,
    groups: tuple[np.ndarray, np.ndarray],
    share_selected: float,
    limits: FairnessLimits,
) -> AttributeFairness:
    # One row per (group, label, prediction) cell weighted by its row count: every metric here
    # is a ratio of counts, so the weighted cells give fairlearn's per-row results exactly.
    cells = cell_counts(groups, y, selected)
    by_group = group_rates(cells)
    by_group["expected_selected"] = by_group["count"] * share_selected
    by_group["judged"] = (
        (by_group["count"] >= limits.min_group_size)
        & (by_group["positives"] >= limits.min_group_outcomes)
        & (by_group["negatives"] >= limits.min_group_outcomes)
        & (by_group["expected_selected"] >= limits.min_selected_per_group)
    ).astype(bool)
    # Simultaneous intervals over the judged groups: k selection rates for the ratio, k TPRs
    # and k FPRs for the odds (Bonferroni; see fairness_intervals).
    k = max(1, int(by_group["judged"].sum()))
    by_group = with_intervals(
        by_group, z_value(limits.confidence, k), z_value(limits.confidence, 2 * k)
    )

    unjudged = by_group[~by_group["judged"]]
    too_small = unjudged["group"].tolist()
    why_not = [f"{row.group} ({_why_unjudged(row, limits)})" for row in unjudged.itertuples()]
    judged = by_group[by_group["judged"]]
    notes = [f"{attribute}: not judged, too small: {', '.join(why_not)}"] if too_small else []

    if len(judged) < 2:
        judged_names = ", ".join(judged["group"]) or "none"
        note = (
            f"{attribute}: cannot be judged: {len(judged)} of {len(by_group)} groups "
            f"judgeable ({judged_names}), at least 2 needed"
        )
        if why_not:
            note += f"; too small: {', '.join(why_not)}"
        return AttributeFairness(
            attribute=attribute,
            by_group=by_group,
            dp_ratio=None,
            dp_interval=None,
            eo_difference=None,
            eo_interval=None,
            too_small=too_small,
            status=NOT_JUDGED,
            reasons=[],
            limits=limits,
            notes=[note],
            too_small_why=why_not,
        )

    # fairlearn's own functions on the judged groups' cells: its semantics, unjudged groups out.
    keep = cells["group"].isin(judged["group"]).to_numpy()
    judged_cells = {
        "y_true": cells["y"].to_numpy()[keep],
        "y_pred": cells["pred"].to_numpy()[keep],
        "sensitive_features": cells["group"].to_numpy()[keep],
        "sample_weight": cells["rows"].to_numpy(dtype=float)[keep],
    }
    dp = float(demographic_parity_ratio(**judged_cells))
    eo = float(equalized_odds_difference(**judged_cells))
    dp_interval = ratio_interval(judged["selection_rate_low"], judged["selection_rate_high"])
    eo_interval = worse_gap(
        gap_interval(judged["tpr_low"], judged["tpr_high"]),
        gap_interval(judged["fpr_low"], judged["fpr_high"]),
    )
    verdict = AttributeFairness(
        attribute=attribute,
        by_group=by_group,
        dp_ratio=dp,
        dp_interval=dp_interval,
        eo_difference=eo,
        eo_interval=eo_interval,
        too_small=too_small,
        status=FAIR,
        reasons=[],
        limits=limits,
        notes=notes,
        too_small_why=why_not,
    )
    reasons = []
    if math.isnan(dp):
        expected = judged["expected_selected"].sum()
        reasons.append(
            f"{attribute}: nobody selected in any judged group ({', '.join(judged['group'])}) "
            f"although {expected:,.0f} were expected at the overall selection rate"
        )
    elif verdict.dp_credibly_low:
        reasons.append(f"{attribute}: {verdict.dp_text()} ({_extremes(judged, 'selection_rate')})")
    if verdict.eo_credibly_high:
        reasons.append(f"{attribute}: {verdict.eo_text()} ({_worse_odds(judged)})")
    if not reasons:
        return verdict
    return replace(verdict, status=UNFAIR, reasons=reasons)


def _why_unjudged(row: Any, limits: FairnessLimits) -> str:
    parts = []
    if row.count < limits.min_group_size:
        parts.append(f"{row.count:,} rows < {limits.min_group_size:,}")
    if row.positives < limits.min_group_outcomes:
        parts.append(f"{row.positives:,} positives < {limits.min_group_outcomes:,}")
    if row.negatives < limits.min_group_outcomes:
        parts.append(f"{row.negatives:,} negatives < {limits.min_group_outcomes:,}")
    if row.expected_selected < limits.min_selected_per_group:
        parts.append(
            f"{row.expected_selected:,.1f} expected selected < {limits.min_selected_per_group:,}"
        )
    return ", ".join(parts)


def percent(rate: float) -> str:
    """A rate as a percentage with enough digits for the operating point's tiny rates."""
    if math.isnan(rate):
        return "n/a"
    return f"{rate:.1%}" if rate >= 0.1 else f"{rate:.2%}" if rate >= 0.001 else f"{rate:.3%}"


def _extremes(judged: pd.DataFrame, rate: str) -> str:
    """The highest and the lowest group on ``rate``, with their intervals."""
    hi = judged.loc[judged[rate].idxmax()]
    lo = judged.loc[judged[rate].idxmin()]
    label = {
        "selection_rate": "selected",
        "tpr": "true-positive rate",
        "fpr": "false-positive rate",
    }

    def one(row: pd.Series) -> str:
        return (
            f"{row['group']} {percent(row[rate])} "
            f"[{percent(row[f'{rate}_low'])}, {percent(row[f'{rate}_high'])}]"
        )

    return f"{label[rate]}: {one(hi)}, {one(lo)}"


def _worse_odds(judged: pd.DataFrame) -> str:
    """The larger of the TPR and FPR gaps (equalized odds is the worse of the two)."""
    gaps = {rate: judged[rate].max() - judged[rate].min() for rate in ("tpr", "fpr")}
    return _extremes(judged, max(gaps, key=lambda r: gaps[r]))


def _json_value(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite_or_none(float(value))
    return value
