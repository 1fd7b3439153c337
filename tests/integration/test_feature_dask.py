"""The feature build on a Dask cluster: its shards on the workers, the same partitions and states.

A LocalCluster of two worker processes (``CHURN_FEATURE_RUNNER=dask`` without an address), the
random worlds of the unit tests, shards of three subscribers; the reference is the same builds in
this process with one shard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.core.settings import Settings
from tasks.features.tables import build_feature_tables
from tests.unit.features.test_feature_shards import assert_same_as_one_shard, sharded
from tests.unit.features.test_incremental import (
    day,
    keeping,
    random_world,
    reference_home,
    write_world,
)

pytestmark = pytest.mark.integration


def test_shards_built_on_dask_workers_equal_the_single_process_build(
    churn_home: Settings, tmp_path: Path
) -> None:
    write_world(churn_home, random_world(np.random.default_rng(31)))
    on_dask = keeping(sharded(churn_home, 3), 1000).model_copy(
        update={"feature_runner": "dask", "model_threads": 2}
    )
    ref = keeping(reference_home(tmp_path, churn_home), 1000)
    # A backfill in chunks (the carry between a shard's chunks), then two nights.
    for start, end, chunk_days in [
        (day(95), day(104), 4),
        (day(105), day(105), 31),
        (day(106), day(106), 31),
    ]:
        summary = build_feature_tables(on_dask, start, end, specs={}, chunk_days=chunk_days)
        expected = build_feature_tables(ref, start, end, specs={}, chunk_days=chunk_days)
        assert summary.rows == expected.rows
    assert_same_as_one_shard(on_dask, ref, [day(o) for o in range(95, 107)])
