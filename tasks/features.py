"""Feature tables, training frames and scoring frames (DESIGN §4–§5).

* ``build_feature_tables`` runs ``sql/features/*.sql`` over the source tables and writes one
  Parquet partition per snapshot day under ``$CHURN_HOME/features/<view>/snapshot_date=…/``.
* ``build_training_frame`` asks Feast for point-in-time features of every (subscriber, snapshot)
  in the rolling window whose label is mature.
* ``build_scoring_frame`` reads the same tables directly with Polars for speed; a test proves it
  returns exactly what Feast's point-in-time retrieval returns.

Time convention: a snapshot of day ``d`` describes the state at the close of ``d`` and carries the
timestamp ``d 00:00 UTC``; an entity row "as of d" uses the same timestamp.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore, FeatureView

from tasks.core.errors import SourceDataMissing
from tasks.core.files import write_parquet_atomic
from tasks.core.layout import MANIFEST_NAME, table_glob
from tasks.core.schema import PLANS, PROTECTED_ATTRIBUTES, SOURCE_TABLES, Column, TableSpec
from tasks.core.settings import Settings
from tasks.core.sql import connect, load_sql, used_params
from tasks.feast_offline import PARTITION_KEY, partition_files
from tasks.feature_store import feature_service, open_store, service_columns, service_views

logger = logging.getLogger(__name__)

FEATURE_TABLES = (
    "subscriber_profile",
    "subscriber_usage_30d",
    "subscriber_support_30d",
    "subscriber_billing_90d",
)
"""Feature tables in build order; each is built by ``sql/features/<name>.sql`` and read by the Feast view of that name."""
LOOKBACK_DAYS = 91
"""Longest window a feature looks back (90 days) plus the day itself."""
LABEL = "churned_30d"
TIMESTAMP = "event_timestamp"


def day_start(day: date) -> datetime:
    """The timestamp that stands for a snapshot of ``day``: ``day 00:00 UTC``."""
    return datetime.combine(day, time.min, tzinfo=UTC)


# ----------------------------------------------------------------------------- source tables


def read_manifest(source_dir: Path) -> dict:
    """What produced the source tables (simulator or import) and the days they cover."""
    path = source_dir / MANIFEST_NAME
    if not path.is_file():
        raise SourceDataMissing(
            f"no source data under {source_dir}: run `churn simulate` or `churn import` first"
        )
    return json.loads(path.read_text())


def source_date_range(source_dir: Path) -> tuple[date, date]:
    """First and last day covered by the source tables."""
    manifest = read_manifest(source_dir)
    return date.fromisoformat(manifest["start"]), date.fromisoformat(manifest["end"])


def register_sources(con, source_dir: Path) -> None:
    """Expose each source table, and the plan catalog, as a view named after the table."""
    for spec in SOURCE_TABLES.values():
        pattern = table_glob(source_dir, spec)
        if not list(Path(pattern).parent.glob(Path(pattern).name)):
            raise SourceDataMissing(
                f"source table {spec.name} is missing ({pattern}): run `churn simulate` or `churn import` first"
            )
        con.read_parquet(pattern).create_view(spec.name)
    catalog = pa.table({"plan": list(PLANS), "list_price": list(PLANS.values())})
    con.register("plan_catalog", catalog)


# ----------------------------------------------------------------------------- feature tables


@dataclass(frozen=True)
class BuildSummary:
    """Feature partitions written by one build."""

    start: date
    end: date
    rows: dict[str, int]
    features_dir: Path


def _swap_partition(new: Path, target: Path) -> None:
    """Replace one day's partition directory; readers see the old day or the new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def build_feature_tables(
    settings: Settings,
    start: date | None = None,
    end: date | None = None,
    *,
    chunk_days: int = 31,
    progress: Callable[[int], None] | None = None,
) -> BuildSummary:
    """Compute every feature table for the snapshot days ``[start, end]`` (default: all source days).

    Grain of each table: one row per (subscriber_id, snapshot_ts) for subscribers in service that
    day. Days are built in chunks of ``chunk_days`` so memory follows the chunk, not the history;
    each day's partition is written to a temporary directory and swapped in whole.
    """
    first, last = source_date_range(settings.source_dir)
    start = start or first
    end = end or last
    if start > end:
        raise ValueError(f"build range is empty: start {start} is after end {end}")
    if end > last:
        raise SourceDataMissing(f"source data ends on {last}; cannot build features for {end}")
    rows = {name: 0 for name in FEATURE_TABLES}
    con = connect()
    register_sources(con, settings.source_dir)
    chunk_start = start
    while chunk_start <= end:
        chunk_end = min(end, chunk_start + timedelta(days=chunk_days - 1))
        params = {"start_date": chunk_start, "end_date": chunk_end}
        con.execute("DROP TABLE IF EXISTS spine")
        spine_sql = load_sql("features/active_subscribers")
        con.execute("CREATE TEMP TABLE spine AS " + spine_sql, used_params(spine_sql, params))
        for name in FEATURE_TABLES:
            rows[name] += _write_partitions(con, name, params, settings.features_dir / name)
        if progress:
            progress((chunk_end - chunk_start).days + 1)
        chunk_start = chunk_end + timedelta(days=1)
    return BuildSummary(start, end, rows, settings.features_dir)


def _write_partitions(con, name: str, params: dict, table_dir: Path) -> int:
    table_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=table_dir.parent))
    try:
        query = load_sql(f"features/{name}").strip().rstrip(";")
        count = con.execute(
            f"COPY (SELECT * FROM ({query}) ORDER BY snapshot_date, subscriber_id) TO '{staging}' "
            "(FORMAT parquet, COMPRESSION zstd, PARTITION_BY (snapshot_date), OVERWRITE_OR_IGNORE, "
            "FILENAME_PATTERN 'part_{i}')",
            used_params(query, params),
        ).fetchall()[0][0]
        for part in sorted(staging.glob(f"{PARTITION_KEY}=*")):
            _swap_partition(part, table_dir / part.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return int(count)


def built_days(settings: Settings, name: str) -> list[date]:
    """The snapshot days a feature table has partitions for, oldest first."""
    root = settings.features_dir / name
    return sorted(
        date.fromisoformat(p.name.split("=", 1)[1]) for p in root.glob(f"{PARTITION_KEY}=*")
    )


_FEAST_TO_ARROW = {
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "String": pa.string(),
    "Bool": pa.bool_(),
}


def feature_table_spec(view: FeatureView) -> TableSpec:
    """The data contract of a feature table, read from its Feast declaration (field tags carry ranges)."""
    columns = [
        Column("subscriber_id", pa.int64(), min=1),
        Column("snapshot_ts", pa.timestamp("us", tz="UTC")),
    ]
    for field in view.features:
        tags = field.tags or {}
        columns.append(
            Column(
                field.name,
                _FEAST_TO_ARROW[str(field.dtype)],
                nullable=tags.get("nullable") == "true",
                min=float(tags["min"]) if "min" in tags else None,
                max=float(tags["max"]) if "max" in tags else None,
                allowed=tuple(tags["allowed"].split(",")) if "allowed" in tags else None,
            )
        )
    return TableSpec(
        name=view.name,
        grain="one row per subscriber in service per snapshot day",
        columns=tuple(columns),
        keys=("subscriber_id", "snapshot_ts"),
        date_column="snapshot_ts",
        partitioned=True,
    )


def read_feature_day(settings: Settings, name: str, day: date) -> pa.Table:
    """One day's partition of a feature table."""
    files = partition_files(settings.features_dir / name, day, day)
    if not files:
        raise SourceDataMissing(
            f"feature table {name} has no partition for {day}: run `churn features build`"
        )
    return pq.read_table(files)


# ----------------------------------------------------------------------------- training frame


def training_snapshot_days(settings: Settings, as_of: date) -> list[date]:
    """Snapshot days of the training window at ``as_of``: every k-th day back from the newest mature one."""
    first, last = settings.training_window(as_of)
    days = []
    day = last
    while day >= first:
        days.append(day)
        day -= timedelta(days=settings.training_snapshot_every_days)
    return sorted(days)


def training_entities(settings: Settings, as_of: date) -> pd.DataFrame:
    """Entity rows of the training frame with their labels and protected attributes.

    Grain: one row per (subscriber_id, snapshot day) in service, for the snapshot days of the window
    at ``as_of``; only days whose ``label_horizon_days`` ended on or before ``as_of`` (mature labels).
    """
    source_first, source_last = source_date_range(settings.source_dir)
    if as_of > source_last:
        raise SourceDataMissing(
            f"labels at {as_of} need source data through {as_of}; the source ends on {source_last}"
        )
    days = training_snapshot_days(settings, as_of)
    if days[0] < source_first:
        raise SourceDataMissing(
            f"the training window at {as_of} starts on {days[0]}, before the source data ({source_first}): "
            f"use an as-of day on or after {source_first + (as_of - days[0])}"
        )
    con = connect()
    register_sources(con, settings.source_dir)
    table = con.sql(
        load_sql("labels/churned_30d"),
        params={"snapshot_dates": days, "horizon_days": settings.label_horizon_days},
    ).to_arrow_table()
    frame = table.to_pandas()
    frame[TIMESTAMP] = frame[TIMESTAMP].astype("datetime64[us, UTC]")
    return frame


def build_training_frame(
    settings: Settings, as_of: date, store: FeatureStore | None = None
) -> pa.Table:
    """The training frame at ``as_of`` through Feast point-in-time retrieval of the feature service.

    Grain: one row per (subscriber_id, snapshot_date) in the rolling window that ends
    ``label_horizon_days`` before ``as_of``; columns: keys, event_timestamp, the service's features,
    ``churned_30d``, then the protected attributes. Rows ordered by snapshot_date, subscriber_id.
    """
    store = store or open_store(settings)
    service = feature_service(store, settings.feature_service)
    entities = training_entities(settings, as_of)
    logger.info("training frame at %s: %d entity rows", as_of, len(entities))
    features = store.get_historical_features(entity_df=entities, features=service).to_arrow()
    columns = [
        "subscriber_id",
        "snapshot_date",
        TIMESTAMP,
        *service_columns(store, service),
        LABEL,
        *PROTECTED_ATTRIBUTES,
    ]
    return features.select(columns).replace_schema_metadata(None)


def write_frame(table: pa.Table, out: Path) -> Path:
    """Write a frame as Parquet atomically (temp file, then rename)."""
    return write_parquet_atomic(table.replace_schema_metadata(None), out)


# ----------------------------------------------------------------------------- scoring frame


def active_subscribers(settings: Settings, day: date) -> pa.Table:
    """Subscribers in service on ``day``. Grain: one row per subscriber_id, ordered by id."""
    con = connect()
    register_sources(con, settings.source_dir)
    return con.sql(
        "SELECT subscriber_id FROM ("
        + load_sql("features/active_subscribers")
        + ") ORDER BY subscriber_id",
        params={"start_date": day, "end_date": day},
    ).to_arrow_table()


def _latest_within_ttl(
    files: list[str],
    keys: list[str],
    ts_field: str,
    columns: list[str],
    at: datetime,
    ttl: timedelta | None,
) -> pl.LazyFrame:
    """Per key, the newest row with ``at - ttl <= ts <= at`` (Feast's point-in-time rule)."""
    frame = pl.scan_parquet(files, hive_partitioning=False).select([*keys, ts_field, *columns])
    condition = pl.col(ts_field) <= at
    if ttl is not None:
        condition &= pl.col(ts_field) >= at - ttl
    return (
        frame.filter(condition)
        .sort(ts_field)
        .group_by(keys, maintain_order=False)
        .last()
        .drop(ts_field)
    )


def build_scoring_frame(
    settings: Settings,
    day: date,
    store: FeatureStore | None = None,
    entities: pa.Table | None = None,
) -> pa.Table:
    """Features of every subscriber in service on ``day`` (or of ``entities``), read directly with Polars.

    Grain: one row per subscriber_id, ordered by id; columns: subscriber_id, event_timestamp
    (``day 00:00 UTC``), then the feature service's features. Same values as Feast's point-in-time
    retrieval for the same entities and timestamp (TTL included), without going through Feast.
    """
    if entities is None:
        entities = active_subscribers(settings, day)
    return features_at(settings, day_start(day), entities, store)


def features_at(
    settings: Settings, at: datetime, entities: pa.Table, store: FeatureStore | None = None
) -> pa.Table:
    """The bulk point-in-time read: each entity's newest feature values at ``at`` within each view's TTL.

    Grain: one row per subscriber_id of ``entities``, ordered by id.
    """
    store = store or open_store(settings)
    service = feature_service(store, settings.feature_service)
    result = (
        pl.from_arrow(entities.select(["subscriber_id"]))
        .lazy()
        .with_columns(pl.lit(at).dt.cast_time_unit("us").alias(TIMESTAMP))
    )
    for view, names in service_views(store, service):
        ttl = view.ttl if view.ttl and view.ttl > timedelta(0) else None
        first = (at - ttl).date() if ttl is not None else None
        files = partition_files(settings.features_dir / view.name, first, at.date())
        if not files:
            raise SourceDataMissing(
                f"feature table {view.name} has no partition between {first} and {at.date()}: "
                "run `churn features build`"
            )
        keys = [e.name for e in view.entity_columns]
        latest = _latest_within_ttl(files, keys, view.batch_source.timestamp_field, names, at, ttl)
        result = result.join(latest, on=keys, how="left", coalesce=True)
    return result.sort("subscriber_id").collect().to_arrow()
