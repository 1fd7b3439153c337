"""Nightly scoring: shards, tiers, ranking, signature and feature checks, one shard end to end."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.audit.log_schema import BATCH_COLUMNS, CHAMPION, SHADOW
from tasks.audit.prediction_log import PredictionLogWriter
from tasks.core.errors import ContractViolation, DataContractError
from tasks.core.schema import Column, TableSpec
from tasks.core.settings import Settings
from tasks.features.feast_offline import PARTITION_KEY
from tasks.features.frames import ViewRead, present_column
from tasks.features.tables import as_of_timestamp
from tasks.scoring.high_risk import select_high_risk
from tasks.scoring.models import ModelSignatureError, ScoringModel, check_signature
from tasks.scoring.reasons import top_reasons
from tasks.scoring.shards import (
    ScoringContext,
    Shard,
    candidate_schema,
    check_scoring_features,
    explain_candidates,
    plan_shards,
    rank_by_revenue,
    risk_tiers,
    score_shard,
)
from tasks.training.model_spec import ModelSpec, model_inputs

# ----------------------------------------------------------------------------- shards


def assert_well_cut(shards: list[Shard], ids: list[int], shard_rows: int) -> None:
    """Shards are numbered 0.., contiguous, ascending, distinct, cover every id once, ≤ shard_rows."""
    expected = sorted(set(ids))
    assert [s.index for s in shards] == list(range(len(shards)))
    flat = [i for s in shards for i in s.subscriber_ids.to_pylist()]
    assert flat == expected  # ascending, distinct, every id exactly once, in shard order
    for shard in shards:
        values = shard.subscriber_ids.to_pylist()
        assert 1 <= len(values) <= shard_rows
        assert shard.id_range == (values[0], values[-1])
    # Every shard but the last is full: contiguous slices of the ordered ids, no gaps.
    assert all(len(s.subscriber_ids) == shard_rows for s in shards[:-1])
    for before, after in pairwise(shards):
        assert before.id_range[1] < after.id_range[0]


@pytest.mark.parametrize(
    ("ids", "shard_rows"),
    [
        (list(range(1, 11)), 3),  # sorted, ragged last shard
        (list(range(1, 10)), 3),  # sorted, exact multiple
        ([9, 2, 7, 1, 5, 3], 4),  # unsorted
        ([5, 5, 1, 3, 3, 3, 2, 8, 1], 2),  # duplicated
        ([42], 10),  # one id, shard bigger than the base
        ([4, 1, 3, 2], 1),  # one id per shard
        ([1_000_000_007, 3, 2**40, 17], 3),  # large ids stay int64
    ],
)
def test_plan_shards_cuts_contiguous_ascending_distinct_shards(ids, shard_rows):
    shards = plan_shards(pa.array(ids, pa.int64()), shard_rows)

    assert_well_cut(shards, ids, shard_rows)
    assert len(shards) == -(-len(set(ids)) // shard_rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_shards_on_a_shuffled_chunked_base_with_repeats(seed):
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 5_000), size=3_000, replace=True)  # repeats on purpose
    chunks = np.array_split(ids, 7)
    chunked = pa.chunked_array([pa.array(c, pa.int64()) for c in chunks])

    shards = plan_shards(chunked, 256)

    assert_well_cut(shards, ids.tolist(), 256)
    assert all(s.subscriber_ids.type == pa.int64() for s in shards)


def test_plan_shards_of_nobody_is_no_shard():
    assert plan_shards(pa.array([], pa.int64()), 100) == []
    assert plan_shards(pa.chunked_array([], pa.int64()), 100) == []


# ----------------------------------------------------------------------------- tiers


def test_risk_tiers_thresholds_are_inclusive():
    p = np.array([0.0, 0.0399999, 0.04, 0.0999999, 0.1, 0.5, 1.0])

    tiers = risk_tiers(p, medium=0.04, high=0.10)

    assert tiers.type == pa.string()
    assert tiers.to_pylist() == ["low", "low", "medium", "medium", "high", "high", "high"]


def test_risk_tiers_of_no_rows_is_an_empty_string_array():
    tiers = risk_tiers(np.empty(0), medium=0.2, high=0.5)

    assert tiers.type == pa.string()
    assert len(tiers) == 0


# ----------------------------------------------------------------------------- ranking


def test_rank_by_revenue_breaks_ties_by_probability_then_lowest_id():
    revenue = np.array([10.0, 20.0, 20.0, 20.0, 5.0, 20.0])
    probability = np.array([0.9, 0.2, 0.4, 0.2, 0.9, 0.2])
    ids = np.array([1, 30, 40, 10, 2, 20])

    order = rank_by_revenue(revenue, probability, ids, k=10)  # k larger than n

    # 20 @ 0.4 (id 40); then 20 @ 0.2 by id 10, 20, 30; then 10; then 5.
    assert order.tolist() == [2, 3, 5, 1, 0, 4]
    assert order.dtype == np.int64


def test_rank_by_revenue_keeps_only_the_top_k():
    revenue = np.array([1.0, 3.0, 2.0, 3.0])
    probability = np.array([0.1, 0.3, 0.2, 0.3])
    ids = np.array([7, 9, 8, 5])

    assert rank_by_revenue(revenue, probability, ids, k=2).tolist() == [3, 1]
    assert rank_by_revenue(revenue, probability, ids, k=0).tolist() == []


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 7, 50, 199, 200, 250])
def test_rank_by_revenue_is_a_full_sort_cut_at_k(seed, k):
    # Few distinct revenues, so ties straddle the cut; some NaN revenues (no monthly charge).
    rng = np.random.default_rng(seed)
    revenue = rng.integers(0, 12, size=200).astype(np.float64)
    revenue[rng.random(200) < 0.1] = np.nan
    probability = rng.integers(0, 4, size=200) / 4
    ids = rng.permutation(1_000)[:200]

    order = rank_by_revenue(revenue, probability, ids, k)

    full = np.lexsort((ids, -probability, -revenue))
    assert order.tolist() == full[:k].tolist()


def test_rank_by_revenue_with_fewer_real_revenues_than_k_ranks_the_nans_last():
    revenue = np.array([np.nan, 2.0, np.nan, 1.0])
    order = rank_by_revenue(revenue, np.array([0.5, 0.1, 0.9, 0.2]), np.array([1, 2, 3, 4]), k=3)

    assert order.tolist()[:2] == [1, 3]
    assert len(order) == 3


def test_rank_by_revenue_of_nobody_is_empty():
    order = rank_by_revenue(np.empty(0), np.empty(0), np.empty(0, np.int64), k=5)

    assert order.tolist() == []
    assert order.dtype == np.int64


# ----------------------------------------------------------------------------- signature


def test_check_signature_accepts_the_same_features_in_another_order():
    spec = ModelSpec(features=["a", "b", "c"])

    check_signature("churn", 3, spec, ["c", "a", "b"])


def test_check_signature_names_missing_and_unused_features():
    spec = ModelSpec(features=["a", "b", "gone"])

    with pytest.raises(ModelSignatureError) as caught:
        check_signature("churn", 3, spec, ["b", "a", "new_one", "new_two"])

    message = str(caught.value)
    assert "churn version 3" in message
    assert "the feature service lacks gone" in message
    assert "the model does not take new_one, new_two" in message


@pytest.mark.parametrize(
    ("features", "said", "not_said"),
    [
        (["a"], "the feature service lacks b", "does not take"),  # only missing
        (["a", "b", "x"], "the model does not take x", "lacks"),  # only unused
    ],
)
def test_check_signature_names_only_what_is_wrong(features, said, not_said):
    with pytest.raises(ModelSignatureError) as caught:
        check_signature("churn", 1, ModelSpec(features=["a", "b"]), features)

    assert said in str(caught.value)
    assert not_said not in str(caught.value)


# ----------------------------------------------------------------------------- views and data

SCORE_DAY = date(2026, 3, 10)
PROFILE = "subscriber_profile"
ACTIVITY = "subscriber_activity_30d"
PLANS = ["basic", "standard", "premium"]
PROFILE_COLUMNS = ("tenure_days", "plan", "monthly_charge")
ACTIVITY_COLUMNS = ("support_calls_30d", "data_gb_30d")
FEATURES = [*PROFILE_COLUMNS, *ACTIVITY_COLUMNS]
ARROW = {"Int32": pa.int32(), "Float32": pa.float32(), "String": pa.string()}


def _contract(name: str, columns: tuple[Column, ...]) -> TableSpec:
    return TableSpec(
        name=name,
        grain="one row per subscriber in service per snapshot day",
        columns=(
            Column("subscriber_id", pa.int64(), min=1),
            Column("snapshot_ts", pa.timestamp("us", tz="UTC")),
            *columns,
        ),
        keys=("subscriber_id", "snapshot_ts"),
        date_column="snapshot_ts",
        partitioned=True,
    )


def make_reads(root: Path) -> list[ViewRead]:
    """Two views with a one-day TTL, contracts as the feature repo declares them."""
    profile = ViewRead(
        name=PROFILE,
        directory=root / PROFILE,
        keys=("subscriber_id",),
        timestamp_field="snapshot_ts",
        columns=PROFILE_COLUMNS,
        dtypes=("Int32", "String", "Float32"),
        ttl=timedelta(days=1),
        contract=_contract(
            PROFILE,
            (
                Column("tenure_days", pa.int32(), min=0),
                Column("plan", pa.string(), allowed=tuple(PLANS)),
                Column("monthly_charge", pa.float32(), min=0, max=500),
            ),
        ),
    )
    activity = ViewRead(
        name=ACTIVITY,
        directory=root / ACTIVITY,
        keys=("subscriber_id",),
        timestamp_field="snapshot_ts",
        columns=ACTIVITY_COLUMNS,
        dtypes=("Int32", "Float32"),
        ttl=timedelta(days=1),
        contract=_contract(
            ACTIVITY,
            (
                Column("support_calls_30d", pa.int32(), min=0),
                Column("data_gb_30d", pa.float32(), nullable=True, min=0),
            ),
        ),
    )
    return [profile, activity]


def generated_features(n: int, seed: int) -> pd.DataFrame:
    """Feature values of subscribers 1..n; risk rises with support calls, the basic plan, low tenure."""
    rng = np.random.default_rng(seed)
    data_gb = rng.gamma(2.0, 5.0, size=n).astype(np.float32)
    data_gb[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "subscriber_id": np.arange(1, n + 1, dtype=np.int64),
            "tenure_days": rng.integers(0, 2_000, size=n).astype(np.int32),
            "plan": rng.choice(PLANS, size=n),
            "monthly_charge": np.round(rng.uniform(20, 120, size=n), 2).astype(np.float32),
            "support_calls_30d": rng.poisson(1.5, size=n).astype(np.int32),
            "data_gb_30d": data_gb,
        }
    )


SPEC = ModelSpec(features=FEATURES, categorical=["plan"], categories={"plan": sorted(PLANS)})


def train_booster(seed: int, rounds: int) -> lgb.Booster:
    """A tiny deterministic booster on generated data, with ``plan`` as a native categorical."""
    frame = generated_features(3_000, seed)
    rng = np.random.default_rng(seed + 100)
    logit = (
        -3.0
        + 0.7 * frame["support_calls_30d"]
        + 0.9 * (frame["plan"] == "basic")
        - frame["tenure_days"] / 1_000
    )
    label = (rng.random(len(frame)) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    params = {
        "objective": "binary",
        "num_leaves": 7,
        "min_data_in_leaf": 30,
        "learning_rate": 0.2,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    data = lgb.Dataset(model_inputs(frame, SPEC), label=label, categorical_feature=["plan"])
    return lgb.train(params, data, num_boost_round=rounds)


@pytest.fixture(scope="module")
def champion() -> lgb.Booster:
    return train_booster(seed=1, rounds=25)


@pytest.fixture(scope="module")
def challenger() -> lgb.Booster:
    return train_booster(seed=2, rounds=10)


def write_partition(read: ViewRead, day: date, rows: pd.DataFrame) -> None:
    """One ``snapshot_date=`` partition of ``read``, stamped as the build stamps it, sorted by id."""
    rows = rows.sort_values("subscriber_id")
    table = pa.table(
        {
            "subscriber_id": pa.array(rows["subscriber_id"], pa.int64()),
            "snapshot_ts": pa.array(
                [as_of_timestamp(day)] * len(rows), pa.timestamp("us", tz="UTC")
            ),
            **{
                c: pa.array(rows[c].tolist(), ARROW[t], from_pandas=True)
                for c, t in zip(read.columns, read.dtypes, strict=True)
            },
        }
    )
    part = read.directory / f"{PARTITION_KEY}={day.isoformat()}"
    part.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, part / "part_0.parquet", row_group_size=8)


# Subscribers 1..40 in service; the shard under test holds 16..30 (plan_shards with 15 rows).
BASE = 40
NO_ACTIVITY = 17  # its activity row is two days old: outside the one-day TTL, so not scored
YESTERDAY_ONLY = 23  # today's activity build missed it; yesterday's row is within the TTL


@pytest.fixture
def world(tmp_path: Path) -> tuple[list[ViewRead], pd.DataFrame]:
    """Feature partitions around SCORE_DAY and the values a correct read must see per subscriber.

    The profile view has rows on every day from two days before to one day after the score day
    (the day after is in the future and must be ignored); the activity view has today's rows for
    all but two subscribers, yesterday's for one of them, and only a stale row for the other.
    """
    reads = make_reads(tmp_path / "features")
    profile, activity = reads
    today = generated_features(BASE, seed=7)
    noise = generated_features(BASE, seed=8)  # different values on the days that must not win
    for offset in (-2, -1, 1):
        write_partition(profile, SCORE_DAY + timedelta(days=offset), noise)
    write_partition(profile, SCORE_DAY, today)
    write_partition(activity, SCORE_DAY + timedelta(days=-2), noise)
    write_partition(activity, SCORE_DAY + timedelta(days=1), noise)
    write_partition(
        activity, SCORE_DAY, today[~today["subscriber_id"].isin([NO_ACTIVITY, YESTERDAY_ONLY])]
    )
    yesterday = today[today["subscriber_id"] == YESTERDAY_ONLY]
    write_partition(activity, SCORE_DAY - timedelta(days=1), yesterday)
    return reads, today


def make_context(reads: list[ViewRead], models: list[ScoringModel], capacity: int = 4):
    return ScoringContext(
        score_date=SCORE_DAY,
        at=as_of_timestamp(SCORE_DAY),
        reads=reads,
        models=models,
        capacity=capacity,
        medium_threshold=0.2,
        high_threshold=0.5,
        reason_count=3,
    )


def middle_shard() -> Shard:
    shards = plan_shards(pa.array(np.arange(1, BASE + 1), pa.int64()), 15)
    assert shards[1].id_range == (16, 30)
    return shards[1]


def expected_rows(today: pd.DataFrame, ids: list[int]) -> pd.DataFrame:
    return today.set_index("subscriber_id").loc[ids].reset_index()


# ----------------------------------------------------------------------------- scoring features


def feature_frame(**columns: list) -> pa.Table:
    """A scoring frame in miniature: ids 1..n, both views present unless a marker says otherwise."""
    n = len(next(iter(columns.values())))
    values = {
        "tenure_days": pa.array([10] * n, pa.int32()),
        "plan": pa.array(["basic"] * n, pa.string()),
        "monthly_charge": pa.array([50.0] * n, pa.float32()),
        "support_calls_30d": pa.array([1] * n, pa.int32()),
        "data_gb_30d": pa.array([2.0] * n, pa.float32()),
        present_column(PROFILE): pa.array([True] * n),
        present_column(ACTIVITY): pa.array([True] * n),
    }
    for name, given in columns.items():
        values[name] = pa.array(given, values[name].type)
    return pa.table({"subscriber_id": pa.array(range(1, n + 1), pa.int64()), **values})


def test_check_scoring_features_accepts_valid_values_and_allowed_nulls(tmp_path):
    frame = feature_frame(data_gb_30d=[None, 0.0, 3.5], monthly_charge=[0.0, 500.0, 20.0])

    check_scoring_features(frame, make_reads(tmp_path))


@pytest.mark.parametrize(
    ("columns", "violation"),
    [
        # below a minimum
        (
            {"tenure_days": [-1, 5, -3, 2]},
            ContractViolation(PROFILE, "tenure_days", ">= 0", 2),
        ),
        # above a maximum
        (
            {"monthly_charge": [500.5, 20.0, 20.0, 20.0]},
            ContractViolation(PROFILE, "monthly_charge", "<= 500", 1),
        ),
        # not one of the allowed values (case matters)
        (
            {"plan": ["basic", "gold", "Gold", "premium"]},
            ContractViolation(PROFILE, "plan", "in {basic, standard, premium}", 2),
        ),
        # null in a column that may not be null, where the view is present
        (
            {"support_calls_30d": [None, None, None, 4]},
            ContractViolation(ACTIVITY, "support_calls_30d", "not null", 3),
        ),
    ],
)
def test_check_scoring_features_names_column_rule_and_count(tmp_path, columns, violation):
    with pytest.raises(DataContractError) as caught:
        check_scoring_features(feature_frame(**columns), make_reads(tmp_path))

    assert caught.value.violations == [violation]
    assert str(violation) in str(caught.value)
    assert f"{violation.count:,} rows" in str(caught.value)


def test_check_scoring_features_reports_every_broken_rule_at_once(tmp_path):
    frame = feature_frame(
        tenure_days=[-1, 1, 1],
        plan=["basic", None, "gold"],
        support_calls_30d=[1, None, -2],
    )

    with pytest.raises(DataContractError) as caught:
        check_scoring_features(frame, make_reads(tmp_path))

    assert sorted(caught.value.violations, key=str) == sorted(
        [
            ContractViolation(PROFILE, "tenure_days", ">= 0", 1),
            ContractViolation(PROFILE, "plan", "not null", 1),
            ContractViolation(PROFILE, "plan", "in {basic, standard, premium}", 1),
            ContractViolation(ACTIVITY, "support_calls_30d", "not null", 1),
            ContractViolation(ACTIVITY, "support_calls_30d", ">= 0", 1),
        ],
        key=str,
    )


def test_check_scoring_features_ignores_nulls_of_a_view_absent_for_that_subscriber(tmp_path):
    # Subscriber 2 has no activity row within the TTL: its nulls are "no features", not a breach.
    frame = feature_frame(
        support_calls_30d=[1, None, 2],
        data_gb_30d=[1.0, None, 2.0],
        **{present_column(ACTIVITY): [True, False, True]},
    )

    check_scoring_features(frame, make_reads(tmp_path))


# ----------------------------------------------------------------------------- one shard end to end


def test_score_shard_scores_a_shard_end_to_end(world, champion, challenger):
    reads, today = world
    shard = middle_shard()
    models = [
        ScoringModel("churn", 3, CHAMPION, champion, SPEC),
        ScoringModel("churn", 2, SHADOW, challenger, SPEC),
    ]
    ctx = make_context(reads, models, capacity=4)

    result = score_shard(ctx, shard)

    # One subscriber lacks the activity view within its TTL: counted, named, not scored.
    reason = f"no {ACTIVITY} features within TTL (1 day, 0:00:00)"
    assert result.index == 1
    assert result.subscribers == 15
    assert result.not_scored == {reason: 1}
    assert result.not_scored_examples == {reason: [NO_ACTIVITY]}
    scored_ids = [i for i in range(16, 31) if i != NO_ACTIVITY]

    # Probabilities are the boosters' own predictions on the same inputs, for both roles.
    expected = expected_rows(today, scored_ids)
    inputs = model_inputs(expected, SPEC)
    p = np.asarray(champion.predict(inputs), dtype=np.float64)
    shadow_p = np.asarray(challenger.predict(inputs), dtype=np.float64)
    assert not np.array_equal(p, shadow_p)
    charge = expected["monthly_charge"].to_numpy().astype(np.float64)
    revenue = p * charge
    top = sorted(range(len(p)), key=lambda r: (-revenue[r], -p[r], scored_ids[r]))[:4]
    rest = [r for r in range(len(p)) if r not in top]

    # The log batches: exactly the writer's columns, without reasons (the night explains its
    # top once every shard is in). The shadow logs every scored subscriber; the champion all
    # but its top 4 by revenue at risk, held back as candidates for the high-risk file.
    assert set(result.log_batches) == {CHAMPION, SHADOW}
    shadow, held_out = result.log_batches[SHADOW], result.log_batches[CHAMPION]
    for batch in (shadow, held_out):
        assert tuple(batch.column_names) == BATCH_COLUMNS
        assert batch.column("reasons").null_count == batch.num_rows
    assert shadow.column("subscriber_id").to_pylist() == scored_ids
    assert held_out.column("subscriber_id").to_pylist() == [scored_ids[r] for r in rest]
    np.testing.assert_array_equal(shadow.column("probability"), shadow_p)
    np.testing.assert_array_equal(held_out.column("probability"), p[rest])
    for role, probs, rows in ((CHAMPION, p, rest), (SHADOW, shadow_p, range(len(p)))):
        tiers = np.where(probs >= 0.5, "high", np.where(probs >= 0.2, "medium", "low"))
        assert result.log_batches[role].column("risk_tier").to_pylist() == tiers[rows].tolist()
        # Tier counts are over every scored subscriber, candidates included.
        assert result.tiers[role] == {t: int((tiers == t).sum()) for t in ("low", "medium", "high")}

    # The features struct holds today's values (yesterday's for the one today's build missed),
    # never the stale or the future partition's, with the frame's types.
    features = shadow.column("features")
    assert [f.name for f in features.type] == FEATURES
    assert features.type.field("tenure_days").type == pa.int32()
    assert features.type.field("monthly_charge").type == pa.float32()
    for seen, want in zip(features.to_pylist(), expected.to_dict("records"), strict=True):
        assert seen["tenure_days"] == want["tenure_days"]
        assert seen["plan"] == want["plan"]
        assert seen["support_calls_30d"] == want["support_calls_30d"]
        assert np.float32(seen["monthly_charge"]) == want["monthly_charge"]
        if np.isnan(want["data_gb_30d"]):
            assert seen["data_gb_30d"] is None
        else:
            assert np.float32(seen["data_gb_30d"]) == want["data_gb_30d"]
    assert held_out.column("features") == features.take(rest)

    # Candidates for the high-risk file: the top 4, best first, with their numbers and features.
    candidates = result.candidates
    assert candidates.schema == candidate_schema(features.type)
    assert candidates.column("subscriber_id").to_pylist() == [scored_ids[r] for r in top]
    np.testing.assert_array_equal(candidates.column("probability"), p[top])
    np.testing.assert_array_equal(candidates.column("monthly_charge"), charge[top])
    np.testing.assert_array_equal(candidates.column("revenue_at_risk"), revenue[top])
    assert candidates.column("features") == features.take(top)

    # Explained (as the night does with every shard's candidates): reasons from the booster's
    # SHAP on the same inputs; the high-risk file takes them as they are.
    explained = explain_candidates(models[0], candidates, capacity=4, reason_count=3)
    said = top_reasons(champion, inputs.iloc[top].reset_index(drop=True), 3)
    assert explained.column("reasons").to_pylist() == said
    assert all(said)  # the riskiest subscribers have at least one reason
    rows = select_high_risk(explained, capacity=4, model_version=3, day=SCORE_DAY)
    assert rows.column("subscriber_id").to_pylist() == [scored_ids[r] for r in top]
    assert rows.column("reason_1").to_pylist() == [r[0] for r in said]
    assert set(result.seconds) >= {"features", "predict"}


def test_explain_candidates_explains_the_nights_top_only(world, champion):
    # Two shards' candidates: the night's top 3 by revenue at risk get reasons, the rest none.
    reads, today = world
    model = ScoringModel("churn", 3, CHAMPION, champion, SPEC)
    ctx = make_context(reads, [model], capacity=3)
    shards = plan_shards(pa.array(np.arange(1, BASE + 1), pa.int64()), 15)
    pool = pa.concat_tables([score_shard(ctx, shard).candidates for shard in shards[:2]])
    assert len(pool) == 6

    explained = explain_candidates(model, pool, capacity=3, reason_count=2)

    ids = pool.column("subscriber_id").to_pylist()
    revenue = pool.column("revenue_at_risk").to_numpy()
    p = pool.column("probability").to_numpy()
    night = sorted(range(6), key=lambda r: (-revenue[r], -p[r], ids[r]))[:3]
    reasons = explained.column("reasons").to_pylist()
    assert [r for r in range(6) if reasons[r] is not None] == sorted(night)
    inputs = model_inputs(expected_rows(today, [ids[r] for r in night]), SPEC)
    assert [reasons[r] for r in night] == top_reasons(champion, inputs, 2)
    assert explained.drop_columns(["reasons"]) == pool


def test_explain_candidates_of_nobody_is_an_empty_table(world, champion):
    model = ScoringModel("churn", 3, CHAMPION, champion, SPEC)
    empty = candidate_schema(pa.struct([("tenure_days", pa.int32())])).empty_table()

    explained = explain_candidates(model, empty, capacity=4, reason_count=3)

    assert explained.num_rows == 0 and explained.column_names[-1] == "reasons"


def test_score_shard_with_a_capacity_above_the_shard_explains_every_scored_row(world, champion):
    reads, _ = world
    ctx = make_context(reads, [ScoringModel("churn", 3, CHAMPION, champion, SPEC)], capacity=100)

    result = score_shard(ctx, middle_shard())

    # Every scored row is a candidate: the champion's log batch holds none of them.
    assert set(result.log_batches) == {CHAMPION}
    assert result.log_batches[CHAMPION].num_rows == 0
    assert len(result.candidates) == 14


def test_score_shard_where_nobody_has_every_view_scores_no_one(world, champion):
    reads, _ = world
    ctx = make_context(reads, [ScoringModel("churn", 3, CHAMPION, champion, SPEC)])
    shard = Shard(0, pa.array([NO_ACTIVITY], pa.int64()))

    result = score_shard(ctx, shard)

    assert result.subscribers == 1
    assert result.not_scored == {f"no {ACTIVITY} features within TTL (1 day, 0:00:00)": 1}
    assert result.log_batches[CHAMPION].num_rows == 0
    assert tuple(result.log_batches[CHAMPION].column_names) == BATCH_COLUMNS
    assert len(result.candidates) == 0
    assert result.tiers[CHAMPION] == {"low": 0, "medium": 0, "high": 0}


def test_score_shard_counts_each_subscriber_once_under_the_first_view_it_lacks(world, champion):
    reads, _ = world
    ctx = make_context(reads, [ScoringModel("churn", 3, CHAMPION, champion, SPEC)])
    # 99 is in no partition at all (lacks both views); 17 lacks only the activity view.
    shard = Shard(0, pa.array([16, NO_ACTIVITY, 99], pa.int64()))

    result = score_shard(ctx, shard)

    no_profile = f"no {PROFILE} features within TTL (1 day, 0:00:00)"
    no_activity = f"no {ACTIVITY} features within TTL (1 day, 0:00:00)"
    assert result.not_scored == {no_profile: 1, no_activity: 1}
    assert result.not_scored_examples == {no_profile: [99], no_activity: [NO_ACTIVITY]}
    # 16 alone is scored: a candidate (the shard's top), so held back from the champion's batch.
    assert result.log_batches[CHAMPION].num_rows == 0
    assert result.candidates.column("subscriber_id").to_pylist() == [16]


def test_score_shard_log_batches_are_accepted_by_the_prediction_log(
    world, champion, challenger, churn_home: Settings
):
    reads, _ = world
    models = [
        ScoringModel("churn", 3, CHAMPION, champion, SPEC),
        ScoringModel("churn", 2, SHADOW, challenger, SPEC),
    ]
    result = score_shard(make_context(reads, models), middle_shard())

    for model in models:
        with PredictionLogWriter(
            churn_home,
            score_date=SCORE_DAY,
            model_name=model.name,
            model_version=model.version,
            role=model.role,
            feature_service="churn_model_v1",
            flow_run_id=None,
            scored_at=datetime(2026, 3, 11, 2, tzinfo=UTC),
        ) as writer:
            writer.write(result.log_batches[model.role])
        stored = pq.read_table(writer.path)
        assert (
            stored.column("subscriber_id").to_pylist()
            == result.log_batches[model.role].column("subscriber_id").to_pylist()
        )
        assert stored.column("reasons").null_count == (10 if model.role == CHAMPION else 14)
