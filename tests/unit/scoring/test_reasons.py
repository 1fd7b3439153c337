"""Reason codes: SHAP contributions add up, the top risk-raising features, said in plain words."""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from tasks.scoring import reasons
from tasks.scoring.reasons import contributions, reason_text, top_reasons
from tasks.training.model_spec import ModelSpec, model_inputs

PLANS = ["basic", "standard", "premium"]
SPEC = ModelSpec(
    features=["support_calls_30d", "plan", "tenure_days", "data_gb_30d", "monthly_charge"],
    categorical=["plan"],
    categories={"plan": sorted(PLANS)},
)


def generated_frame(n: int, seed: int) -> pd.DataFrame:
    """Subscribers' features; risk rises with support calls and the basic plan, data has nulls."""
    rng = np.random.default_rng(seed)
    data_gb = rng.gamma(2.0, 5.0, size=n)
    data_gb[rng.random(n) < 0.15] = np.nan
    return pd.DataFrame(
        {
            "support_calls_30d": rng.poisson(1.5, size=n),
            "plan": rng.choice(PLANS, size=n),
            "tenure_days": rng.integers(0, 2_000, size=n),
            "data_gb_30d": data_gb,
            "monthly_charge": np.round(rng.uniform(20, 120, size=n), 2),
        }
    )


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    frame = generated_frame(2_000, seed=11)
    rng = np.random.default_rng(12)
    logit = (
        -3.0
        + 0.8 * frame["support_calls_30d"]
        + 1.0 * (frame["plan"] == "basic")
        + 0.5 * frame["data_gb_30d"].isna()
    )
    label = (rng.random(len(frame)) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    params = {
        "objective": "binary",
        "num_leaves": 7,
        "min_data_in_leaf": 20,
        "learning_rate": 0.2,
        "seed": 11,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    data = lgb.Dataset(model_inputs(frame, SPEC), label=label, categorical_feature=["plan"])
    return lgb.train(params, data, num_boost_round=20)


@pytest.fixture
def inputs() -> pd.DataFrame:
    frame = generated_frame(60, seed=5)
    frame.loc[3, "plan"] = "gold"  # unseen in training: missing to the model
    frame.loc[4, "data_gb_30d"] = np.nan
    return model_inputs(frame, SPEC)


# ----------------------------------------------------------------------------- contributions


def test_contributions_plus_expected_value_sum_to_the_raw_score(booster, inputs):
    contrib = contributions(booster, inputs)

    assert contrib.shape == (len(inputs), len(SPEC.features) + 1)
    assert contrib.dtype == np.float64
    raw = booster.predict(inputs, raw_score=True)
    np.testing.assert_allclose(contrib.sum(axis=1), raw, rtol=0, atol=1e-9)
    # The last column is the expected value: the same for every row.
    assert np.ptp(contrib[:, -1]) == 0


def test_contributions_of_no_rows_keep_the_column_count(booster, inputs):
    contrib = contributions(booster, inputs.iloc[:0])

    assert contrib.shape == (0, len(SPEC.features) + 1)
    assert top_reasons(booster, inputs.iloc[:0], 3) == []


# ----------------------------------------------------------------------------- top reasons


@pytest.mark.parametrize("count", [1, 3, 5])
def test_top_reasons_are_the_largest_positive_contributions_first(booster, inputs, count):
    said = top_reasons(booster, inputs, count)

    contrib = contributions(booster, inputs)[:, :-1]
    assert len(said) == len(inputs)
    for row, row_reasons in enumerate(said):
        positive = [j for j in range(contrib.shape[1]) if contrib[row, j] > 0]
        picked = sorted(positive, key=lambda j: (-contrib[row, j], j))[:count]
        names = list(inputs.columns)
        expected = [reason_text(names[j], _plain(inputs.iat[row, j])) for j in picked]
        assert row_reasons == expected
        assert len(row_reasons) <= count
    # The generated risks give most rows at least one reason.
    assert sum(bool(r) for r in said) > len(said) // 2


def test_top_reasons_of_a_real_booster_say_values_in_plain_words(booster, inputs):
    said = top_reasons(booster, inputs, 5)

    # Row 4 has no data use on record, which the generated risk punishes.
    assert "no data gb 30d on record" in said[4]
    words = [reason for row in said for reason in row]
    assert any(w.endswith("support calls in 30 days") for w in words)
    assert "on the basic plan" in words
    assert not any(" = " in w for w in words)  # every feature of the model has its own words


def test_top_reasons_say_a_missing_value_and_an_unseen_category_as_missing(monkeypatch, inputs):
    # Force row 3 (plan "gold", unseen) and row 4 (no data) to be explained by those features.
    fake = np.zeros((len(inputs), len(SPEC.features) + 1))
    fake[3, 1] = 0.7
    fake[4, 3] = 0.4
    monkeypatch.setattr(reasons, "contributions", lambda booster, frame: fake)

    said = top_reasons(None, inputs, 3)

    assert said[3] == ["no plan on record"]
    assert said[4] == ["no data gb 30d on record"]
    assert said[0] == []  # no positive contribution: no reason


def test_top_reasons_keep_only_positive_features_at_most_count_ties_in_column_order(
    monkeypatch,
):
    frame = pd.DataFrame(
        {
            "support_calls_30d": np.array([6, 1, 0], dtype=np.float32),
            "plan": pd.Categorical(["basic", "premium", "basic"], categories=sorted(PLANS)),
            "charge_to_list_ratio": np.array([1.2, 0.8, 1.0], dtype=np.float32),
            "tenure_days": np.array([40, 900, 3], dtype=np.float32),
        }
    )
    fake = np.array(
        [
            # the ratio is largest; support calls and plan tie, so column order decides
            [0.5, 0.5, 0.9, -0.2, -1.5],
            # nothing raises the risk: no reason at all
            [-0.1, 0.0, -0.3, 0.0, -1.5],
            # only the plan raises the risk; zero is not a reason
            [0.0, 0.25, -1.0, 0.0, -1.5],
        ]
    )
    monkeypatch.setattr(reasons, "contributions", lambda booster, inputs: fake)

    assert top_reasons(None, frame, 3) == [
        [
            "charged 120% of the plan's list price",
            "6 support calls in 30 days",
            "on the basic plan",
        ],
        [],
        ["on the basic plan"],
    ]
    assert top_reasons(None, frame, 2)[0] == [
        "charged 120% of the plan's list price",
        "6 support calls in 30 days",
    ]
    assert top_reasons(None, frame, 1) == [
        ["charged 120% of the plan's list price"],
        [],
        ["on the basic plan"],
    ]


def test_top_reasons_with_every_contribution_tied_follow_column_order(monkeypatch):
    frame = pd.DataFrame({"b_feature": [1.0], "a_feature": [2.0], "c_feature": [3.0]})
    monkeypatch.setattr(reasons, "contributions", lambda booster, inputs: np.full((1, 4), 0.3))

    assert top_reasons(None, frame, 2) == [["b_feature = 1.0", "a_feature = 2.0"]]


# ----------------------------------------------------------------------------- plain words


@pytest.mark.parametrize(
    ("feature", "value", "text"),
    [
        # counts, with the value and a plural only where it belongs
        ("support_calls_30d", 6, "6 support calls in 30 days"),
        ("support_calls_30d", 1, "1 support call in 30 days"),
        ("support_calls_30d", 0, "0 support calls in 30 days"),
        ("support_calls_30d", 6.0, "6 support calls in 30 days"),  # float32 inputs give floats
        ("support_calls_30d", np.float32(1.0), "1 support call in 30 days"),
        ("support_calls_7d", 2, "2 support calls in 7 days"),
        ("dropped_calls_30d", 1, "1 dropped call in 30 days"),
        ("network_tickets_30d", 3, "3 network complaints in 30 days"),
        ("late_payments_90d", 1, "1 late payment in 90 days"),
        ("plan_changes_90d", 2, "2 plan changes in 90 days"),
        # categoricals
        ("plan", "basic", "on the basic plan"),
        ("contract_type", "month_to_month", "month-to-month contract"),
        ("payment_method", "autopay", "pays by autopay"),
        # ratios and amounts
        ("charge_to_list_ratio", 1.2, "charged 120% of the plan's list price"),
        ("data_trend_7d_30d", 0.5, "data use at 50% of its 30-day pace this week"),
        ("monthly_charge", 55.1, "pays 55.10 a month"),
        ("charge_change_90d", -5, "monthly charge changed by -5.00 in 90 days"),
        ("charge_change_90d", 12.5, "monthly charge changed by +12.50 in 90 days"),
        ("data_gb_30d", 12.345, "12.3 GB of data in 30 days"),
        ("tenure_days", 40.0, "joined 40 days ago"),
        ("active_days_30d", 12, "active on 12 of the last 30 days"),
        # churn_model_v3's feature (README "Add a feature")
        ("dropped_call_rate_30d", 1.26, "1.3 dropped calls per 100 call minutes in 30 days"),
        # a feature without words of its own
        ("loyalty_points", 3, "loyalty_points = 3"),
        ("loyalty_tier", "gold", "loyalty_tier = gold"),
        # missing values
        ("support_calls_30d", None, "no support calls 30d on record"),
        ("plan", None, "no plan on record"),
        ("monthly_charge", math.nan, "no monthly charge on record"),
        ("loyalty_points", None, "no loyalty points on record"),
    ],
)
def test_reason_text_says_the_feature_in_plain_words(feature, value, text):
    assert reason_text(feature, value) == text


def _plain(value: object) -> object:
    """What a reader of the input matrix passes to ``reason_text``: Python values, None if missing."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
