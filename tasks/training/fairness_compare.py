"""The candidate's fairness beside the champion's on the same holdout: the fairness verdict (DESIGN §6).

Both reports come from the same holdout rows, each model at its own operating threshold (its own
top ``retention_capacity`` a day). The candidate is refused on fairness when, for some attribute:

1. its disparity is **credible**: the interval lies entirely beyond the threshold
   (:mod:`tasks.training.fairness`); or
2. it is **clearly worse than the champion**: its demographic-parity interval lies entirely below
   the champion's ratio minus ``margin``, or its equalized-odds interval entirely above the
   champion's difference plus ``margin``.

The champion's point estimate is the bar in rule 2 as the threshold is in rule 1: the champion is
what a refusal keeps, so the question is whether the evidence says the candidate is worse than
that; the margin leaves room for the champion's own noise and ignores differences too small to
matter. A candidate merely worse in point estimate is not refused: at 5,000 subscribers an
equalized-odds difference moves several points from noise alone. An attribute that either model
could not judge is not compared, and says so. With no champion, rule 1 alone decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.training.fairness import (
    NOT_JUDGED,
    UNFAIR,
    AttributeFairness,
    FairnessReport,
    percent,
)
from tasks.training.fairness_groups import GROUP_COLUMNS
from tasks.training.fairness_intervals import finite_or_none

REGRESSION = "clearly worse than the champion"
"""An attribute's status when rule 2 refused it (rule 1's is ``fairness.UNFAIR``)."""

CHAMPION_GROUP_COLUMNS = GROUP_COLUMNS[GROUP_COLUMNS.index("judged") :]
"""The champion's per-group columns repeated (as ``champion_<column>``) in :meth:`by_group`."""

_TIE = 1e-9


@dataclass(frozen=True)
class AttributeComparison:
    """One attribute: the candidate's verdict, the champion's on the same rows, any regression."""

    attribute: str
    candidate: AttributeFairness
    champion: AttributeFairness | None
    margin: float
    regressions: dict[str, str]
    """Per measure (``dp``, ``eo``) the candidate is clearly worse on, why."""

    @property
    def status(self) -> str:
        """``credibly unfair``, ``clearly worse than the champion``, ``not judged`` or fair."""
        if not self.candidate.passed:
            return UNFAIR
        return REGRESSION if self.regressions else self.candidate.status

    @property
    def passed(self) -> bool:
        return self.candidate.passed and not self.regressions

    def sentence(self) -> str:
        """E.g. ``region: DP ratio 0.59 [0.48, 0.71], not credibly below 0.60 (champion 0.61:
        no regression); EO difference ...``."""
        c = self.candidate
        if not c.judged:
            return c.notes[0]
        dp = c.dp_text() + self._against_champion("dp")
        eo = c.eo_text() + self._against_champion("eo")
        tail = f"; not judged: {', '.join(c.too_small_why)}" if c.too_small_why else ""
        return f"{self.attribute}: {dp}; {eo}{tail}"

    def _against_champion(self, measure: str) -> str:
        if self.champion is None:
            return ""
        if not self.champion.judged:
            return " (champion: not judged)"
        theirs = self.champion.dp_ratio if measure == "dp" else self.champion.eo_difference
        shown = "n/a" if theirs is None or math.isnan(theirs) else f"{theirs:.{_digits(measure)}f}"
        return f" (champion {shown}: {self.regressions.get(measure, 'no regression')})"

    def regression_texts(self) -> list[str]:
        """E.g. ``DP ratio clearly worse, whole interval below 0.85 - margin 0.05``."""
        return [f"{_MEASURE_NAME[m]} {why}" for m, why in self.regressions.items()]

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "status": self.status,
            "passed": self.passed,
            "regressions": self.regression_texts(),
            "sentence": self.sentence(),
            "candidate": self.candidate.to_dict(),
            "champion": self.champion.to_dict() if self.champion else None,
        }


@dataclass(frozen=True)
class FairnessComparison:
    """The fairness gate's evidence: every attribute of the candidate, beside the champion's."""

    candidate: FairnessReport
    champion: FairnessReport | None
    margin: float
    attributes: list[AttributeComparison]

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.attributes)

    def sentence(self) -> str:
        """The decision and why, in one line: the fairness gate's detail."""
        unfair = [a.attribute for a in self.attributes if a.status == UNFAIR]
        worse = [a.attribute for a in self.attributes if a.status == REGRESSION]
        unjudged = [a.attribute for a in self.attributes if a.status == NOT_JUDGED]
        if unfair or worse:
            found = [f"{', '.join(unfair)} {UNFAIR}"] if unfair else []
            found += (
                [f"{', '.join(worse)} {REGRESSION} (margin {self.margin:.2f})"] if worse else []
            )
            head = "; ".join(found)
        elif self.champion is None:
            head = "no credible disparity (no champion to compare)"
        else:
            head = (
                "no credible disparity, none clearly worse than the champion "
                f"(margin {self.margin:.2f})"
            )
        if unjudged:
            head += f"; {', '.join(unjudged)} not judged (reported, not failed)"
        where = f"at threshold {self.candidate.threshold:.4f}"
        if self.champion is not None:
            where += f" (champion's {self.champion.threshold:.4f})"
        level = f"{self.candidate.limits.confidence:.0%} intervals"
        parts = [f"{head}, {where}, {level}", *(a.sentence() for a in self.attributes)]
        return " | ".join(parts)

    def by_attribute(self) -> pd.DataFrame:
        """Side by side, one row per attribute: status, both models' ratio and difference with
        intervals, judged-group counts, and why it regressed (if it did)."""
        rows = []
        for a in self.attributes:
            row: dict[str, Any] = {"attribute": a.attribute, "status": a.status}
            for prefix, verdict in (("", a.candidate), ("champion_", a.champion)):
                row |= _measures(prefix, verdict)
            row["regression"] = "; ".join(a.regression_texts())
            rows.append(row)
        return pd.DataFrame(rows)

    def by_group(self) -> pd.DataFrame:
        """The candidate's long per-group table (``FairnessReport.to_frame``) with the
        champion's selections, rates and intervals on the same rows as ``champion_*`` columns
        (NaN without a champion), one row per (attribute, group)."""
        table = self.candidate.to_frame()
        theirs = [f"champion_{c}" for c in CHAMPION_GROUP_COLUMNS]
        if self.champion is None:
            return table.assign(**{c: np.nan for c in theirs})
        champion = self.champion.to_frame()[["attribute", "group", *CHAMPION_GROUP_COLUMNS]]
        champion.columns = ["attribute", "group", *theirs]
        return table.merge(champion, on=["attribute", "group"], how="left")

    def mlflow_metrics(self) -> dict[str, float | None]:
        """``fairness.<attribute>.<measure>`` for the candidate, ``champion_fairness.…`` for
        the champion (``None``, so not logged, where a measure does not exist)."""
        metrics: dict[str, float | None] = {
            "fairness.threshold": self.candidate.threshold,
            "fairness.selected": float(self.candidate.selected),
        }
        for a in self.attributes:
            for prefix, verdict in (("fairness", a.candidate), ("champion_fairness", a.champion)):
                if verdict is None:
                    continue
                for key, value in _measures("", verdict).items():
                    metrics[f"{prefix}.{a.attribute}.{key}"] = finite_or_none(value)
        return metrics

    def mlflow_tags(self) -> dict[str, str]:
        """``fairness.verdict`` and each attribute's status as ``fairness.<attribute>``."""
        tags = {"fairness.verdict": "passed" if self.passed else "failed"}
        return tags | {f"fairness.{a.attribute}": a.status for a in self.attributes}

    def markdown(self) -> list[str]:
        """Model-card lines: the decision, then per attribute and per group, candidate beside
        champion, with counts, rates and intervals."""
        champ = self.champion is not None
        verdict = "passed" if self.passed else "failed"
        lines = [
            f"**Fairness gate {verdict}: {self.sentence().split(' | ')[0]}.**",
            "",
            *(f"- {a.sentence()}" for a in self.attributes),
            "",
            (
                "| attribute | status | judged groups | DP ratio | champion DP ratio "
                "| EO difference | champion EO difference |"
            ),
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for a in self.attributes:
            c, h = a.candidate, a.champion
            judged = int(c.by_group["judged"].sum())
            lines.append(
                f"| {a.attribute} | {a.status} | {judged} of {len(c.by_group)} "
                f"| {_with_interval(c.dp_ratio, c.dp_interval, 2)} "
                f"| {_with_interval(h.dp_ratio, h.dp_interval, 2) if h else '—'} "
                f"| {_with_interval(c.eo_difference, c.eo_interval, 3)} "
                f"| {_with_interval(h.eo_difference, h.eo_interval, 3) if h else '—'} |"
            )
        lines += [
            "",
            (
                "| attribute | group | rows | churners | judged | selected | selection rate "
                "| TPR | FPR |"
            ),
            "|---|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        for row in self.by_group().itertuples(index=False):
            r = row._asdict()

            def both(rate: str, r: dict[str, Any] = r) -> str:
                ours = _rate(r[rate], r[f"{rate}_low"], r[f"{rate}_high"])
                if not champ:
                    return ours
                return f"{ours} / {_rate(r[f'champion_{rate}'], np.nan, np.nan)}"

            selected = f"{r['selected']:,}" + (
                f" / {int(r['champion_selected']):,}" if champ else ""
            )
            lines.append(
                f"| {r['attribute']} | {r['group']} | {r['count']:,} | {r['positives']:,} "
                f"| {'yes' if r['judged'] else 'no'} | {selected} | {both('selection_rate')} "
                f"| {both('tpr')} | {both('fpr')} |"
            )
        if champ:
            lines += ["", "Per group: candidate [simultaneous interval] / champion."]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: both reports, the margin and the per-attribute verdicts."""
        return {
            "passed": self.passed,
            "sentence": self.sentence(),
            "margin": self.margin,
            "attributes": [a.to_dict() for a in self.attributes],
            "candidate": self.candidate.to_dict(),
            "champion": self.champion.to_dict() if self.champion else None,
        }


def compare_with_champion(
    candidate: FairnessReport, champion: FairnessReport | None, margin: float
) -> FairnessComparison:
    """Apply both refusal rules (see the module docstring) to every attribute of ``candidate``.

    Args:
        candidate: the candidate's report on the holdout.
        champion: the champion's report on the *same* holdout rows, or ``None`` without one.
        margin: how much worse than the champion's value the candidate's whole interval must be
            before it counts as a regression (same units as the measure).

    Raises:
        ValueError: a negative margin, or a champion report on a different number of rows.
    """
    if not margin >= 0:
        raise ValueError(f"fairness regression margin must be >= 0, got {margin}")
    if champion is not None and champion.rows != candidate.rows:
        raise ValueError(
            f"the champion's fairness covers {champion.rows:,} rows but the candidate's "
            f"{candidate.rows:,}: both must be measured on the same holdout"
        )
    attributes = []
    for verdict in candidate.attributes:
        theirs = champion.attribute(verdict.attribute) if champion is not None else None
        attributes.append(
            AttributeComparison(
                attribute=verdict.attribute,
                candidate=verdict,
                champion=theirs,
                margin=margin,
                regressions=_regressions(verdict, theirs, margin),
            )
        )
    return FairnessComparison(candidate, champion, margin, attributes)


_MEASURE_NAME = {"dp": "DP ratio", "eo": "EO difference"}


def _regressions(
    candidate: AttributeFairness, champion: AttributeFairness | None, margin: float
) -> dict[str, str]:
    """Per measure (``dp``, ``eo``), why the candidate is clearly worse than the champion."""
    if champion is None or not candidate.judged or not champion.judged:
        return {}
    found = {}
    dp, their_dp = candidate.dp_interval, champion.dp_ratio
    if dp is not None and _measured(their_dp) and dp.high < their_dp - margin - _TIE:
        found["dp"] = f"clearly worse, whole interval below {their_dp:.2f} - margin {margin:.2f}"
    eo, their_eo = candidate.eo_interval, champion.eo_difference
    if eo is not None and _measured(their_eo) and eo.low > their_eo + margin + _TIE:
        found["eo"] = f"clearly worse, whole interval above {their_eo:.3f} + margin {margin:.2f}"
    return found


def _measured(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _digits(measure: str) -> int:
    return 2 if measure == "dp" else 3


def _measures(prefix: str, verdict: AttributeFairness | None) -> dict[str, float | None]:
    """One model's ratio and difference with their bounds and judged groups, as numbers."""
    keys = (
        "judged_groups",
        "dp_ratio",
        "dp_ratio_low",
        "dp_ratio_high",
        "eo_difference",
        "eo_difference_low",
        "eo_difference_high",
    )
    if verdict is None:
        return {f"{prefix}{k}": None for k in keys}
    dp, eo = verdict.dp_interval, verdict.eo_interval
    values = (
        float(verdict.by_group["judged"].sum()),
        verdict.dp_ratio,
        dp.low if dp else None,
        dp.high if dp else None,
        verdict.eo_difference,
        eo.low if eo else None,
        eo.high if eo else None,
    )
    return {f"{prefix}{k}": v for k, v in zip(keys, values, strict=True)}


def _with_interval(value: float | None, interval: Any, digits: int) -> str:
    if value is None or interval is None:
        return "not judged"
    if math.isnan(value):
        return "undefined"
    return f"{value:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def _rate(value: float, low: float, high: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return percent(value)
    return f"{percent(value)} [{percent(low)}, {percent(high)}]"
