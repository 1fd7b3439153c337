"""Fairness report: credible disparities fail with numbers, noise does not, small groups are reported."""

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

from tasks.training.fairness import (
    FAIR,
    GROUP_COLUMNS,
    NOT_JUDGED,
    UNFAIR,
    FairnessReport,
    fairness_report,
)
from tasks.training.fairness_groups import MISSING_GROUP

THRESHOLD = 0.5
LIMITS = {
    "min_dp_ratio": 0.6,
    "max_eo_difference": 0.25,
    "min_group_size": 200,
    "min_selected_per_group": 30,
    "confidence": 0.95,
}
ANYTHING_GOES = {**LIMITS, "min_dp_ratio": 0, "max_eo_difference": 1, "min_selected_per_group": 1}


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
    assert age.status == FAIR and age.dp_interval.high == 1.0 and age.eo_interval.low == 0.0
    assert age.by_group["judged"].all()
    assert age.by_group["group"].tolist() == ["18-24", "35-44", "65+"]
    # 60 of 100 churners and 30 of 300 others selected in each group: the counts behind the rates.
    assert (
        age.by_group[["selected", "true_positives", "false_positives"]].values.tolist()
        == [[90, 60, 30]] * 3
    )
    assert (age.by_group["selection_rate_low"] < 0.225).all()
    assert (age.by_group["selection_rate_high"] > 0.225).all()


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        # Same TPR/FPR but very different base rates: selected 35.0% vs 12.5% of 400 each.
        # Simultaneous 95% Wilson bounds [29.9%, 40.5%] and [9.25%, 16.7%]: the ratio is at
        # most 16.7 / 29.9 = 0.56, so even the kindest reading is below 0.60.
        (
            {"18-24": (400, 200, 0.6, 0.1), "65+": (400, 20, 0.6, 0.1)},
            (
                "age_band: DP ratio 0.36 [0.23, 0.56], credibly below 0.60 "
                "(selected: 18-24 35.0% [29.9%, 40.5%], 65+ 12.5% [9.25%, 16.7%])"
            ),
        ),
        # Same base rate, TPR 90% vs 50% among 500 churners each: odds gap 0.400, at least 0.306.
        (
            {"18-24": (2000, 500, 0.9, 0.1), "65+": (2000, 500, 0.5, 0.1)},
            (
                "age_band: EO difference 0.400 [0.306, 0.484], credibly above 0.25 "
                "(true-positive rate: 18-24 90.0% [86.1%, 92.9%], 65+ 50.0% [44.4%, 55.6%])"
            ),
        ),
        # The false-positive side: FPR 40% vs 10% of 3,000 non-churners, equal TPR.
        (
            {"18-24": (4000, 1000, 0.6, 0.4), "65+": (4000, 1000, 0.6, 0.1)},
            (
                "age_band: EO difference 0.300 [0.263, 0.335], credibly above 0.25 "
                "(false-positive rate: 18-24 40.0% [37.8%, 42.3%], 65+ 10.0% [8.71%, 11.5%])"
            ),
        ),
    ],
)
def test_credible_disparity_fails_naming_attribute_groups_and_numbers(groups, expected) -> None:
    report = report_for(groups)
    (age,) = report.attributes
    assert not report.passed and not age.passed and age.status == UNFAIR
    assert expected in report.reasons
    assert report.reasons == age.reasons


@pytest.mark.parametrize(
    ("groups", "finding"),
    [
        # The same TPR gap (90% vs 50%) as above among only 100 churners a group: the odds gap
        # could be as small as 0.179, so it is not credibly above 0.25.
        (
            {"18-24": (400, 100, 0.9, 0.1), "65+": (400, 100, 0.5, 0.1)},
            "EO difference 0.400 [0.179, 0.574], not credibly above 0.25",
        ),
        # The same selection rates (35.0% vs 12.5%) as above in groups of 200: ratio up to 0.67.
        (
            {"18-24": (200, 100, 0.6, 0.1), "65+": (200, 10, 0.6, 0.1)},
            "DP ratio 0.36 [0.19, 0.67], not credibly below 0.60",
        ),
    ],
)
def test_a_point_estimate_beyond_the_threshold_on_thin_evidence_passes_and_says_so(
    groups, finding
) -> None:
    report = report_for(groups)
    (age,) = report.attributes
    assert report.passed and age.status == FAIR and report.reasons == []
    assert finding in (age.dp_text(), age.eo_text())


@pytest.mark.parametrize(
    ("small", "why"),
    [
        # Few rows, every reason listed (here: no negatives, so no FPR; 20 rows x 200 of 820
        # selected is 4.9 expected selections).
        (
            (20, 20, 1.0, 0.0),
            "unspecified (20 rows < 200, 0 negatives < 5, 4.9 expected selected < 30)",
        ),
        # Few rows, though enough of each outcome (20 x 190 of 820 selected: 4.6 expected).
        ((20, 10, 1.0, 0.0), "unspecified (20 rows < 200, 4.6 expected selected < 30)"),
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
    assert gender.passed and gender.status == FAIR and gender.too_small == ["unspecified"]
    # ... but the unjudged group is named, with why, and flagged in the table.
    assert report.notes == [f"gender: not judged, too small: {why}"]
    table = report.to_frame().set_index("group")
    assert not table.loc["unspecified", "judged"] and table.loc[["female", "male"], "judged"].all()
    # Its (wild) rates are excluded from the disparity measures.
    assert gender.dp_ratio == pytest.approx(1.0) and gender.eo_difference == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        # One judged group and one tiny one (50 x 100 of 450 selected: 11.1 expected).
        (
            {"north": (400, 100, 0.6, 0.1), "south": (50, 10, 0.6, 0.1)},
            (
                "region: cannot be judged: 1 of 2 groups judgeable (north), at least 2 needed; "
                "too small: south (50 rows < 200, 11.1 expected selected < 30)"
            ),
        ),
        # Every group too small (each 25 of 100 selected, so 25.0 expected).
        (
            {"north": (100, 30, 0.6, 0.1), "south": (100, 30, 0.6, 0.1)},
            (
                "region: cannot be judged: 0 of 2 groups judgeable (none), at least 2 needed; "
                "too small: north (100 rows < 200, 25.0 expected selected < 30), "
                "south (100 rows < 200, 25.0 expected selected < 30)"
            ),
        ),
        # A single group, however big.
        (
            {"north": (1000, 100, 0.6, 0.1)},
            "region: cannot be judged: 1 of 1 groups judgeable (north), at least 2 needed",
        ),
    ],
)
def test_attribute_with_fewer_than_two_judged_groups_is_reported_not_failed(
    groups, expected
) -> None:
    # Policy (DESIGN §6): too small to judge is reported, not failed. Refusing here would refuse
    # on no evidence at all; the note says exactly what could not be judged and why.
    y, p, g = holdout(groups, attribute="region")
    report = fairness_report(y, p, THRESHOLD, g, **LIMITS)
    (region,) = report.attributes
    assert report.passed and region.passed and region.status == NOT_JUDGED
    assert region.dp_ratio is None and region.eo_difference is None
    assert region.dp_interval is None and region.eo_interval is None
    assert report.reasons == [] and report.notes == [expected]


def test_a_group_the_model_never_selects_is_judged_and_credibly_unfair() -> None:
    # Judging by the model's own selections would call "west" too small (0 selected) and let the
    # worst disparity of all pass; its 400 rows would get 90 selections at the overall rate.
    groups = {"north": (400, 100, 0.6, 0.1), "south": (400, 100, 0.6, 0.1)}
    y, p, g = holdout({**groups, "west": (400, 100, 0.0, 0.0)}, attribute="region")
    report = fairness_report(y, p, THRESHOLD, g, **LIMITS)
    (region,) = report.attributes
    table = region.by_group.set_index("group")
    assert table.loc["west", "selected"] == 0 and table.loc["west", "judged"]
    assert table.loc["west", "expected_selected"] == pytest.approx(400 * 180 / 1200)
    assert region.status == UNFAIR and region.dp_ratio == 0.0 and region.dp_interval.high < 0.6


def test_too_few_expected_selections_is_reported_not_judged() -> None:
    # Big groups, but a capacity so small that 1,000 rows hold only 10 expected selections.
    y = np.array(([1] * 50 + [0] * 950) * 2)
    p = np.zeros(2000)
    p[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1000, 1001, 1002, 1003, 1004]] = 0.9
    g = pd.DataFrame({"gender": ["female"] * 1000 + ["male"] * 1000})
    report = fairness_report(y, p, THRESHOLD, g, **LIMITS)
    (gender,) = report.attributes
    assert report.passed and gender.status == NOT_JUDGED
    assert report.notes == [
        (
            "gender: cannot be judged: 0 of 2 groups judgeable (none), at least 2 needed; "
            "too small: female (7.5 expected selected < 30), male (7.5 expected selected < 30)"
        )
    ]


def test_dp_and_eo_match_fairlearn_when_all_groups_are_judged() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    g = pd.DataFrame({"region": rng.choice(["north", "south", "east"], n, p=[0.5, 0.3, 0.2])})
    y = (rng.random(n) < np.where(g["region"] == "east", 0.4, 0.2)).astype(int)
    p = np.clip(0.3 * y + rng.random(n) * np.where(g["region"] == "south", 0.9, 0.7), 0, 1)
    report = fairness_report(y, p, 0.45, g, **{**ANYTHING_GOES, "min_group_size": 1})
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
    report = fairness_report(y, p, THRESHOLD, g, **ANYTHING_GOES)
    keep = g["age_band"] != "c"
    y_pred = (p >= THRESHOLD).astype(int)
    (age,) = report.attributes
    assert age.dp_ratio == demographic_parity_ratio(
        y[keep], y_pred[keep], sensitive_features=g["age_band"][keep]
    )
    assert age.eo_difference == equalized_odds_difference(
        y[keep], y_pred[keep], sensitive_features=g["age_band"][keep]
    )


def test_every_attribute_is_judged_on_its_own_and_outputs_are_json_ready() -> None:
    y, p, _ = holdout({"x": (2000, 500, 0.9, 0.1), "y": (2000, 500, 0.5, 0.1)})
    groups = pd.DataFrame(
        {
            "age_band": ["18-24"] * 2000 + ["65+"] * 2000,  # biased: credibly fails on odds
            "gender": ["female", "male"] * 2000,  # mixes both evenly: passes
            "region": ["north"] * 3990 + [None] * 10,  # nulls are a group, too small: not judged
        }
    )
    report = fairness_report(y, p, THRESHOLD, groups, **LIMITS)
    statuses = {a.attribute: a.status for a in report.attributes}
    assert statuses == {"age_band": UNFAIR, "gender": FAIR, "region": NOT_JUDGED}
    assert not report.passed
    assert report.attributes[2].too_small == [MISSING_GROUP]
    assert (report.rows, report.selected) == (4000, 1000)

    frame = report.to_frame()
    assert frame.columns.tolist() == ["attribute", *GROUP_COLUMNS]
    assert len(frame) == 2 + 2 + 2 and frame["count"].sum() == 3 * 4000
    assert (frame["selected"] == frame["true_positives"] + frame["false_positives"]).all()

    data = report.to_dict()
    json.dumps(data, allow_nan=False)  # NaN rates and undefined ratios become null
    assert data["attributes"][2]["dp_ratio"] is None
    assert data["attributes"][0]["eo_interval"] == pytest.approx(
        {"low": 0.306, "high": 0.484}, abs=5e-4
    )
    assert data["limits"]["min_selected_per_group"] == 30


def test_rates_without_a_denominator_are_nan_not_zero() -> None:
    y, p, g = holdout({"a": (300, 0, 0.0, 0.2), "b": (300, 300, 0.5, 0.0)})
    report = fairness_report(y, p, THRESHOLD, g, **LIMITS)
    table = report.to_frame().set_index("group")
    assert math.isnan(table.loc["a", "tpr"]) and table.loc["a", "fpr"] == pytest.approx(0.2)
    assert math.isnan(table.loc["b", "fpr"]) and table.loc["b", "tpr"] == pytest.approx(0.5)


def test_nobody_selected_in_any_judged_group_fails() -> None:
    # Every selection went to a group too small to judge (150 rows); the two judged groups, each
    # expected to have 63 selected at the overall rate, have none: that disparity is credible.
    groups = {"a": (400, 100, 0.0, 0.0), "b": (400, 100, 0.0, 0.0), "c": (150, 50, 1.0, 1.0)}
    report = report_for(groups)
    (age,) = report.attributes
    assert not report.passed and age.too_small == ["c"] and math.isnan(age.dp_ratio)
    assert report.reasons[0] == (
        "age_band: nobody selected in any judged group (a, b) although 126 were expected at "
        "the overall selection rate"
    )


def test_nobody_selected_at_all_judges_nothing() -> None:
    # No selection anywhere means no evidence about anyone: reported, not failed.
    y, p, g = holdout({"a": (400, 100, 0.0, 0.0), "b": (400, 100, 0.0, 0.0)})
    report = fairness_report(y, p, THRESHOLD, g, **LIMITS)
    assert report.passed and report.attributes[0].status == NOT_JUDGED
    assert "0.0 expected selected < 30" in report.notes[0]


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


def test_a_confidence_outside_zero_and_one_is_refused() -> None:
    y, p, g = holdout({"a": (400, 100, 0.6, 0.1), "b": (400, 100, 0.6, 0.1)})
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        fairness_report(y, p, THRESHOLD, g, **{**LIMITS, "confidence": 95})
