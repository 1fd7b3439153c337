"""Training: the time split and its faults, determinism, categoricals, protected attributes, quality."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tasks.core.settings import Settings
from tasks.training.evaluate import best_achievable_auc, holdout_metrics
from tasks.training.model_spec import FeatureListError, ModelSpec, model_inputs
from tasks.training.time_split import TrainingDataError, split_by_time
from tasks.training.train import feature_importance, predict_proba, train_model

FIRST_DAY = date(2026, 1, 5)
FEATURES = ["signal", "noise", "plan", "payment_method"]
PLANS = ["basic", "standard", "premium"]


def make_frame(days: int = 10, per_day: int = 400, seed: int = 3, every: int = 7) -> pd.DataFrame:
    """A training frame in miniature: weekly snapshot days, a learnable label, nullable features.

    Grain: one row per (subscriber_id, snapshot_date); churn is likelier with a high ``signal``
    and on the ``basic`` plan; ``noise`` has some nulls; protected attributes ride along.
    """
    rng = np.random.default_rng(seed)
    n = days * per_day
    day = np.repeat([FIRST_DAY + timedelta(days=every * i) for i in range(days)], per_day)
    signal = rng.normal(size=n)
    plan = rng.choice(PLANS, size=n)
    logit = -3.2 + 1.3 * signal + 0.8 * (plan == "basic")
    noise = rng.normal(size=n).astype(np.float32)
    noise[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "subscriber_id": np.tile(np.arange(1, per_day + 1), days),
            "snapshot_date": day,
            "event_timestamp": [datetime.combine(d, datetime.min.time(), UTC) for d in day],
            "signal": signal.astype(np.float32),
            "noise": noise,
            "plan": plan,
            "payment_method": rng.choice(["autopay", "card", None], size=n),
            "churned_30d": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8),
            "age_band": rng.choice(["18-24", "25-34"], size=n),
            "gender": rng.choice(["female", "male"], size=n),
            "region": rng.choice(["north", "south"], size=n),
        }
    )


def fast_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"model_max_rounds": 60, "model_early_stopping_rounds": 10}
    return Settings(**(values | overrides))


def snapshot_days(frame: pd.DataFrame) -> list[date]:
    return sorted(set(frame["snapshot_date"]))


# ----------------------------------------------------------------------------- split


def test_split_puts_the_newest_days_in_the_holdout_and_the_ones_before_in_validation():
    frame = make_frame(days=10)
    days = snapshot_days(frame)

    split = split_by_time(frame, holdout_snapshots=2, validation_snapshots=3, purge_days=0)

    assert split.holdout_days == days[-2:]
    assert split.validation_days == days[-5:-2]
    assert split.train_days == days[:5]
    assert split.purged_days == []
    for part, part_days in (
        (split.train, split.train_days),
        (split.validation, split.validation_days),
        (split.holdout, split.holdout_days),
    ):
        assert snapshot_days(part) == part_days
        assert len(part) == 400 * len(part_days)
        assert list(part.columns) == list(frame.columns)
    assert len(split.train) + len(split.validation) + len(split.holdout) == len(frame)
    assert max(split.train_days) < min(split.validation_days)
    assert max(split.validation_days) < min(split.holdout_days)


@pytest.mark.parametrize(
    ("purge_days", "purged"),
    [
        (0, 0),  # no gap: every older day trains
        (7, 0),  # the day 7 days before validation is still kept (d <= first validation - 7)
        (8, 1),  # ... and dropped once the gap is longer than a week
        (28, 3),  # four weeks back is kept at a 28-day gap
        (30, 4),  # the label horizon: four weekly days share churn events with validation
    ],
)
def test_split_purges_training_days_whose_labels_reach_into_validation(purge_days, purged):
    split = split_by_time(make_frame(days=10), 2, 2, purge_days=purge_days)

    assert len(split.purged_days) == purged
    assert len(split.train_days) == 6 - purged
    assert split.train_days[-1] <= split.validation_days[0] - timedelta(days=purge_days)
    assert not set(split.purged_days) & set(split.train["snapshot_date"])


def test_split_purge_defaults_to_the_label_horizon(churn_home: Settings):
    split = split_by_time(make_frame(days=10), 2, 2)

    assert churn_home.label_horizon_days == 30
    assert len(split.purged_days) == 4


def test_split_accepts_an_arrow_table():
    frame = make_frame(days=6)

    split = split_by_time(pa.Table.from_pandas(frame, preserve_index=False), 1, 1, purge_days=0)

    assert split.holdout_days == snapshot_days(frame)[-1:]
    assert split.holdout["snapshot_date"].iloc[0] == snapshot_days(frame)[-1]


def _no_churn_from(days: int):
    """Edit: no churn on snapshot days ``days`` weeks after the first and later."""

    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        late = frame["snapshot_date"] >= FIRST_DAY + timedelta(days=7 * days)
        return frame.assign(churned_30d=np.where(late, 0, frame["churned_30d"]).astype(np.int8))

    return edit


@pytest.mark.parametrize(
    ("edit", "purge_days", "message"),
    [
        # the "empty window"
        (lambda f: f.iloc[:0], 0, "the training frame is empty"),
        # 4 days cannot make 2 holdout + 2 validation + 1 training
        (
            lambda f: f[f["snapshot_date"] < FIRST_DAY + timedelta(days=28)],
            0,
            (
                "the split needs at least 5 snapshot days (2 holdout + 2 validation + 1 training); "
                "the frame has 4: 2026-01-05, 2026-01-12, 2026-01-19, 2026-01-26"
            ),
        ),
        # 6 days are enough without a gap, but a 30-day purge leaves none to train on
        (
            lambda f: f[f["snapshot_date"] < FIRST_DAY + timedelta(days=42)],
            30,
            (
                "no training snapshot day left: training days must be on or before 2025-12-20 "
                "(30 days before the first validation day 2026-01-19"
            ),
        ),
        # the "single-class label set": no churn on the two holdout days
        (
            _no_churn_from(6),
            0,
            (
                "the holdout slice (2026-02-16, 2026-02-23) has a single class: "
                "0 churned and 800 not churned rows"
            ),
        ),
        # no churn anywhere: the train slice is named first
        (
            _no_churn_from(0),
            0,
            (
                "the train slice (2026-01-05, 2026-01-12, 2026-01-19, 2026-01-26) has a single "
                "class: 0 churned and 1,600 not churned rows"
            ),
        ),
        # everyone churned in validation
        (
            lambda f: f.assign(
                churned_30d=np.where(
                    f["snapshot_date"].isin([FIRST_DAY + timedelta(days=d) for d in (28, 35)]),
                    1,
                    f["churned_30d"],
                ).astype(np.int8)
            ),
            0,
            (
                "the validation slice (2026-02-02, 2026-02-09) has a single class: "
                "800 churned and 0 not churned rows"
            ),
        ),
        (lambda f: f.drop(columns="churned_30d"), 0, "lacks column(s) churned_30d"),
        (
            lambda f: f.assign(churned_30d=f["churned_30d"].astype(float).where(f.index > 2)),
            0,
            "churned_30d is null in 3 rows",
        ),
    ],
)
def test_split_refuses_frames_it_cannot_split(edit, purge_days, message):
    frame = edit(make_frame(days=8))

    with pytest.raises(TrainingDataError) as raised:
        split_by_time(frame, 2, 2, purge_days=purge_days)

    assert message in str(raised.value)


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def split():
    return split_by_time(make_frame(days=10), 2, 2, purge_days=0)


def test_training_is_deterministic_bit_for_bit(split):
    settings = fast_settings()

    first = train_model(split, FEATURES, settings)
    second = train_model(split, FEATURES, settings)

    assert first.booster.model_to_string() == second.booster.model_to_string()
    assert first.best_iteration == second.best_iteration
    p1, p2 = predict_proba(first, split.holdout), predict_proba(second, split.holdout)
    assert np.array_equal(p1, p2)
    assert p1.dtype == np.float64 and len(p1) == len(split.holdout)


def test_an_arrow_frame_and_its_pandas_copy_give_the_same_model():
    frame = make_frame(days=10)
    from_pandas = split_by_time(frame, 2, 2, purge_days=14)
    from_arrow = split_by_time(
        pa.Table.from_pandas(frame, preserve_index=False), 2, 2, purge_days=14
    )

    assert from_arrow.purged_days == from_pandas.purged_days
    pd.testing.assert_frame_equal(from_arrow.holdout, from_pandas.holdout, check_dtype=False)
    assert (
        train_model(from_arrow, FEATURES, fast_settings()).booster.model_to_string()
        == train_model(from_pandas, FEATURES, fast_settings()).booster.model_to_string()
    )


def test_training_params_are_deterministic_and_leave_the_class_balance_alone(split):
    model = train_model(split, FEATURES, fast_settings(model_threads=1, model_seed=9))

    params = model.params
    assert params["objective"] == "binary"
    assert params["deterministic"] is True and params["force_row_wise"] is True
    assert params["num_threads"] == 1
    assert params["seed"] == params["bagging_seed"] == params["feature_fraction_seed"] == 9
    # Reweighting would inflate the probabilities the retention file multiplies by charges.
    assert "scale_pos_weight" not in params and "is_unbalance" not in params
    # The booster keeps exactly the trees that predict.
    assert model.booster.num_trees() == model.best_iteration <= 60
    # Calibrated on average: the mean probability follows the base rate.
    p = predict_proba(model, split.train)
    assert abs(p.mean() - split.train["churned_30d"].mean()) < 0.01


def test_model_learns_the_signal_and_reports_importance(split):
    model = train_model(split, FEATURES, fast_settings())

    metrics = holdout_metrics(
        split.holdout["churned_30d"],
        predict_proba(model, split.holdout),
        split.holdout["snapshot_date"],
        capacity=40,
    )
    importance = feature_importance(model)

    assert metrics["roc_auc"] > 0.75
    assert importance["feature"].iloc[0] == "signal"
    assert sorted(importance["feature"]) == sorted(FEATURES)


def test_categoricals_are_native_with_the_training_categories(split):
    model = train_model(split, FEATURES, fast_settings())

    assert model.spec.categorical == ["plan", "payment_method"]
    assert model.spec.categories == {
        "plan": sorted(PLANS),
        "payment_method": ["autopay", "card"],
    }
    inputs = model_inputs(split.holdout, model.spec)
    assert list(inputs.columns) == FEATURES
    assert list(inputs["plan"].cat.categories) == sorted(PLANS)
    assert inputs["signal"].dtype == np.float32


def test_an_unseen_category_is_scored_as_missing(split):
    model = train_model(split, FEATURES, fast_settings())
    rows = split.holdout.head(5)

    unseen = predict_proba(model, rows.assign(plan="platinum"))
    missing = predict_proba(model, rows.assign(plan=None))

    assert model_inputs(rows.assign(plan="platinum"), model.spec)["plan"].isna().all()
    assert np.array_equal(unseen, missing)
    assert np.isfinite(unseen).all()


def test_a_reloaded_booster_with_its_spec_predicts_the_same(split):
    import lightgbm as lgb

    model = train_model(split, FEATURES, fast_settings())
    booster = lgb.Booster(model_str=model.booster.model_to_string())
    spec = ModelSpec.from_dict(model.spec.to_dict())
    # Columns in another order and extra columns do not matter: the spec picks and orders them.
    shuffled = split.holdout[list(reversed(split.holdout.columns))]

    assert spec == model.spec
    assert np.array_equal(
        predict_proba((booster, spec), shuffled), predict_proba(model, split.holdout)
    )
    assert len(predict_proba(model, split.holdout.iloc[:0])) == 0


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (["signal", "age_band"], "protected attribute(s) age_band may never be model inputs"),
        (["gender", "region", "plan"], "protected attribute(s) gender, region"),
        (["signal", "churned_30d"], "label or key column(s) churned_30d cannot be features"),
        (["subscriber_id", "signal"], "label or key column(s) subscriber_id"),
        (["signal", "signal"], "feature(s) listed more than once: signal"),
        (["signal", "tenure_days"], "feature(s) not in the training frame: tenure_days"),
        ([], "the feature list is empty"),
    ],
)
def test_training_refuses_a_bad_feature_list(split, features, message):
    with pytest.raises(FeatureListError) as raised:
        train_model(split, features, fast_settings())

    assert message in str(raised.value)


def test_scoring_a_frame_without_a_model_input_fails_clearly(split):
    model = train_model(split, FEATURES, fast_settings())

    with pytest.raises(FeatureListError, match="the frame lacks model input"):
        predict_proba(model, split.holdout.drop(columns="noise"))


# ----------------------------------------------------------------------------- quality


def test_quality_on_a_simulated_world_is_near_the_best_achievable(churn_home: Settings):
    """3,000 subscribers × 240 days through Feast: the holdout AUC is real and calibrated.

    At this size the holdout has ~150 churners, so the AUC carries ±0.03 of noise; measured:
    0.66 against a best achievable 0.79 (the true probabilities include an unobservable frailty).
    """
    from tasks.data.sim_population import WorldSpec
    from tasks.data.simulate import simulate_world
    from tasks.features.frames import LABEL, build_training_frame
    from tasks.features.store import apply_feature_repo
    from tasks.features.tables import build_feature_tables

    spec = WorldSpec(subscribers=3000, days=240, start=date(2025, 1, 1), seed=7)
    simulate_world(spec, churn_home.source_dir, churn_home.truth_dir)
    apply_feature_repo(churn_home)
    build_feature_tables(churn_home)
    frame = build_training_frame(churn_home, spec.end)
    features = frame.column_names[3 : frame.column_names.index(LABEL)]

    split = split_by_time(frame, churn_home.holdout_snapshots, churn_home.validation_snapshots)
    model = train_model(split, features, churn_home)
    metrics = holdout_metrics(
        split.holdout[LABEL],
        predict_proba(model, split.holdout),
        split.holdout["snapshot_date"],
        churn_home.retention_capacity // 5,
    )
    best = best_achievable_auc(churn_home.truth_dir, split.holdout)

    assert len(features) == 31 and not {"age_band", "gender", "region"} & set(features)
    assert best is not None and 0.7 < best < 0.9
    assert 0.6 < metrics["roc_auc"] < best
    assert best - metrics["roc_auc"] < 0.2
    assert metrics["lift_at_k"] > 1.5
    assert metrics["calibration_error"] < 0.02
    assert abs(predict_proba(model, split.holdout).mean() - metrics["base_rate"]) < 0.01
    assert best_achievable_auc(Path(churn_home.home / "no-truth"), split.holdout) is None


# ----------------------------------------------------------------------------- recency weights


def test_recency_weights_halve_every_half_life_back_from_the_newest_snapshot(split):
    from tasks.training.model_spec import recency_weights

    assert recency_weights(split.train, None) is None
    weights = recency_weights(split.train, 14.0)
    days = pd.to_datetime(split.train["snapshot_date"])
    age = (days.max() - days).dt.days.to_numpy()
    assert weights.dtype == np.float32 and len(weights) == len(split.train)
    assert np.allclose(weights[age == 0], 1.0)
    assert np.allclose(weights[age == 14], 0.5)
    assert np.allclose(weights[age == 28], 0.25)


def test_weighted_training_is_deterministic_recorded_and_another_model(split):
    plain = train_model(split, FEATURES, fast_settings(training_recency_half_life_days=None))
    settings = fast_settings(training_recency_half_life_days=7.0)
    first, second = train_model(split, FEATURES, settings), train_model(split, FEATURES, settings)
    assert first.booster.model_to_string() == second.booster.model_to_string()
    assert first.params["recency_half_life_days"] == 7.0
    assert "recency_half_life_days" not in plain.params
    assert not np.array_equal(
        predict_proba(first, split.holdout), predict_proba(plain, split.holdout)
    )


@pytest.mark.parametrize("said", ["off", "none", "OFF", ""])
def test_equal_weights_can_be_asked_for_by_name(monkeypatch, said: str) -> None:
    monkeypatch.setenv("CHURN_TRAINING_RECENCY_HALF_LIFE_DAYS", said)
    assert Settings().training_recency_half_life_days is None


def test_a_half_life_that_is_not_positive_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("CHURN_TRAINING_RECENCY_HALF_LIFE_DAYS", "0")
    with pytest.raises(ValueError, match="training_recency_half_life_days"):
        Settings()
