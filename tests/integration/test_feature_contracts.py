"""Contracts on built feature tables, and the deployment entrypoints that run the feature stage."""

from __future__ import annotations

import importlib
import shutil
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from tasks.core.errors import DataContractError
from tasks.core.settings import PROJECT_ROOT
from tasks.data.sim_population import WorldSpec
from tasks.features.feast_offline import partition_files
from tasks.features.tables import (
    FEATURE_TABLES,
    build_feature_tables,
    built_days,
    check_feature_tables,
)

from .conftest import WORLD_START, make_world

pytestmark = pytest.mark.integration


@pytest.fixture
def own_world(tmp_path, monkeypatch):
    """A world this test may damage."""
    monkeypatch.setenv("CHURN_HOME", str(tmp_path))
    return make_world(
        tmp_path / "home", WorldSpec(subscribers=300, days=40, start=WORLD_START, seed=3)
    )


def test_built_feature_tables_pass_their_contracts(own_world) -> None:
    day = own_world.spec.end
    reports = check_feature_tables(own_world.settings, day)
    assert [r.table for r in reports] == list(FEATURE_TABLES)
    assert all(r.passed and r.rows > 0 for r in reports)


def test_corrupted_feature_day_names_column_rule_and_count(own_world) -> None:
    day = own_world.spec.end
    (path,) = partition_files(own_world.settings.features_dir / "subscriber_support_30d", day, day)
    table = pq.read_table(path)
    calls = table.column("support_calls_30d")
    broken = pc.if_else(pc.less(pa.array(range(table.num_rows)), 3), -1, calls).cast(pa.int32())
    pq.write_table(
        table.set_column(
            table.column_names.index("support_calls_30d"), "support_calls_30d", broken
        ),
        path,
    )

    with pytest.raises(DataContractError) as err:
        check_feature_tables(own_world.settings, day)
    message = str(err.value)
    assert "subscriber_support_30d.support_calls_30d" in message
    assert "min" in message and "3 rows" in message


def test_missing_feature_day_breaks_volume(own_world) -> None:
    # Half of a day's partition lost: the day-over-day volume rule catches it.
    day = own_world.spec.end
    (path,) = partition_files(own_world.settings.features_dir / "subscriber_usage_30d", day, day)
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows // 2), path)
    with pytest.raises(DataContractError, match=r"subscriber_usage_30d.*volume"):
        check_feature_tables(own_world.settings, day)


def test_every_deployment_entrypoint_imports() -> None:
    config = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        module_path, _, name = deployment["entrypoint"].partition(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, name)), deployment["name"]


def test_rebuilding_a_day_gives_the_same_rows_and_leaves_others_alone(own_world) -> None:
    settings = own_world.settings
    last = own_world.spec.end
    root = settings.features_dir / "subscriber_profile"
    original = {
        d: pq.read_table(partition_files(root, d, d)) for d in (last - timedelta(days=1), last)
    }
    shutil.rmtree(root / f"snapshot_date={last}")
    build_feature_tables(settings, last, last)
    assert built_days(settings, "subscriber_profile")[-1] == last
    for day, table in original.items():
        assert pq.read_table(partition_files(root, day, day)).equals(table), day


def test_a_day_that_breaks_its_contract_is_not_published(own_world) -> None:
    # Corrupt the newest day's usage so its 7-day data total goes negative, then rebuild that day.
    settings = own_world.settings
    last = own_world.spec.end
    usage_dir = settings.source_dir / "usage_daily"
    for part in sorted(usage_dir.glob("*.parquet")):
        table = pq.read_table(part)
        bad = pc.if_else(
            pc.equal(table["usage_date"], pa.scalar(last, pa.date32())), -50.0, table["data_gb"]
        )
        pq.write_table(table.set_column(table.column_names.index("data_gb"), "data_gb", bad), part)
    published = {
        name: (
            settings.features_dir / name / f"snapshot_date={last}" / "part_0.parquet"
        ).read_bytes()
        for name in FEATURE_TABLES
    }
    with pytest.raises(DataContractError) as err:
        build_feature_tables(settings, last, last)
    assert "subscriber_usage_30d.data_gb_7d: min failed" in str(err.value)
    assert "nothing of this chunk was published" in str(err.value)
    for name, before in published.items():
        assert (
            settings.features_dir / name / f"snapshot_date={last}" / "part_0.parquet"
        ).read_bytes() == before
    assert not list((settings.home / "tmp" / "staging").glob("*"))
