"""Point-in-time frames: the training frame through Feast, the scoring frame through a bulk read.

* ``build_training_frame`` asks Feast for the features of every (subscriber, snapshot day) in the
  rolling window whose label is mature.
* ``build_scoring_frame`` reads the feature tables directly with Polars for speed; tests prove it
  returns exactly what Feast's point-in-time retrieval returns, TTL edges included.

Time: an entity row "as of day d" asks at ``as_of_timestamp(d)`` = d + 1, 00:00 UTC, when the
data of d is complete (see ``tasks.features.tables``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureStore, FeatureView

from tasks.core.errors import FeatureStoreError, InsufficientHistory, SourceDataMissing
from tasks.core.files import write_parquet_atomic
from tasks.core.schema import PROTECTED_ATTRIBUTES, TableSpec
from tasks.core.settings import Settings
from tasks.core.sql import connect, load_sql
from tasks.data.sources import active_subscribers, create_spine, register_sources, source_date_range
from tasks.features.feast_offline import partition_files, partition_files_between
from tasks.features.store import feature_service, open_store, service_columns, service_views
from tasks.features.tables import LOOKBACK_DAYS, as_of_timestamp, feature_table_spec

logger = logging.getLogger(__name__)

LABEL = "churned_30d"
TIMESTAMP = "event_timestamp"


# ----------------------------------------------------------------------------- training frame


def training_snapshot_days(settings: Settings, as_of: date) -> list[date]:
    """Snapshot days of the training window at ``as_of``: every k-th day back from the newest mature one."""
    first, last = settings.training_window(as_of)
    count = (last - first).days // settings.training_snapshot_every_days + 1
    return sorted(
        last - timedelta(days=i * settings.training_snapshot_every_days) for i in range(count)
    )


def training_entities(settings: Settings, as_of: date) -> pd.DataFrame:
    """Entity rows of the training frame with their labels and protected attributes.

    Grain: one row per (subscriber_id, snapshot day) in service, for the snapshot days of the
    window at ``as_of``; only days whose label horizon ended on or before ``as_of`` (mature labels).

    Raises:
        SourceDataMissing: the source does not reach ``as_of``, or the window starts so early that
            its first snapshots would see less history than the longest feature window needs.
    """
    source_first, source_last = source_date_range(settings.source_dir)
    if as_of > source_last:
        raise SourceDataMissing(
            f"labels at {as_of} need source data through {as_of}; the source ends on {source_last}"
        )
    days = training_snapshot_days(settings, as_of)
    warm_from = days[0] - timedelta(days=LOOKBACK_DAYS - 1)
    if warm_from < source_first:
        # Truncated 90-day windows in early snapshots would train on values scoring never sees.
        earliest = as_of + (source_first - warm_from)
        raise InsufficientHistory(
            f"the training window at {as_of} starts on {days[0]}, whose {LOOKBACK_DAYS}-day feature "
            f"history starts on {warm_from}, before the source data ({source_first}): "
            f"use an as-of day on or after {earliest}"
        )
    return labelled_entities(settings, days)


def labelled_entities(settings: Settings, days: list[date]) -> pd.DataFrame:
    """Entity rows of ``days`` (every subscriber in service on each) with ``churned_30d`` and the
    protected attributes; whether the labels are mature is the caller's rule."""
    con = connect()
    register_sources(con, settings.source_dir)
    create_spine(con, days)
    table = con.sql(
        load_sql("labels/churned_30d"), params={"horizon_days": settings.label_horizon_days}
    ).to_arrow_table()
    # Feast wants a pandas entity frame; Arrow-backed columns keep 10M+ rows free of Python objects.
    frame = table.drop_columns([TIMESTAMP]).to_pandas(types_mapper=pd.ArrowDtype)
    frame.insert(1, TIMESTAMP, table.column(TIMESTAMP).to_pandas().astype("datetime64[us, UTC]"))
    return frame


def _require_built_days(
    settings: Settings, views: list[tuple[FeatureView, list[str]]], days: list[date]
) -> None:
    """Every view must have a partition within its TTL of every day, or the frame would be silently null."""
    missing = []
    for view, _ in views:
        ttl_days = max(view.ttl.days, 0) if view.ttl else None
        for day in days:
            first = day - timedelta(days=ttl_days) if ttl_days is not None else None
            if not partition_files(settings.features_dir / view.name, first, day):
                missing.append(f"{view.name} {day}")
    if missing:
        shown = ", ".join(missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        )
        raise SourceDataMissing(
            f"feature partitions missing for {len(missing)} view-day(s): {shown}; "
            "run `churn features build` for those days"
        )


def build_training_frame(
    settings: Settings, as_of: date, store: FeatureStore | None = None
) -> pa.Table:
    """The training frame at ``as_of`` through Feast point-in-time retrieval of the feature service.

    Grain: one row per (subscriber_id, snapshot_date) in the rolling window that ends
    ``label_horizon_days`` before ``as_of``; columns: keys, event_timestamp, the service's features,
    ``churned_30d``, then the protected attributes. Rows ordered by snapshot_date, subscriber_id.
    """
    store = store or open_store(settings)
    entities = training_entities(settings, as_of)
    return frame_of(settings, store, entities, training_snapshot_days(settings, as_of))


def frame_of(
    settings: Settings, store: FeatureStore, entities: pd.DataFrame, days: list[date]
) -> pa.Table:
    """The service's features of labelled ``entities`` (of ``days``) by point-in-time retrieval:
    keys, event_timestamp, features, ``churned_30d``, protected attributes; by day, then id."""
    service = feature_service(store, settings.feature_service)
    _require_built_days(settings, service_views(store, service), days)
    logger.info("training frame of %s .. %s: %d entity rows", days[0], days[-1], len(entities))
    job = store.get_historical_features(entity_df=entities, features=service)
    del entities  # the job holds what it needs; at 1M subscribers this frame is half a gigabyte
    features = job.to_arrow()
    columns = [
        "subscriber_id",
        "snapshot_date",
        TIMESTAMP,
        *service_columns(store, service),
        LABEL,
        *PROTECTED_ATTRIBUTES,
    ]
    frame = features.select(columns).replace_schema_metadata(None)
    if not _sorted_by_day_and_id(frame):  # the stock store returns rows in no particular order
        frame = frame.sort_by([("snapshot_date", "ascending"), ("subscriber_id", "ascending")])
    return frame


def _sorted_by_day_and_id(frame: pa.Table) -> bool:
    if frame.num_rows < 2:
        return True
    day = pc.cast(frame.column("snapshot_date"), pa.int32()).combine_chunks()
    key = pc.add(
        pc.multiply(pc.cast(day, pa.int64()), 1 << 40),
        frame.column("subscriber_id").combine_chunks(),
    )
    return bool(pc.all(pc.greater(key.slice(1), key.slice(0, len(key) - 1))).as_py())


def write_frame(table: pa.Table, out: Path) -> Path:
    """Write a frame as Parquet atomically (temp file, then rename)."""
    return write_parquet_atomic(table.replace_schema_metadata(None), out)


# ----------------------------------------------------------------------------- scoring frame


def build_scoring_frame(
    settings: Settings,
    day: date,
    store: FeatureStore | None = None,
    entities: pa.Table | None = None,
) -> pa.Table:
    """Features of every subscriber in service on ``day`` (or of ``entities``), read directly with Polars.

    Grain: one row per subscriber_id, ordered by id; columns: subscriber_id, event_timestamp
    (``as_of_timestamp(day)``), then the feature service's features. Same values as Feast's
    point-in-time retrieval for the same entities and timestamp, without going through Feast.
    """
    if entities is None:
        entities = active_subscribers(settings, day)
    return features_at(settings, as_of_timestamp(day), entities, store)


@dataclass(frozen=True)
class ViewRead:
    """How to read one feature view of a service without Feast: everything the bulk path needs.

    Plain data (picklable), so scoring shards on Dask workers never open the Feast registry.
    """

    name: str
    directory: Path
    keys: tuple[str, ...]
    timestamp_field: str
    columns: tuple[str, ...]
    dtypes: tuple[str, ...]
    """Feast type names of ``columns`` (``Int32``, ``Float32``, ``String`` …), for all-null fills."""
    ttl: timedelta | None
    contract: TableSpec


def view_reads(settings: Settings, store: FeatureStore | None = None) -> list[ViewRead]:
    """The bulk-read plan of the configured feature service, view by view, in service order.

    Raises:
        FeatureStoreError: the service is not registered, or a view uses a join-key map or a
            field mapping (the bulk path does not implement those).
    """
    store = store or open_store(settings)
    service = feature_service(store, settings.feature_service)
    reads = []
    for view, names in service_views(store, service):
        if view.projection.join_key_map or view.batch_source.field_mapping:
            raise FeatureStoreError(
                f"view {view.name}: join-key maps and field mappings are not supported by the bulk path"
            )
        types = {f.name: str(f.dtype) for f in view.features}
        reads.append(
            ViewRead(
                name=view.name,
                directory=settings.features_dir / view.name,
                keys=tuple(e.name for e in view.entity_columns),
                timestamp_field=view.batch_source.timestamp_field,
                columns=tuple(names),
                dtypes=tuple(types[n] for n in names),
                ttl=view.ttl if view.ttl and view.ttl > timedelta(0) else None,
                contract=feature_table_spec(view),
            )
        )
    return reads


ANTI_JOIN_MAX_FILES = 4
"""Up to this many partition files (a TTL of a few days) the newest row per key is found by
anti-joins; beyond it, by one sort and group-by."""


def _latest_within_ttl(
    read: ViewRead, files: list[str], at: datetime, id_range: tuple[int, int] | None
) -> pl.LazyFrame:
    """Per key, the newest row with ``at - ttl <= ts <= at`` (Feast's point-in-time rule).

    With a short TTL (the usual: a day) the newest partition gives most keys their row and the
    older ones only fill the keys it lacks (an anti-join), which skips sorting every row of every
    partition in reach (~3x faster per shard). It relies on the feature tables' contract: one row
    per subscriber per snapshot day, so a key appears at most once in a partition file.
    """
    ts = read.timestamp_field
    condition = pl.col(ts) <= at
    if read.ttl is not None:
        condition &= pl.col(ts) >= at - read.ttl
    if id_range is not None:
        # Feature partitions are sorted by subscriber_id: a range prunes whole row groups.
        condition &= pl.col("subscriber_id").is_between(*id_range)
    keys = list(read.keys)

    def scan(paths: list[str]) -> pl.LazyFrame:
        # A table that gained a column for a newer service holds days with and without it; a
        # read names its columns, so the others are ignored (a missing one still fails).
        frame = pl.scan_parquet(paths, hive_partitioning=False, extra_columns="ignore")
        return frame.select([*keys, ts, *read.columns]).filter(condition)

    if len(files) > ANTI_JOIN_MAX_FILES:
        return scan(files).sort(ts).group_by(keys).last().drop(ts)
    parts: list[pl.LazyFrame] = []
    for path in reversed(files):  # partition files come oldest first
        part = scan([path])
        for newer in parts:
            part = part.join(newer.select(keys), on=keys, how="anti")
        parts.append(part)
    return pl.concat(parts).drop(ts)


def present_column(view: str) -> str:
    """Name of the marker column that says a view had a row within its TTL (see features_from)."""
    return f"__has_{view}"


def features_from(
    reads: list[ViewRead],
    at: datetime,
    entities: pa.Table,
    *,
    id_range: tuple[int, int] | None = None,
    mark_present: bool = False,
) -> pa.Table:
    """The point-in-time read of ``reads`` for ``entities`` at ``at`` (see :func:`features_at`).

    ``id_range`` (inclusive) promises every entity id lies in it, so files are read only there.
    ``mark_present`` adds a boolean column per view (:func:`present_column`): false where the view
    had no row within its TTL, so a caller can tell "no features" from null feature values.
    """
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    result = (
        pl.from_arrow(entities.select(["subscriber_id"]))
        .lazy()
        .with_columns(pl.lit(at).dt.cast_time_unit("us").alias(TIMESTAMP))
    )
    markers = []
    for read in reads:
        files = partition_files_between(
            read.directory, at - read.ttl if read.ttl is not None else None, at
        )
        marker = present_column(read.name)
        if files:
            latest = _latest_within_ttl(read, files, at, id_range)
            if mark_present:
                latest = latest.with_columns(pl.lit(True).alias(marker))
            result = result.join(latest, on=list(read.keys), how="left", coalesce=True)
        else:
            result = result.with_columns(
                pl.lit(None, dtype=_polars_type(t)).alias(c)
                for c, t in zip(read.columns, read.dtypes, strict=True)
            )
            if mark_present:
                result = result.with_columns(pl.lit(None, dtype=pl.Boolean).alias(marker))
        markers.append(marker)
    if mark_present:
        result = result.with_columns(pl.col(m).fill_null(False) for m in markers)
    table = result.sort("subscriber_id").collect().to_arrow()
    # Polars hands out large_string; Feast and the rest of the project use string.
    return table.cast(
        pa.schema(
            [
                pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) else f
                for f in table.schema
            ]
        )
    )


def features_at(
    settings: Settings, at: datetime, entities: pa.Table, store: FeatureStore | None = None
) -> pa.Table:
    """The bulk point-in-time read: each entity's newest feature values at ``at`` within each view's TTL.

    Grain: one row per subscriber_id of ``entities``, ordered by id. A naive ``at`` is taken as
    UTC, as Feast does. A view with no partition in reach gives nulls, as Feast does.
    """
    return features_from(view_reads(settings, store), at, entities)


def _polars_type(feast_type: str) -> pl.DataType:
    return {
        "Int32": pl.Int32,
        "Int64": pl.Int64,
        "Float32": pl.Float32,
        "Float64": pl.Float64,
        "String": pl.String,
        "Bool": pl.Boolean,
    }[feast_type]
