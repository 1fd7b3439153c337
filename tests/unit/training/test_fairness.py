"""Fairness report: fair groups pass, biased ones fail with numbers, small groups are never silent."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_ratio,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)

from tasks.training.fairness import MISSING_GROUP, FairnessReport, fairness_report

THRESHOLD = 0.5
LIMITS = {"min_dp_ratio": 0.6, "max_eo_difference": 0.25, "min_group_size": 200}


def holdout(
    groups: dict[str, tuple[int, int, float, float]], attribute: str = "age_band"
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Rows with exact per-group rates: ``group -> (rows, positives, tpr, fpr)``.

    Selected rows score 0.9, the others 0.1, so at threshold 0.5 each group's TPR and FPR are
    exactly as given (rounded to whole rows).
    """
    y, p, g = [], [], []
    for name, (rows, positives, tpr, fpr) in groups.items():
        negatives = rows - positives
        hits, false_alarms = round(tpr * positives), round(fpr * negatives)
        y += [1] * positives + [0] * negatives
        p += [0.9] * hits + [0.1] * (positives - hits)
        p += [0.9] * false_alarms + [0.1] * (negatives - false_alarms)
        g += [name] * rows
    return np.array(y), np.array(p), pd.DataFrame({attribute: g})


def report_for(groups: dict[str, tuple[int, int, float, float]], **limits) -> FairnessReport:
    y, p, g = holdout(groups)
    return fairness_report(y, p, THRESHOLD, g, **{**LIMITS, **limits})


def test_equal_groups_pass() -> None:
    report = report_for({g: (400, 100, 0.6, 0.1) for g in ("18-24", "35-44", "65+")})
    (age,) = report.attributes
    assert report.passed and age.passed
    assert report.reasons == [] and report.notes == [] and age.too_small == []
    assert age.dp_ratio == pytest.approx(1.0) and age.eo_difference == pytest.approx(0.0)
    assert age.by_group["judged"].all()
    assert age.by_group["group"].tolist() == ["18-24", "35-44", "65+"]


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        # Same TPR/FPR but very different base rates: selection 35.0% vs 12.5%, ratio 0.357.
        (
            {"18-24": (400, 200, 0.6, 0.1), "65+": (400, 20, 0.6, 0.1)},
            "age_band: demographic-parity ratio 0.357 < 0.600 (18-24 selected 35.0%, 65+ 12.5%)",
        ),
        # Same base rate, TPR 90% vs 50% (ratio of selection 0.667 still passes): odds gap 0.400.
        (
            {"18-24": (400, 100, 0.9, 0.1), "65+": (400, 100, 0.5, 0.1)},
            (
                "age_band: equalized-odds difference 0.400 > 0.250 "
                "(true-positive rate: 18-24 90.0%, 65+ 50.0%)"
            ),
        ),
        # The false-positive side: FPR 40% vs 10% with equal TPR; selection 0.375 vs 0.15 fails too.
        (
            {"18-24": (400, 100, 0.6, 0.4), "65+": (400, 100, 0.6, 0.1)},
            (
                "age_band: equalized-odds difference 0.300 > 0.250 "
                "(false-positive rate: 18-24 40.0%, 65+ 10.0%)"
            ),
        ),
    ],
)
def test_biased_selection_fails_naming_attribute_groups_and_numbers(groups, expected) -> None:
    report = report_for(groups)
    assert not report.passed and not report.attributes[0].passed
    assert expected in report.reasons
    assert report.reasons == report.attributes[0].reasons


@pytest.mark.parametrize(
    ("small", "why"),
    [
        # Few rows, every reason listed (here: no negatives either, so no FPR).
        ((20, 20, 1.0, 0.0), "unspecified (20 rows < 200, 0 negatives < 5)"),
        # Few rows, though enough of each outcome.
        ((20, 10, 1.0, 0.0), "unspecified (20 rows < 200)"),
        # Plenty of rows but too few churners to estimate a TPR.
        ((400, 2, 1.0, 0.9), "unspecified (2 positives < 5)"),
    ],
)
def test_small_group_is_reported_not_silently_passed(small, why) -> None:
    groups = {"female": (400, 100, 0.6, 0.1), "male": (400, 100, 0.6, 0.1), "unspecified": small}
    y, p, g = holdout(groups, attribute="gender")
    report = fairness_report(y, p, THRESHOLD, g, **LIMITS)
    (gender,) = report.attributes

    # Two judged groups remain, so the attribute is judged on them, and passes.
    assert gender.passed and gender.too_small == ["unspecified"]
    # ... but the unjudged group is named, with why, and flagged in the table.
    assert report.notes == [f"gender: not judged, too small: {why}"]
    table = report.to_frame().set_index("group")
    assert not table.loc["unspecified", "judged"] and table.loc[["female", "male"], "judged"].all()
    # Its (wild) rates are excluded from the disparity measures.
    assert gender.dp_ratio == pytest.approx(1.0) and gender.eo_difference == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        # One judged group and one tiny one: nothing to compare with.
        (
            {"north": (400, 100, 0.6, 0.1), "south": (50, 10, 0.6, 0.1)},
            (
                "region: cannot be judged: 1 of 2 groups judgeable (north), at least 2 needed; "
                "too small: south (50 rows < 200)"
            ),
        ),
        # Every group too small.
        (
            {"north": (100, 30, 0.6, 0.1), "south": (100, 30, 0.6, 0.1)},
            (
                "region: cannot be judged: 0 of 2 groups judgeable (none), at least 2 needed; "
                "too small: north (100 rows < 200), south (100 rows < 200)"
            ),
        ),
        # A single group, however big.
        (
            {"north": (1000, 100, 0.6, 0.1)},
            "region: cannot be judged: 1 of 1 groups judgeable (north), at least 2 needed",
        ),
    ],
)
def test_attribute_with_fewer_than_two_judged_groups_fails(groups, expected) -> None:
    y, p, g = holdout(groups, attribute="region")
    report = fairness_report(y, p, THRESHOLD, g, **LIMITS)
    (region,) = report.attributes
    assert not report.passed and not region.passed
    assert region.dp_ratio is None and region.eo_difference is None
    assert report.reasons == [expected]


def test_dp_and_eo_match_fairlearn_when_all_groups_are_judged() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    g = pd.DataFrame({"region": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2])})
    y = (rng.random(n) < np.where(g["region"] == "east", 0.4, 0.2)).astype(int)
    p = np.clip(0.3 * y + rng.random(n) * np.where(g["region"] == "south", 0.9, 0.7), 0, 1)
    report = fairness_report(y, p, 0.45, g, min_dp_ratio=0, max_eo_difference=1, min_group_size=1)
    (region,) = report.attributes
    assert region.by_group["judged"].all()

    y_pred = (p >= 0.45).astype(int)
    sf = g["region"]
    assert region.dp_ratio == demographic_parity_ratio(y, y_pred, sensitive_features=sf)
    assert region.eo_difference == equalized_odds_difference(y, y_pred, sensitive_features=sf)
    frame = MetricFrame(
        metrics={
            "selection_rate": selection_rate,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
        },
        y_true=y,
        y_pred=y_pred,
        sensitive_features=sf,
    ).by_group
    ours = region.by_group.set_index("group")
    for col in ("selection_rate", "tpr", "fpr"):
        assert ours[col].to_dict() == pytest.approx(frame[col].to_dict())
    assert ours["count"].to_dict() == sf.value_counts().to_dict()


def test_disparity_over_judged_groups_is_fairlearns_on_their_rows() -> None:
    groups = {"a": (400, 100, 0.8, 0.2), "b": (400, 150, 0.6, 0.1), "c": (30, 10, 0.0, 0.0)}
    y, p, g = holdout(groups)
    report = fairness_report(
        y, p, THRESHOLD, g, min_dp_ratio=0, max_eo_difference=1, min_group_size=200
    )
    keep = g["age_band"] != "c"
    y_pred = (p >= THRESHOLD).astype(int)
    (age,) = report.attributes
    assert age.dp_ratio == demographic_parity_ratio(
        y[keep], y_pred[keep], sensitive_features=g["age_band"][keep]
    )
    assert age.eo_difference == equalized_odds_difference(
        y[keep], y_pred[keep], sensitive_features=g["age_band"][keep]
    )


def test_every_attribute_must_pass_and_outputs_are_json_ready() -> None:
    y, p, _ = holdout({"x": (400, 100, 0.9, 0.1), "y": (400, 100, 0.5, 0.1)})
    groups = pd.DataFrame(
        {
            "age_band": ["18-24"] * 400 + ["65+"] * 400,  # biased: fails on odds
            "gender": ["female", "male"] * 400,  # mixes both evenly: passes
            "region": ["north"] * 790 + [None] * 10,  # nulls are a group, too small
        }
    )
    report = fairness_report(y, p, THRESHOLD, groups, **LIMITS)
    verdicts = {a.attribute: a.passed for a in report.attributes}
    assert verdicts == {"age_band": False, "gender": True, "region": False}
    assert not report.passed
    assert report.attributes[2].too_small == [MISSING_GROUP]

    frame = report.to_frame()
    assert frame.columns.tolist() == [
        "attribute",
        "group",
        "count",
        "positives",
        "selection_rate",
        "tpr",
        "fpr",
        "judged",
    ]
    assert len(frame) == 2 + 2 + 2 and frame["count"].sum() == 3 * 800

    data = report.to_dict()
    json.dumps(data, allow_nan=False)  # NaN rates and undefined ratios become null
    assert data["attributes"][2]["dp_ratio"] is None


def test_rates_without_a_denominator_are_nan_not_zero() -> None:
    y, p, g = holdout({"a": (300, 0, 0.0, 0.2), "b": (300, 300, 0.5, 0.0)})
    report = fairness_report(y, p, THRESHOLD, g, **LIMITS)
    table = report.to_frame().set_index("group")
    assert math.isnan(table.loc["a", "tpr"]) and table.loc["a", "fpr"] == pytest.approx(0.2)
    assert math.isnan(table.loc["b", "fpr"]) and table.loc["b", "tpr"] == pytest.approx(0.5)


def test_nobody_selected_leaves_parity_undefined_and_fails() -> None:
    y, p, g = holdout({"a": (400, 100, 0.0, 0.0), "b": (400, 100, 0.0, 0.0)})
    report = fairness_report(y, p, THRESHOLD, g, **LIMITS)
    assert not report.passed
    assert report.reasons[0].startswith("age_band: demographic-parity ratio undefined")


@pytest.mark.parametrize(
    ("y", "p", "groups", "message"),
    [
        # Misaligned inputs.
        ([0, 1], [0.1, 0.2, 0.3], pd.DataFrame({"g": ["a", "b"]}), "one entry per row"),
        # Labels that are not 0/1.
        ([0, 2], [0.1, 0.2], pd.DataFrame({"g": ["a", "b"]}), "0/1 labels, found 2"),
        # A NaN score would silently count as "not selected".
        ([0, 1], [0.1, float("nan")], pd.DataFrame({"g": ["a", "b"]}), "1 NaN probabilities"),
        # Nothing to judge.
        ([], [], pd.DataFrame({"g": []}), "at least one scored row"),
        ([0, 1], [0.1, 0.2], pd.DataFrame(index=[0, 1]), "no protected attribute"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(y, p, groups, message) -> None:
    with pytest.raises(ValueError, match=message):
        fairness_report(y, p, THRESHOLD, groups, **LIMITS)
