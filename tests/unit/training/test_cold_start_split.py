"""The cold start's split by subscriber: disjoint, stratified, stable, and refused when thin."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from tasks.training.cold_start import (
    HOLDOUT_SHARE,
    VALIDATION_SHARE,
    cold_start_note,
    split_by_subscriber,
)
from tasks.training.time_split import LABEL, TrainingDataError

DAY = date(2026, 11, 29)


def frame(n: int, churn_rate: float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(100_001, 100_001 + 10 * n), size=n, replace=False)
    return pd.DataFrame(
        {
            "subscriber_id": ids.astype(np.int64),
            "snapshot_date": [DAY] * n,
            "tenure_days": rng.integers(0, 2000, n),
            LABEL: (rng.random(n) < churn_rate).astype(np.int64),
        }
    )


def test_slices_are_disjoint_cover_everyone_and_keep_the_churn_rate() -> None:
    data = frame(7000, 0.26)
    split = split_by_subscriber(data)
    parts = [split.train, split.validation, split.holdout]
    ids = [set(p["subscriber_id"]) for p in parts]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == set(data["subscriber_id"])
    assert len(split.holdout) == pytest.approx(HOLDOUT_SHARE * len(data), abs=2)
    assert len(split.validation) == pytest.approx(VALIDATION_SHARE * len(data), abs=2)
    rate = data[LABEL].mean()
    for part in parts:
        assert part[LABEL].mean() == pytest.approx(rate, abs=0.002)  # stratified
    assert split.train_days == split.validation_days == split.holdout_days == [DAY]
    assert split.purged_days == []


def test_a_subscriber_keeps_its_slice_whatever_the_row_order_or_the_rest() -> None:
    data = frame(3000, 0.3)
    first = split_by_subscriber(data)
    again = split_by_subscriber(data.sample(frac=1.0, random_state=4))
    assert set(first.holdout["subscriber_id"]) == set(again.holdout["subscriber_id"])
    # Another seed is another split.
    other = split_by_subscriber(data, seed=99)
    assert set(first.holdout["subscriber_id"]) != set(other.holdout["subscriber_id"])


def test_too_few_churned_subscribers_are_refused_with_the_counts() -> None:
    data = frame(400, 0.0)
    data.loc[:5, LABEL] = 1  # six churned: fewer than five per slice
    with pytest.raises(TrainingDataError, match=r"churned and .* not churned subscribers"):
        split_by_subscriber(data)


def test_the_model_card_says_the_guarantee_is_weaker() -> None:
    note = cold_start_note(DAY, split_by_subscriber(frame(2000, 0.25)))
    assert "split by subscriber, not by time" in note
    assert "weaker guarantee" in note and str(DAY) in note


def test_the_card_counts_leavers_the_day_cannot_hold() -> None:
    split = split_by_subscriber(frame(2000, 0.25))
    assert "not training rows" not in cold_start_note(DAY, split)
    note = cold_start_note(DAY, split, unused=120)
    assert "120 of the export's leavers are not training rows" in note
    assert "left on or before 2026-11-29, or signed up after it" in note
