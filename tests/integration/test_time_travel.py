"""Frames built at D do not change when the world goes on past D: nothing after a snapshot leaks into it."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from tasks.data.sim_population import WorldSpec
from tasks.features.frames import build_training_frame, write_frame
from tasks.features.tables import FEATURE_TABLES, read_feature_day

from .conftest import WORLD_START, make_world

pytestmark = pytest.mark.integration


def test_training_frame_is_byte_identical_after_more_days(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CHURN_HOME", str(tmp_path))  # restored after the test
    short = make_world(
        tmp_path / "short", WorldSpec(subscribers=500, days=160, start=WORLD_START, seed=5)
    )
    as_of = WORLD_START + timedelta(days=159)
    before = write_frame(
        build_training_frame(short.settings, as_of), tmp_path / "before.parquet"
    ).read_bytes()
    short_days = {
        name: read_feature_day(short.settings, name, as_of).to_pandas() for name in FEATURE_TABLES
    }

    longer = make_world(
        tmp_path / "longer", WorldSpec(subscribers=500, days=200, start=WORLD_START, seed=5)
    )
    after = write_frame(
        build_training_frame(longer.settings, as_of), tmp_path / "after.parquet"
    ).read_bytes()

    assert before == after
    # The short world ends on as_of: its snapshot of that day can only use data up to that day.
    # The longer world's snapshot of the same day must hold exactly the same values.
    for name, expected in short_days.items():
        pd.testing.assert_frame_equal(
            read_feature_day(longer.settings, name, as_of).to_pandas(), expected
        )
