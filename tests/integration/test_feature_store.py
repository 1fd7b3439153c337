"""Feast apply, point-in-time frames and the bulk scoring path on a real (small) simulated world."""

from __future__ import annotations

import importlib
import sys
from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import Entity, FeatureService, FeatureView, FileSource

from tasks.core.schema import PROTECTED_ATTRIBUTES
from tasks.core.settings import Settings
from tasks.data.sources import active_subscribers
from tasks.features.definitions import feature_definitions
from tasks.features.frames import (
    LABEL,
    TIMESTAMP,
    build_scoring_frame,
    build_training_frame,
    features_at,
    training_entities,
    write_frame,
)
from tasks.features.store import feature_service, open_store, service_columns, service_views
from tasks.features.tables import as_of_timestamp

from .conftest import WORLD_END

pytestmark = pytest.mark.integration
AS_OF = WORLD_END


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("snapshot_date", "subscriber_id") if c in frame.columns]
    return frame.sort_values(keys).reset_index(drop=True)


def _feast_frame(settings: Settings, entity_df: pd.DataFrame, *, stock: bool) -> pd.DataFrame:
    store = open_store(settings, stock_offline_store=stock)
    service = feature_service(store, settings.feature_service)
    return store.get_historical_features(entity_df=entity_df, features=service).to_df()


V1_VIEWS = [
    "subscriber_profile",
    "subscriber_usage_30d",
    "subscriber_support_30d",
    "subscriber_billing_90d",
]

V1_COLUMNS = [
    *("tenure_days", "plan", "contract_type", "payment_method", "monthly_charge"),
    *("charge_to_list_ratio", "charge_change_90d", "plan_changes_90d"),
    *("data_gb_7d", "data_gb_30d", "data_trend_7d_30d", "voice_minutes_7d", "voice_minutes_30d"),
    *("dropped_calls_30d", "active_days_30d"),
    *("support_calls_7d", "support_calls_30d", "network_tickets_30d"),
    *("late_payments_90d", "bills_90d"),
]


def test_repo_declares_documented_objects(world_settings: Settings) -> None:
    # Every Feast object carries description, owner and tags; v2 (the default) is v1's 20 model
    # inputs plus the 11 of subscriber_usage_90d, and v1 is left exactly as it was.
    repo = world_settings.feature_repo_dir
    sys.path.insert(0, str(repo))
    try:
        objects = []
        for module in ("entities", "data_sources", "features", "feature_services"):
            sys.modules.pop(module, None)
            objects += list(vars(importlib.import_module(module)).values())
    finally:
        sys.path.remove(str(repo))
    declared = [
        o for o in objects if isinstance(o, (Entity, FileSource, FeatureView, FeatureService))
    ]
    assert len(declared) >= 16
    for obj in declared:
        assert obj.description and obj.owner and obj.tags, obj.name
    store = open_store(world_settings)
    assert world_settings.feature_service == "churn_model_v2"

    v1 = feature_service(store, "churn_model_v1")
    v1_columns = service_columns(store, v1)
    assert [view.name for view, _ in service_views(store, v1)] == V1_VIEWS
    assert v1_columns == V1_COLUMNS and v1.tags["version"] == "1"

    v2 = feature_service(store, world_settings.feature_service)
    columns = service_columns(store, v2)
    assert [view.name for view, _ in service_views(store, v2)] == [
        *V1_VIEWS,
        "subscriber_usage_90d",
    ]
    assert columns[:20] == v1_columns and len(columns) == 31 and v2.tags["version"] == "2"
    assert not set(columns) & set(PROTECTED_ATTRIBUTES)
    # Every input has its reason in plain words (a definition needs one; see features.yaml).
    assert set(columns) <= set(feature_definitions().features)


def test_training_frame_has_only_mature_labels_in_window(world_settings: Settings) -> None:
    frame = build_training_frame(world_settings, AS_OF).to_pandas()
    first, last = world_settings.training_window(AS_OF)
    assert frame["snapshot_date"].min() >= first
    assert frame["snapshot_date"].max() == last
    # Mature: every label's horizon has ended by as_of.
    horizon_end = pd.to_datetime(frame["snapshot_date"]) + pd.Timedelta(
        days=world_settings.label_horizon_days
    )
    assert (horizon_end <= pd.Timestamp(AS_OF)).all()
    assert set(frame[LABEL].unique()) == {0, 1}
    assert list(frame.columns[-4:]) == [LABEL, *PROTECTED_ATTRIBUTES]
    assert not frame.duplicated(["subscriber_id", "snapshot_date"]).any()
    # Deterministic order: snapshot day, then subscriber.
    pd.testing.assert_frame_equal(frame, _sorted(frame))


def test_labels_follow_cancellations(world_settings: Settings) -> None:
    frame = training_entities(world_settings, AS_OF)
    cancels = pq.read_table(world_settings.source_dir / "cancellations.parquet").to_pandas()
    merged = frame.merge(cancels, on="subscriber_id", how="left")
    days = (pd.to_datetime(merged["cancel_date"]) - pd.to_datetime(merged["snapshot_date"])).dt.days
    expected = days.between(1, world_settings.label_horizon_days).astype(int)
    assert (merged[LABEL] == expected).all()
    # Nobody is a training row on or after their first day without service.
    assert not (days <= 0).any()


def test_partition_pruning_store_equals_stock_feast(world_settings: Settings) -> None:
    entity_df = training_entities(world_settings, AS_OF)
    ours = _feast_frame(world_settings, entity_df, stock=False)
    stock = _feast_frame(world_settings, entity_df, stock=True)
    pd.testing.assert_frame_equal(_sorted(ours), _sorted(stock)[ours.columns], check_dtype=False)


def test_bulk_scoring_frame_equals_feast_retrieval(world_settings: Settings) -> None:
    day = AS_OF - timedelta(days=3)
    bulk = build_scoring_frame(world_settings, day).to_pandas()
    entity_df = bulk[["subscriber_id"]].assign(**{TIMESTAMP: pd.Timestamp(as_of_timestamp(day))})
    feast = _feast_frame(world_settings, entity_df, stock=True)
    assert len(bulk) == len(active_subscribers(world_settings, day)) > 0
    pd.testing.assert_frame_equal(bulk, _sorted(feast)[bulk.columns], check_dtype=False)


def _last_snapshot_of_leavers(settings: Settings) -> pd.DataFrame:
    """Subscribers who left during the world, with the timestamp of their last feature snapshot."""
    cancels = pq.read_table(settings.source_dir / "cancellations.parquet").to_pandas()
    cancels = cancels[pd.to_datetime(cancels["cancel_date"]) <= pd.Timestamp(WORLD_END)]
    # The snapshot of the last day in service (cancel_date - 1) is stamped cancel_date 00:00 UTC.
    last = pd.to_datetime(cancels["cancel_date"])
    return pd.DataFrame(
        {
            "subscriber_id": cancels["subscriber_id"].to_numpy(),
            "last_ts": last.dt.tz_localize("UTC"),
        }
    ).head(40)


@pytest.mark.parametrize(
    ("offset", "present"),
    [
        (timedelta(0), True),  # the snapshot's own timestamp
        (timedelta(days=1), True),  # exactly at the TTL: Feast keeps it (ts >= entity_ts - ttl)
        (timedelta(days=1, microseconds=1), False),  # TTL + 1 µs: expired
    ],
)
def test_ttl_edges_match_feast(world_settings: Settings, offset: timedelta, present: bool) -> None:
    # Leavers have no snapshot after their last day, so only the TTL decides what an entity sees.
    leavers = _last_snapshot_of_leavers(world_settings)
    assert len(leavers) >= 10
    store = open_store(world_settings)
    columns = service_columns(store, feature_service(store, world_settings.feature_service))
    for at in sorted(set(leavers["last_ts"]))[:3]:
        ids = leavers.loc[leavers["last_ts"] == at, "subscriber_id"]
        moment = (at + offset).to_pydatetime()
        entity_df = pd.DataFrame({"subscriber_id": ids.to_numpy(), TIMESTAMP: pd.Timestamp(moment)})
        stock = _sorted(_feast_frame(world_settings, entity_df, stock=True))
        ours = _sorted(_feast_frame(world_settings, entity_df, stock=False))
        bulk = features_at(
            world_settings, moment, pa.table({"subscriber_id": ids.to_numpy()})
        ).to_pandas()
        for frame in (stock, ours, bulk):
            assert frame[columns[0]].notna().all() if present else frame[columns].isna().all().all()
        pd.testing.assert_frame_equal(ours, stock[ours.columns], check_dtype=False)
        pd.testing.assert_frame_equal(bulk[columns], stock[columns], check_dtype=False)


def test_future_snapshots_are_never_used(world_settings: Settings) -> None:
    # An entity one microsecond before a snapshot sees the previous day's values, not that snapshot.
    day = AS_OF - timedelta(days=10)
    ids = (
        active_subscribers(world_settings, day - timedelta(days=1))
        .column("subscriber_id")
        .to_numpy()[:50]
    )
    just_before = as_of_timestamp(day) - timedelta(microseconds=1)
    before = features_at(world_settings, just_before, pa.table({"subscriber_id": ids})).to_pandas()
    previous = features_at(
        world_settings, as_of_timestamp(day - timedelta(days=1)), pa.table({"subscriber_id": ids})
    )
    pd.testing.assert_frame_equal(
        before.drop(columns=[TIMESTAMP]), previous.to_pandas().drop(columns=[TIMESTAMP])
    )


def test_training_frame_bytes_are_reproducible(world_settings: Settings, tmp_path) -> None:
    first = write_frame(build_training_frame(world_settings, AS_OF), tmp_path / "a.parquet")
    second = write_frame(build_training_frame(world_settings, AS_OF), tmp_path / "b.parquet")
    assert first.read_bytes() == second.read_bytes()


def test_online_store_serves_what_bulk_reads(world_settings: Settings) -> None:
    from tasks.features.tables import materialize_online

    materialize_online(world_settings, AS_OF)
    store = open_store(world_settings)
    service = feature_service(store, world_settings.feature_service)
    columns = service_columns(store, service)
    bulk = build_scoring_frame(world_settings, AS_OF).to_pandas()
    online = store.get_online_features(
        features=service, entity_rows=[{"subscriber_id": int(i)} for i in bulk["subscriber_id"]]
    ).to_df()
    # Every subscriber in service was loaded, with exactly the bulk path's values.
    assert online["tenure_days"].notna().all()
    pd.testing.assert_frame_equal(online[columns], bulk[columns], check_dtype=False)


def test_offline_store_equals_stock_on_shuffled_intraday_rows_in_small_batches(
    world_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unsorted entity rows at arbitrary instants (TTL expiry, leavers, unknown ids), joined in
    # batches of 97 rows: the pruning store must still answer exactly as Feast's own store.
    import numpy as np

    from tasks.features import feast_offline

    monkeypatch.setattr(feast_offline, "BATCH_ROWS", 97)
    rng = np.random.default_rng(3)
    n = 1500
    start = pd.Timestamp(as_of_timestamp(AS_OF - timedelta(days=60)))
    entity_df = pd.DataFrame(
        {
            "subscriber_id": rng.integers(1, 1100, n),
            TIMESTAMP: start + pd.to_timedelta(rng.integers(0, 60 * 86_400 * 10**6, n), unit="us"),
        }
    )
    ours = _feast_frame(world_settings, entity_df, stock=False)
    stock = _feast_frame(world_settings, entity_df, stock=True)
    keys = ["subscriber_id", TIMESTAMP]
    # Ours keeps the caller's row order, as documented.
    pd.testing.assert_frame_equal(ours[keys], entity_df[keys].astype(ours[keys].dtypes.to_dict()))
    stock = stock.sort_values(keys).reset_index(drop=True)
    ours = ours.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, stock[ours.columns], check_dtype=False)
    assert ours["tenure_days"].isna().any() and ours["tenure_days"].notna().any()


def test_training_frame_refuses_missing_feature_days(
    world_settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Point the registry at an empty feature directory: the frame would be all nulls, so it refuses.
    import shutil

    from tasks.core.errors import SourceDataMissing

    home = tmp_path / "copy"
    shutil.copytree(world_settings.home / "source", home / "source")
    shutil.copytree(world_settings.home / "truth", home / "truth")
    monkeypatch.setenv("CHURN_HOME", str(home))
    from tasks.core.settings import get_settings, reset_settings
    from tasks.features.store import apply_feature_repo

    reset_settings()
    settings = get_settings()
    apply_feature_repo(settings)
    with pytest.raises(SourceDataMissing, match=r"feature partitions missing for \d+ view-day"):
        build_training_frame(settings, AS_OF)


def test_training_window_must_not_start_in_the_feature_warm_up(world_settings: Settings) -> None:
    from tasks.core.errors import SourceDataMissing

    too_early = AS_OF - timedelta(days=30)
    with pytest.raises(SourceDataMissing, match="use an as-of day on or after"):
        training_entities(world_settings, too_early)
