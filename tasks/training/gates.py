"""The champion/challenger decision: every gate a candidate must pass before registration (DESIGN §6).

Five gates, always all evaluated and reported, in this order:

===========================  ================================================================
gate                         passes when
===========================  ================================================================
``min_auc``                  challenger holdout ROC-AUC ``>= gate_min_auc``
``max_calibration_error``    challenger calibration error ``<= gate_max_calibration_error``
``beats_champion_auc``       challenger ROC-AUC ``>= champion ROC-AUC + gate_auc_margin``
``calibration_vs_champion``  calibration error ``<= champion's + gate_calibration_tolerance``
``fairness``                 no credible disparity and no clear regression on the champion
===========================  ================================================================

The champion's metrics must come from the *same* holdout with the same point-in-time features
(the caller scores it); with no champion the two comparison gates pass with the detail
"no champion yet: absolute floors only". A NaN metric (challenger's or champion's) fails its
gate: an undefined number never clears a bar, and a champion that cannot be measured is kept
rather than replaced blindly. A tie at a boundary passes (within 1e-9, so that float rounding of
``champion + margin`` cannot turn "exactly the margin" into a failure).

Fairness is judged with confidence intervals at the operating threshold, beside the champion's
fairness on the same holdout (:mod:`tasks.training.fairness_compare`): the gate fails only on a
credible disparity (an interval entirely beyond ``fairness_min_dp_ratio`` or
``fairness_max_eo_difference``) or a clear regression (an interval entirely worse than the
champion's value by ``fairness_regression_margin``). Groups and attributes too small to judge
are named in the detail and do not fail it. The detail is one line: the decision and why, then
each attribute with both models' numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.core.settings import Settings
from tasks.training.fairness import FairnessReport
from tasks.training.fairness_compare import FairnessComparison, compare_with_champion
from tasks.training.fairness_intervals import finite_or_none

GATES = (
    "min_auc",
    "max_calibration_error",
    "beats_champion_auc",
    "calibration_vs_champion",
    "fairness",
)
"""Every gate name, in evaluation and report order."""

NO_CHAMPION = "no champion yet: absolute floors only"
_TIE = 1e-9


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict; ``detail`` is one sentence with the numbers (and the shortfall)."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": finite_or_none(self.value),
            "threshold": finite_or_none(self.threshold),
            "detail": self.detail,
        }


CHAMPION_COMPARISON_GATES = ("beats_champion_auc", "calibration_vs_champion")
"""The gates that compare the candidate with the champion on the same holdout."""


@dataclass(frozen=True)
class GateDecision:
    """All gates' verdicts; the candidate may be registered only when ``passed``."""

    results: list[GateResult]
    passed: bool
    failed: list[GateResult]
    fairness: FairnessComparison
    """The evidence behind the fairness gate: the candidate's report beside the champion's."""
    has_champion: bool = True

    @property
    def verdict(self) -> str:
        """``promote``, ``keep_champion`` (a gate failed) or ``refuse`` (failed, no champion)."""
        if self.passed:
            return "promote"
        return "keep_champion" if self.has_champion else "refuse"

    @property
    def routine_keep(self) -> bool:
        """The champion stays only because the candidate is no better than it: the usual outcome
        of a scheduled retraining in a stable world, with nothing for anyone to do. A candidate
        that fails a floor or the fairness gate is not routine: that says something about the
        data or the model, and people hear of it."""
        return (
            self.verdict == "keep_champion"
            and bool(self.failed)
            and all(r.name in CHAMPION_COMPARISON_GATES for r in self.failed)
        )

    def summary(self) -> str:
        """One line for people: the verdict and, on failure, each failed gate with its numbers."""
        if self.passed:
            return f"promote: all {len(self.results)} gates passed"
        head = "keep champion" if self.has_champion else "refuse (no champion yet)"
        failures = "; ".join(f"{r.name} failed ({r.detail})" for r in self.failed)
        return f"{head}: {failures}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for MLflow tags/params and the Prefect artifact."""
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "summary": self.summary(),
            "has_champion": self.has_champion,
            "failed": [r.name for r in self.failed],
            "gates": [r.to_dict() for r in self.results],
        }


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    fairness: FairnessReport,
    settings: Settings,
    champion_fairness: FairnessReport | None = None,
) -> GateDecision:
    """Run every gate on the challenger's holdout metrics and return the decision.

    Args:
        challenger: holdout metrics of the candidate; needs ``roc_auc`` and ``calibration_error``.
        champion: the current champion's metrics on the same holdout, or ``None`` if there is
            no champion yet.
        fairness: the challenger's fairness report at its operating threshold.
        settings: gate thresholds (``gate_*``, ``fairness_regression_margin``).
        champion_fairness: the champion's fairness report on the same holdout at its own
            operating threshold; without it (or without a champion) no regression is checked,
            and the detail says so.

    Raises:
        ValueError: a metrics mapping lacks ``roc_auc`` or ``calibration_error``, or the two
            fairness reports cover different numbers of rows.
    """
    auc = _metric(challenger, "roc_auc", "challenger")
    cal = _metric(challenger, "calibration_error", "challenger")
    results = [
        _floor_auc(auc, settings.gate_min_auc),
        _ceiling_calibration(cal, settings.gate_max_calibration_error),
    ]
    if champion is None:
        results += [
            GateResult("beats_champion_auc", True, None, None, NO_CHAMPION),
            GateResult("calibration_vs_champion", True, None, None, NO_CHAMPION),
        ]
    else:
        results += [
            _beats_champion(
                auc, _metric(champion, "roc_auc", "champion"), settings.gate_auc_margin
            ),
            _calibration_vs_champion(
                cal,
                _metric(champion, "calibration_error", "champion"),
                settings.gate_calibration_tolerance,
            ),
        ]
    comparison = compare_with_champion(
        fairness,
        champion_fairness if champion is not None else None,
        settings.fairness_regression_margin,
    )
    results.append(_fairness(comparison, champion is not None))
    failed = [r for r in results if not r.passed]
    return GateDecision(
        results=results,
        passed=not failed,
        failed=failed,
        has_champion=champion is not None,
        fairness=comparison,
    )


def _metric(metrics: Mapping[str, float], key: str, whose: str) -> float:
    if key not in metrics:
        raise ValueError(
            f"{whose} metrics lack {key!r} (have: {', '.join(sorted(metrics)) or 'none'})"
        )
    value = metrics[key]
    return math.nan if value is None else float(value)


def _at_least(value: float, bound: float) -> bool:
    return value >= bound or math.isclose(value, bound, rel_tol=0.0, abs_tol=_TIE)


def _at_most(value: float, bound: float) -> bool:
    return value <= bound or math.isclose(value, bound, rel_tol=0.0, abs_tol=_TIE)


def _floor_auc(auc: float, floor: float) -> GateResult:
    if math.isnan(auc):
        detail = (
            f"holdout ROC-AUC is NaN (undefined, e.g. a single-class holdout), "
            f"so it cannot clear floor {floor:.3f}"
        )
        return GateResult("min_auc", False, auc, floor, detail)
    if _at_least(auc, floor):
        return GateResult(
            "min_auc", True, auc, floor, f"holdout ROC-AUC {auc:.3f} ≥ floor {floor:.3f}"
        )
    detail = f"holdout ROC-AUC {auc:.3f} < floor {floor:.3f}, short by {floor - auc:.3f}"
    return GateResult("min_auc", False, auc, floor, detail)


def _ceiling_calibration(cal: float, ceiling: float) -> GateResult:
    name = "max_calibration_error"
    if math.isnan(cal):
        detail = f"holdout calibration error is NaN, so it cannot stay under ceiling {ceiling:.3f}"
        return GateResult(name, False, cal, ceiling, detail)
    if _at_most(cal, ceiling):
        detail = f"holdout calibration error {cal:.3f} ≤ ceiling {ceiling:.3f}"
        return GateResult(name, True, cal, ceiling, detail)
    detail = (
        f"holdout calibration error {cal:.3f} > ceiling {ceiling:.3f}, over by {cal - ceiling:.3f}"
    )
    return GateResult(name, False, cal, ceiling, detail)


def _beats_champion(auc: float, champion_auc: float, margin: float) -> GateResult:
    name = "beats_champion_auc"
    if math.isnan(champion_auc):
        detail = (
            "champion ROC-AUC is NaN on this holdout: no comparison possible, champion kept "
            "(challenger ROC-AUC " + ("NaN" if math.isnan(auc) else f"{auc:.3f}") + ")"
        )
        return GateResult(name, False, auc, None, detail)
    bar = champion_auc + margin
    bar_text = f"champion {champion_auc:.3f} + margin {margin:.3f}"
    if math.isnan(auc):
        return GateResult(
            name, False, auc, bar, f"challenger ROC-AUC is NaN: cannot beat {bar_text}"
        )
    if _at_least(auc, bar):
        return GateResult(name, True, auc, bar, f"challenger ROC-AUC {auc:.3f} ≥ {bar_text}")
    detail = f"challenger ROC-AUC {auc:.3f} < {bar_text}, short by {bar - auc:.3f}"
    return GateResult(name, False, auc, bar, detail)


def _calibration_vs_champion(cal: float, champion_cal: float, tolerance: float) -> GateResult:
    name = "calibration_vs_champion"
    if math.isnan(champion_cal):
        detail = (
            "champion calibration error is NaN on this holdout: no comparison possible, "
            "champion kept (challenger " + ("NaN" if math.isnan(cal) else f"{cal:.3f}") + ")"
        )
        return GateResult(name, False, cal, None, detail)
    bar = champion_cal + tolerance
    bar_text = f"champion {champion_cal:.3f} + tolerance {tolerance:.3f}"
    if math.isnan(cal):
        detail = f"challenger calibration error is NaN: cannot be compared with {bar_text}"
        return GateResult(name, False, cal, bar, detail)
    if _at_most(cal, bar):
        return GateResult(
            name, True, cal, bar, f"challenger calibration error {cal:.3f} ≤ {bar_text}"
        )
    detail = f"challenger calibration error {cal:.3f} > {bar_text}, over by {cal - bar:.3f}"
    return GateResult(name, False, cal, bar, detail)


def _fairness(comparison: FairnessComparison, has_champion: bool) -> GateResult:
    # One line: the decision and why, then every attribute, including those not judged.
    detail = comparison.sentence()
    if has_champion and comparison.champion is None:
        detail += " | champion's fairness not measured on this holdout: no regression check"
    return GateResult("fairness", comparison.passed, None, None, detail)
