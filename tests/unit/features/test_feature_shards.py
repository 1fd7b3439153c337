"""A feature build split by subscriber-id range gives the rows of the whole, whatever the split.

The random worlds of test_incremental (a dozen subscribers, five months of usage); the reference
is the same build in another home with one shard. A sharded partition is read as the
readers read it (every file, in name order): the usage tables equal the reference row for row in
subscriber order, the others once ordered by subscriber (DuckDB's partitioned write fixes no
order there, with or without shards); every stored usage state holds the same rows.
"""

from __future__ import annotations

import logging
import os
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.settings import Settings
from tasks.data import contracts as contracts_module
from tasks.features.feast_offline import partition_files
from tasks.features.tables import FEATURE_TABLES, build_feature_tables
from tasks.features.windows import (
    WINDOW_TABLES,
    IdRange,
    id_ranges,
    state_files,
    state_root,
    stored_state_days,
)
from tests.unit.features.test_incremental import (
    build_plan,
    day,
    keeping,
    random_world,
    reference_home,
    write_world,
)


def sharded(settings: Settings, per_shard: int) -> Settings:
    return settings.model_copy(update={"feature_shard_subscribers": per_shard})


def partition(settings: Settings, name: str, snapshot: date) -> pa.Table | None:
    files = partition_files(settings.features_dir / name, snapshot, snapshot)
    return pq.read_table(files) if files else None


def state(settings: Settings, snapshot: date) -> pa.Table:
    return pq.read_table(state_files(state_root(settings), snapshot)).sort_by("subscriber_id")


def assert_same_as_one_shard(settings: Settings, ref: Settings, days: list[date]) -> None:
    for snapshot in days:
        for name in FEATURE_TABLES:
            got, want = partition(settings, name, snapshot), partition(ref, name, snapshot)
            assert (got is None) == (want is None), (name, snapshot)
            if want is None:
                continue
            assert got.schema == want.schema, (name, snapshot)
            if name not in WINDOW_TABLES:
                got, want = got.sort_by("subscriber_id"), want.sort_by("subscriber_id")
            assert got.equals(want), (name, snapshot)
    assert stored_state_days(state_root(settings)) == stored_state_days(state_root(ref))
    for snapshot in stored_state_days(state_root(ref)):
        assert state(settings, snapshot).equals(state(ref, snapshot)), ("state", snapshot)


# --- the ranges -------------------------------------------------------------------------------


def test_id_ranges_cover_every_id_once_with_open_ends() -> None:
    assert id_ranges(0, 5) == [IdRange()]
    assert id_ranges(10, 10) == [IdRange()]
    ranges = id_ranges(11, 5)
    assert [(r.index, r.count, r.first, r.last) for r in ranges] == [
        (0, 3, None, 5),
        (1, 3, 6, 10),
        (2, 3, 11, None),
    ]
    ids = [-3, 0, 1, 5, 6, 10, 11, 10**12]
    con = duckdb.connect()
    con.register("t", pa.table({"subscriber_id": pa.array(ids, pa.int64())}))
    owned = [
        v
        for r in ranges
        for (v,) in con.sql(f"SELECT subscriber_id FROM t WHERE {r.predicate()}").fetchall()
    ]
    assert sorted(owned) == ids  # every id in exactly one range
    assert IdRange().predicate() is None
    assert [r.stem for r in ranges] == ["part_0000_", "part_0001_", "part_0002_"]
    assert IdRange().stem == "part_"


# --- the property -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "seed"),
    [("forward", 4), ("backfill", 4), ("gap_filled_later", 5), ("random", 6), ("random", 7)],
)
def test_any_split_and_build_order_gives_the_rows_of_one_shard(
    churn_home: Settings, tmp_path: Path, order: str, seed: int
) -> None:
    rng = np.random.default_rng([seed, len(order), 15])
    write_world(churn_home, random_world(rng))
    ref = keeping(reference_home(tmp_path, churn_home), 1000)
    first = int(rng.integers(80, 110))
    days = [day(first + i) for i in range(int(rng.integers(6, 12)))]
    settings = keeping(churn_home, 1000)
    for start, end in build_plan(rng, order, days):
        chunk_days = int(rng.choice([1, 2, 31]))
        # Each build its own split: states written by one split are read by another.
        per_shard = int(rng.choice([1, 2, 3, 5, 100]))
        build_feature_tables(
            sharded(settings, per_shard), start, end, specs={}, chunk_days=chunk_days
        )
        build_feature_tables(ref, start, end, specs={}, chunk_days=chunk_days)
    assert_same_as_one_shard(settings, ref, days)


def test_a_sharded_partition_is_one_file_per_shard_in_id_order(churn_home: Settings) -> None:
    write_world(churn_home, random_world(np.random.default_rng(21)))
    settings = sharded(churn_home, 4)
    build_feature_tables(settings, day(100), day(101), specs={})
    folder = settings.features_dir / "subscriber_usage_90d" / f"snapshot_date={day(101)}"
    names = sorted(p.name for p in folder.glob("*.parquet"))
    assert len(names) >= 2 and all(n.startswith("part_000") for n in names)
    ids = partition(settings, "subscriber_usage_90d", day(101))["subscriber_id"].to_pylist()
    assert ids == sorted(ids)
    # One shard again: the day is one file, nothing left of the split.
    build_feature_tables(churn_home, day(101), day(101), specs={})
    assert sorted(p.name for p in folder.glob("*.parquet")) == ["part_0.parquet"]
    assert (
        partition(churn_home, "subscriber_usage_90d", day(101))["subscriber_id"].to_pylist() == ids
    )
    assert [p.name for p in state_files(state_root(churn_home), day(101))] == ["part_0.parquet"]


def test_contracts_judge_the_union_of_the_shards(
    churn_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_world(churn_home, random_world(np.random.default_rng(22)))
    build_feature_tables(churn_home, day(100), day(100), specs={})
    whole = {n: partition(churn_home, n, day(100)) for n in FEATURE_TABLES}
    checked: dict[str, tuple[int, int | None]] = {}
    real = contracts_module.check_table

    def record(spec, table, **kwargs):
        checked[spec.name] = (table.num_rows, kwargs.get("previous_day_rows"))
        return real(spec, table, **kwargs)

    monkeypatch.setattr("tasks.features.tables.check_table", record)
    specs = {n: _spec(whole[n], n) for n in FEATURE_TABLES if whole[n] is not None}
    build_feature_tables(sharded(churn_home, 3), day(101), day(101), specs=specs)
    for name in specs:
        assert checked[name] == (
            partition(churn_home, name, day(101)).num_rows,
            whole[name].num_rows,
        )


def _spec(table: pa.Table, name: str):
    from tasks.core.schema import Column, TableSpec

    return TableSpec(
        name=name,
        grain="test",
        columns=tuple(Column(f.name, f.type, nullable=True) for f in table.schema),
        keys=("subscriber_id", "snapshot_ts"),
        partitioned=True,
    )


# --- crashes ----------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


def test_a_state_missing_a_shards_file_is_removed_and_rebuilt(
    churn_home: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_world(churn_home, random_world(np.random.default_rng(23)))
    settings = keeping(sharded(churn_home, 3), 1000)
    build_feature_tables(settings, day(100), day(100), specs={})
    real, moved = os.replace, []

    def crash_on_second_state_file(src, dst):
        if "usage_windows" in str(dst):
            moved.append(dst)
            if len(moved) == 2:
                raise Crash("killed while publishing the states")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second_state_file)
    with pytest.raises(Crash):
        build_feature_tables(settings, day(101), day(101), specs={})
    monkeypatch.undo()
    assert len(state_files(state_root(settings), day(101))) == 1  # one shard's file of several

    with caplog.at_level(logging.INFO, logger="tasks.features.windows"):
        build_feature_tables(settings, day(102), day(102), specs={})
    messages = [r.getMessage() for r in caplog.records]
    assert sum("lack some of their shards' files" in m for m in messages) == 1
    assert not any("summed from scratch" in m for m in messages)  # 102 steps from 100's state
    ref = keeping(reference_home(tmp_path, churn_home), 1000)
    build_feature_tables(ref, day(100), day(102), specs={})
    build_feature_tables(settings, day(101), day(101), specs={})
    assert_same_as_one_shard(settings, ref, [day(100), day(101), day(102)])
