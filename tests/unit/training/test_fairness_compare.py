"""Candidate beside champion: regression needs evidence and a margin; both are shown and logged."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tasks.training.fairness import NOT_JUDGED, UNFAIR, FairnessReport, fairness_report
from tasks.training.fairness_compare import (
    CHAMPION_GROUP_COLUMNS,
    REGRESSION,
    compare_with_champion,
)

LIMITS = {
    "min_dp_ratio": 0.6,
    "max_eo_difference": 0.25,
    "min_group_size": 200,
    "min_selected_per_group": 30,
    "confidence": 0.95,
}


def report(
    rates: dict[str, tuple[float, ...]], rows: int = 4000, **limits: float
) -> FairnessReport:
    """Groups of ``rows`` with the given ``group -> (TPR, FPR[, share of churners])``; a
    quarter churners unless said otherwise."""
    y, p, g = [], [], []
    for name, (tpr, fpr, *share) in rates.items():
        pos = round(rows * (share[0] if share else 0.25))
        hits, alarms = round(tpr * pos), round(fpr * (rows - pos))
        y += [1] * pos + [0] * (rows - pos)
        p += [0.9] * hits + [0.1] * (pos - hits) + [0.9] * alarms + [0.1] * (rows - pos - alarms)
        g += [name] * rows
    groups = pd.DataFrame({"region": g})
    return fairness_report(np.array(y), np.array(p), 0.5, groups, **{**LIMITS, **limits})


EVEN = report({"north": (0.6, 0.1), "south": (0.6, 0.1)})


@pytest.mark.parametrize(
    ("candidate", "status", "regression"),
    [
        # Same rates as the champion: nothing to see.
        (EVEN, "no credible disparity", {}),
        # Same odds, but south has fewer churners: selected 15.0% vs 22.5% (ratio 0.67, not
        # credibly below 0.60), and the whole interval [0.57, 0.77] is below the champion's
        # 1.00 - 0.05: clearly worse.
        (
            report({"north": (0.6, 0.1), "south": (0.6, 0.1, 0.1)}),
            REGRESSION,
            {"dp": "clearly worse, whole interval below 1.00 - margin 0.05"},
        ),
        # TPR 0.6 vs 0.45: odds gap 0.15 [0.07, 0.23], entirely above 0.00 + 0.05.
        (
            report({"north": (0.6, 0.1), "south": (0.45, 0.15)}),
            REGRESSION,
            {"eo": "clearly worse, whole interval above 0.000 + margin 0.05"},
        ),
        # Worse in point estimate (ratio 0.94), but well within the noise: no regression.
        (report({"north": (0.6, 0.1), "south": (0.56, 0.095)}), "no credible disparity", {}),
        # Beyond the limit on its own evidence: credibly unfair, whatever the champion.
        (report({"north": (0.8, 0.1), "south": (0.3, 0.1)}), UNFAIR, None),
    ],
)
def test_regression_needs_the_whole_interval_beyond_the_champion_and_margin(
    candidate, status, regression
) -> None:
    comparison = compare_with_champion(candidate, EVEN, margin=0.05)
    (region,) = comparison.attributes
    assert region.status == status
    assert comparison.passed == (status == "no credible disparity")
    if regression is not None:
        assert region.regressions == regression


WORSE = report({"north": (0.6, 0.1), "south": (0.6, 0.1, 0.1)})


def test_without_a_champion_only_the_absolute_rule_decides() -> None:
    worse = WORSE
    comparison = compare_with_champion(worse, None, margin=0.05)
    assert comparison.passed and comparison.attributes[0].regressions == {}
    assert comparison.sentence().startswith("no credible disparity (no champion to compare)")


def test_an_attribute_the_champion_could_not_judge_is_not_compared() -> None:
    # The same rows judged under a stricter evidence rule leave the champion nothing to judge.
    champion = report({"north": (0.6, 0.1), "south": (0.6, 0.1)}, min_selected_per_group=5000)
    assert champion.attributes[0].status == NOT_JUDGED
    comparison = compare_with_champion(WORSE, champion, margin=0.05)
    assert comparison.passed
    assert "(champion: not judged)" in comparison.attributes[0].sentence()


def test_the_margin_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="margin must be >= 0, got -0.1"):
        compare_with_champion(EVEN, EVEN, margin=-0.1)


def test_side_by_side_tables_metrics_tags_and_card() -> None:
    comparison = compare_with_champion(WORSE, EVEN, margin=0.05)

    by_group = comparison.by_group()
    assert len(by_group) == 2
    assert [f"champion_{c}" for c in CHAMPION_GROUP_COLUMNS] == by_group.columns[-13:].tolist()
    south = by_group.set_index("group").loc["south"]
    assert (south["selected"], south["champion_selected"]) == (240 + 360, 600 + 300)

    by_attribute = comparison.by_attribute().set_index("attribute").loc["region"]
    assert by_attribute["status"] == REGRESSION
    assert by_attribute["dp_ratio_high"] < by_attribute["champion_dp_ratio"] - 0.05
    assert by_attribute["regression"].startswith("DP ratio clearly worse")

    metrics = comparison.mlflow_metrics()
    assert metrics["fairness.region.dp_ratio"] == pytest.approx(600 / 900)
    assert metrics["champion_fairness.region.dp_ratio"] == pytest.approx(1.0)
    assert {"fairness.region.eo_difference_low", "fairness.threshold"} <= set(metrics)
    assert all(v is None or math.isfinite(v) for v in metrics.values())
    assert comparison.mlflow_tags() == {"fairness.verdict": "failed", "fairness.region": REGRESSION}

    card = "\n".join(comparison.markdown())
    assert card.startswith("**Fairness gate failed: region clearly worse than the champion")
    assert "| region | clearly worse than the champion | 2 of 2 | 0.67 [0.57, 0.77] |" in card
    assert "| region | south | 4,000 | 400 | yes | 600 / 900 |" in card

    json.dumps(comparison.to_dict(), allow_nan=False)


def test_a_champion_measured_on_other_rows_is_refused() -> None:
    other = report({"north": (0.6, 0.1), "south": (0.6, 0.1)}, rows=2000)
    with pytest.raises(ValueError, match="champion's fairness covers 4,000 rows"):
        compare_with_champion(EVEN, other, margin=0.05)
