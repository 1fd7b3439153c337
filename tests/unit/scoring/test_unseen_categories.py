"""Categorical values unseen in training: scored as missing, counted per model and feature, reported."""

from __future__ import annotations

import logging
import pickle
from datetime import date
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tasks.audit.log_schema import CHAMPION, SHADOW
from tasks.features.frames import ViewRead
from tasks.scoring.models import ScoringModel
from tasks.scoring.nightly import ScoreSummary
from tasks.scoring.shards import ScoringContext, plan_shards, score_shard
from tasks.scoring.unseen import EXAMPLES, add_unseen, unseen_values, warn_unseen
from tasks.training.model_spec import ModelSpec, model_inputs
from tests.unit.scoring.test_shards import (
    FEATURES,
    SCORE_DAY,
    SPEC,
    generated_features,
    make_context,
    make_reads,
    train_booster,
    write_partition,
)

# Training never saw the premium plan (it is in the feature contract, so scoring accepts it).
SEEN = ["basic", "standard"]
SEEN_SPEC = ModelSpec(features=FEATURES, categorical=["plan"], categories={"plan": SEEN})
SUBSCRIBERS = 60


def booster_without_premium() -> lgb.Booster:
    frame = generated_features(2_000, seed=11)
    frame["plan"] = frame["plan"].replace("premium", "standard")
    rng = np.random.default_rng(12)
    logit = -2.0 + 0.6 * frame["support_calls_30d"] + 1.2 * (frame["plan"] == "basic")
    label = (rng.random(len(frame)) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    params = {
        "objective": "binary",
        "num_leaves": 7,
        "min_data_in_leaf": 30,
        "seed": 11,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    data = lgb.Dataset(model_inputs(frame, SEEN_SPEC), label=label, categorical_feature=["plan"])
    return lgb.train(params, data, num_boost_round=15)


@pytest.fixture(scope="module")
def seen_booster() -> lgb.Booster:
    return booster_without_premium()


@pytest.fixture(scope="module")
def full_booster() -> lgb.Booster:
    return train_booster(seed=2, rounds=10)


@pytest.fixture
def night(tmp_path: Path) -> tuple[list[ViewRead], pd.DataFrame]:
    """Today's partitions of both views for subscribers 1..60, every plan among them."""
    reads = make_reads(tmp_path / "features")
    today = generated_features(SUBSCRIBERS, seed=21)
    for read in reads:
        write_partition(read, SCORE_DAY, today)
    return reads, today


def models(seen: lgb.Booster, full: lgb.Booster) -> list[ScoringModel]:
    return [
        ScoringModel("churn", 4, CHAMPION, seen, SEEN_SPEC),
        ScoringModel("churn", 3, SHADOW, full, SPEC),
    ]


# ----------------------------------------------------------------------------- one shard


def test_score_shard_counts_unseen_values_and_scores_them_as_missing(
    night, seen_booster, full_booster
):
    reads, today = night
    ctx = make_context(reads, models(seen_booster, full_booster), capacity=0)
    shard = plan_shards(pa.array(today["subscriber_id"], pa.int64()), SUBSCRIBERS)[0]

    result = score_shard(ctx, shard)

    premium = today["plan"] == "premium"
    assert 0 < premium.sum() < SUBSCRIBERS
    # The champion never saw premium; the shadow did, so it has nothing to report.
    assert result.unseen == {CHAMPION: {"plan": int(premium.sum())}}
    assert result.unseen_examples == {CHAMPION: {"plan": ["premium"]}}
    # Premium rows get exactly the probability of a missing plan, and nothing fails.
    missing = today.assign(plan=today["plan"].where(~premium, None))
    expected = np.asarray(seen_booster.predict(model_inputs(missing, SEEN_SPEC)), np.float64)
    batch = result.log_batches[CHAMPION]
    assert batch.column("subscriber_id").to_pylist() == today["subscriber_id"].tolist()
    np.testing.assert_array_equal(batch.column("probability").to_numpy(), expected)
    # It goes through Dask: the counts survive pickling.
    again = pickle.loads(pickle.dumps(result))
    assert again.unseen == result.unseen and again.unseen_examples == result.unseen_examples


def test_a_shadow_with_the_champions_spec_reports_the_same_values(night, seen_booster):
    reads, today = night
    twins = [
        ScoringModel("churn", 4, CHAMPION, seen_booster, SEEN_SPEC),
        ScoringModel("churn", 3, SHADOW, seen_booster, SEEN_SPEC),
    ]
    shard = plan_shards(pa.array(today["subscriber_id"], pa.int64()), SUBSCRIBERS)[0]

    result = score_shard(make_context(reads, twins, capacity=0), shard)

    count = int((today["plan"] == "premium").sum())
    assert result.unseen == {CHAMPION: {"plan": count}, SHADOW: {"plan": count}}


def test_shards_add_up_to_the_nights_counts(night, seen_booster, full_booster):
    reads, today = night
    ctx: ScoringContext = make_context(reads, models(seen_booster, full_booster), capacity=2)
    counts: dict[str, dict[str, int]] = {}
    examples: dict[str, dict[str, list[str]]] = {}

    for shard in plan_shards(pa.array(today["subscriber_id"], pa.int64()), 7):
        result = score_shard(ctx, shard)
        add_unseen(counts, examples, result.unseen, result.unseen_examples)

    assert counts == {CHAMPION: {"plan": int((today["plan"] == "premium").sum())}}
    assert examples == {CHAMPION: {"plan": ["premium"]}}


# ----------------------------------------------------------------------------- counting


def test_unseen_values_skips_nulls_and_numeric_features_and_keeps_a_few_distinct_values():
    spec = ModelSpec(
        features=["plan", "channel", "tenure_days"],
        categorical=["plan", "channel"],
        categories={"plan": ["basic", "standard"], "channel": ["app", "web"]},
    )
    plans = ["basic", None, "gold", "gold", "Basic", *[f"p{i}" for i in range(8)], "standard"]
    frame = pa.table(
        {
            "plan": pa.array(plans, pa.string()),
            "channel": pa.array(["app", "web", None, *["web"] * 11], pa.string()),
            "tenure_days": pa.array(range(14), pa.int32()),
        }
    )

    counts, examples = unseen_values(frame, spec)

    # A null is missing, not unseen; case matters; each value is listed once, in order of rows.
    assert counts == {"plan": 11}
    assert examples == {"plan": ["gold", "Basic", "p0", "p1", "p2"]}
    assert len(examples["plan"]) == EXAMPLES


def test_unseen_values_reads_a_dictionary_column_as_its_strings():
    spec = ModelSpec(features=["plan"], categorical=["plan"], categories={"plan": ["basic"]})
    frame = pa.table({"plan": pa.array(["basic", "gold", None]).dictionary_encode()})

    assert unseen_values(frame, spec) == ({"plan": 1}, {"plan": ["gold"]})


def test_add_unseen_sums_counts_and_keeps_at_most_five_distinct_examples():
    counts: dict[str, dict[str, int]] = {}
    examples: dict[str, dict[str, list[str]]] = {}

    add_unseen(counts, examples, {CHAMPION: {"plan": 2}}, {CHAMPION: {"plan": ["a", "b"]}})
    add_unseen(
        counts,
        examples,
        {CHAMPION: {"plan": 5, "channel": 1}, SHADOW: {"plan": 3}},
        {
            CHAMPION: {"plan": ["b", "c", "d", "e", "f"], "channel": ["fax"]},
            SHADOW: {"plan": ["a"]},
        },
    )
    add_unseen(counts, examples, {}, {})

    assert counts == {CHAMPION: {"plan": 7, "channel": 1}, SHADOW: {"plan": 3}}
    assert examples == {
        CHAMPION: {"plan": ["a", "b", "c", "d", "e"], "channel": ["fax"]},
        SHADOW: {"plan": ["a"]},
    }


def test_warn_unseen_warns_once_per_model_and_feature(caplog):
    counts = {CHAMPION: {"plan": 7, "channel": 1}, SHADOW: {"plan": 3}}
    examples = {CHAMPION: {"plan": ["gold"], "channel": ["fax"]}, SHADOW: {"plan": ["gold"]}}

    with caplog.at_level(logging.WARNING, logger="tasks.scoring.unseen"):
        warn_unseen(counts, examples, {CHAMPION: 4, SHADOW: 3}, scored=100)
        warn_unseen({}, {}, {CHAMPION: 4}, scored=100)

    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert messages[0] == (
        "champion v4: 7 of 100 scored subscribers had a plan unseen in training "
        "(scored as missing), e.g. 'gold'"
    )


# ----------------------------------------------------------------------------- the summary


def summary(**unseen) -> ScoreSummary:
    return ScoreSummary(
        score_date=date(2026, 3, 10),
        models=[(4, CHAMPION), (3, SHADOW)],
        subscribers=2_000,
        scored=1_600,
        not_scored={},
        not_scored_examples={},
        tiers={CHAMPION: {"low": 1_600}},
        high_risk_csv=Path("high_risk.csv"),
        high_risk_parquet=Path("high_risk.parquet"),
        high_risk_rows=10,
        log_files=[],
        shards=2,
        **unseen,
    )


def test_summary_markdown_lists_unseen_values_per_model_and_feature():
    text = summary(
        unseen_categories={CHAMPION: {"plan": 400}, SHADOW: {"channel": 16}},
        unseen_examples={CHAMPION: {"plan": ["gold", "a|b"]}, SHADOW: {"channel": ["fax"]}},
    ).markdown()

    assert "**Values unseen in training** (scored as missing):" in text
    assert "| model | feature | subscribers | share of scored | examples |" in text
    assert "| v4 (champion) | plan | 400 | 25.00% | `gold`, `a\\|b` |" in text
    assert "| v3 (shadow) | channel | 16 | 1.00% | `fax` |" in text


def test_summary_markdown_has_no_unseen_section_when_there_are_none():
    assert "unseen" not in summary().markdown()
