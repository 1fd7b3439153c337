"""A Feast offline store: Feast's DuckDB store, reading only the partitions a query can reach.

Feast's stock DuckDB store (through ibis) reads a source's whole history and joins with an
inequality join plus a row-number de-duplication; on daily snapshot tables that is 2–3× a plain
DuckDB ``ASOF JOIN`` and grows with the history kept. This store keeps Feast's interface and its
point-in-time semantics exactly —

    a feature row matches an entity row when the join keys are equal and
    entity_ts - ttl <= feature_ts <= entity_ts; the newest such row wins —

but lists only the ``snapshot_date=YYYY-MM-DD`` partitions inside ``[min(entity_ts) - ttl,
max(entity_ts)]`` and joins with ``ASOF LEFT JOIN``. The latest row at or before the entity
timestamp is the only candidate Feast could pick; if it is older than the TTL every earlier row is
too, so nulling it out gives Feast's answer. Anything it was not built for (SQL entity frames,
field mappings, created-timestamp tie breaks, unpartitioned sources) goes to the stock store.

Configure with ``offline_store: type: tasks.feast_offline.PartitionedDuckDBOfflineStore``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute
from feast.feature_view import FeatureView
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from pydantic import StrictStr

from tasks.core.sql import connect

logger = logging.getLogger(__name__)

PARTITION_KEY = "snapshot_date"
_ROW_ID = "__entity_row_id"


class PartitionedDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: StrictStr = "tasks.feast_offline.PartitionedDuckDBOfflineStore"


def partition_root(source: FileSource) -> Path | None:
    """The table directory of a source whose path is ``<dir>/*/*.parquet`` over date partitions."""
    path = Path(source.path)
    if path.name != "*.parquet" or path.parent.name != "*":
        return None
    return path.parent.parent


def partition_files(root: Path, first: date | None, last: date | None) -> list[str]:
    """Parquet files of the ``snapshot_date=`` partitions within ``[first, last]`` (open ends allowed)."""
    if not root.is_dir():
        return []
    files: list[str] = []
    for part in sorted(root.glob(f"{PARTITION_KEY}=*")):
        day = date.fromisoformat(part.name.split("=", 1)[1])
        if (first is None or day >= first) and (last is None or day <= last):
            files.extend(str(f) for f in sorted(part.glob("*.parquet")))
    return files


@dataclass(frozen=True)
class _ViewPlan:
    """How one feature view is read: its files, keys, feature columns and TTL."""

    root: Path
    timestamp_field: str
    join_key_map: dict[str, str]  # feature-table column -> entity-frame column
    features: list[tuple[str, str]]  # (column in the table, column in the result)
    ttl: timedelta | None


def _plan_view(
    fv: FeatureView, feature_refs: list[str], full_feature_names: bool
) -> _ViewPlan | None:
    source = fv.batch_source
    if (
        not isinstance(source, FileSource)
        or source.field_mapping
        or source.created_timestamp_column
    ):
        return None
    root = partition_root(source)
    if root is None:
        return None
    prefix = fv.projection.name_to_use()
    out_prefix = fv.projection.name_alias or fv.name
    names = [ref.split(":", 1)[1] for ref in feature_refs if ref.split(":", 1)[0] == prefix]
    features = [(n, f"{out_prefix}__{n}" if full_feature_names else n) for n in names]
    join_key_map = fv.projection.join_key_map or {e.name: e.name for e in fv.entity_columns}
    ttl = fv.ttl if fv.ttl and fv.ttl > timedelta(0) else None
    return _ViewPlan(root, source.timestamp_field, dict(join_key_map), features, ttl)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ArrowRetrievalJob(RetrievalJob):
    """A retrieval job whose result is computed, once, by a function returning an Arrow table."""

    def __init__(
        self,
        compute: Callable[[], pa.Table],
        full_feature_names: bool,
        metadata: RetrievalMetadata | None = None,
    ):
        self._compute = compute
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return []

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self._compute()

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._compute().to_pandas()


def point_in_time_join(entity: pa.Table, timestamp_col: str, plans: list[_ViewPlan]) -> pa.Table:
    """Entity rows (in their order) with each view's newest feature values within its TTL.

    Grain: one row per entity row; columns: the entity columns, then the features per view.
    """
    con = connect()
    con.register("entity_rows", entity)
    selects = ["e.* EXCLUDE (" + _quote(_ROW_ID) + ")"]
    joins: list[str] = []
    params: dict[str, object] = {}
    ts_values = entity.column(timestamp_col)
    for i, plan in enumerate(plans):
        alias = f"f{i}"
        first = None
        if plan.ttl is not None:
            first = (pa.compute.min(ts_values).as_py() - plan.ttl).date()
        files = partition_files(plan.root, first, pa.compute.max(ts_values).as_py().date())
        columns = [*plan.join_key_map, plan.timestamp_field, *(src for src, _ in plan.features)]
        if files:
            con.read_parquet(files, hive_partitioning=False).select(
                ", ".join(_quote(c) for c in columns)
            ).create_view(f"view_{i}")
        else:
            # No partition in reach: every value is absent, with the declared columns.
            con.execute(
                f"CREATE VIEW view_{i} AS SELECT * FROM (SELECT "
                + ", ".join(f"NULL AS {_quote(c)}" for c in columns)
                + ") WHERE false"
            )
        on = [f"e.{_quote(ek)} = {alias}.{_quote(fk)}" for fk, ek in plan.join_key_map.items()]
        on.append(f"e.{_quote(timestamp_col)} >= {alias}.{_quote(plan.timestamp_field)}")
        joins.append(f"ASOF LEFT JOIN view_{i} AS {alias} ON " + " AND ".join(on))
        fresh = "TRUE"
        if plan.ttl is not None:
            params[f"ttl_{i}"] = int(plan.ttl / timedelta(microseconds=1))
            fresh = (
                f"{alias}.{_quote(plan.timestamp_field)} >= "
                f"e.{_quote(timestamp_col)} - to_microseconds(CAST($ttl_{i} AS BIGINT))"
            )
        for src, out in plan.features:
            selects.append(f"CASE WHEN {fresh} THEN {alias}.{_quote(src)} END AS {_quote(out)}")
    query = (
        "SELECT "
        + ", ".join(selects)
        + " FROM entity_rows AS e "
        + " ".join(joins)
        + f" ORDER BY e.{_quote(_ROW_ID)}"
    )
    return con.sql(query, params=params).to_arrow_table()


class PartitionedDuckDBOfflineStore(DuckDBOfflineStore):
    """Feast's DuckDB offline store with partition pruning and an ASOF point-in-time join."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        plans = [_plan_view(fv, feature_refs, full_feature_names) for fv in feature_views]
        if not isinstance(entity_df, pd.DataFrame) or any(p is None for p in plans):
            logger.info("falling back to Feast's stock DuckDB retrieval")
            return DuckDBOfflineStore.get_historical_features(
                config,
                feature_views,
                feature_refs,
                entity_df,
                registry,
                project,
                full_feature_names,
                filter_by_created_timestamp,
            )
        timestamp_col = infer_event_timestamp_from_entity_df(
            dict(zip(entity_df.columns, entity_df.dtypes))
        )
        entity = pa.Table.from_pandas(entity_df, preserve_index=False)
        ts = entity.column(timestamp_col)
        if not pa.types.is_timestamp(ts.type) or ts.type.tz is None:
            ts = pa.array(pd.to_datetime(entity_df[timestamp_col], utc=True))
        entity = entity.set_column(
            entity.schema.get_field_index(timestamp_col),
            timestamp_col,
            ts.cast(pa.timestamp("us", tz="UTC")),
        ).append_column(_ROW_ID, pa.array(range(entity.num_rows), pa.int64()))
        keys = sorted({ek for p in plans for ek in p.join_key_map.values()})  # type: ignore[union-attr]
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=keys,
            min_event_timestamp=pa.compute.min(ts).as_py() if len(entity) else None,
            max_event_timestamp=pa.compute.max(ts).as_py() if len(entity) else None,
        )
        return ArrowRetrievalJob(
            lambda: point_in_time_join(entity, timestamp_col, plans),  # type: ignore[arg-type]
            full_feature_names,
            metadata,
        )

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        root = partition_root(data_source) if isinstance(data_source, FileSource) else None
        if root is None or created_timestamp_column or data_source.field_mapping:
            return DuckDBOfflineStore.pull_latest_from_table_or_query(
                config,
                data_source,
                join_key_columns,
                feature_name_columns,
                timestamp_field,
                created_timestamp_column,
                start_date,
                end_date,
            )
        return ArrowRetrievalJob(
            lambda: read_time_range(
                root,
                join_key_columns,
                feature_name_columns,
                timestamp_field,
                start_date,
                end_date,
                latest_only=True,
            ),
            full_feature_names=False,
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        root = partition_root(data_source) if isinstance(data_source, FileSource) else None
        if root is None or created_timestamp_column or data_source.field_mapping:
            return DuckDBOfflineStore.pull_all_from_table_or_query(
                config,
                data_source,
                join_key_columns,
                feature_name_columns,
                timestamp_field,
                created_timestamp_column,
                start_date,
                end_date,
            )
        return ArrowRetrievalJob(
            lambda: read_time_range(
                root,
                join_key_columns,
                feature_name_columns,
                timestamp_field,
                start_date,
                end_date,
                latest_only=False,
            ),
            full_feature_names=False,
        )


def read_time_range(
    root: Path,
    join_key_columns: list[str],
    feature_name_columns: list[str],
    timestamp_field: str,
    start: datetime | None,
    end: datetime | None,
    *,
    latest_only: bool,
) -> pa.Table:
    """Rows with ``start <= ts <= end`` from the partitions in reach; with ``latest_only``, the newest per key."""
    columns = [*join_key_columns, *feature_name_columns, timestamp_field]
    files = partition_files(
        root, _utc(start).date() if start else None, _utc(end).date() if end else None
    )
    if not files:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    con = connect()
    con.read_parquet(files, hive_partitioning=False).create_view("source")
    keys = ", ".join(_quote(k) for k in join_key_columns)
    ts = _quote(timestamp_field)
    query = (
        f"SELECT {', '.join(_quote(c) for c in columns)} FROM source "
        f"WHERE {ts} >= coalesce($start, '-infinity'::TIMESTAMPTZ) AND {ts} <= coalesce($end, 'infinity'::TIMESTAMPTZ) "
    )
    if latest_only:
        query += f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {ts} DESC) = 1 "
    query += f"ORDER BY {keys}, {ts}"
    params = {"start": _utc(start) if start else None, "end": _utc(end) if end else None}
    return con.sql(query, params=params).to_arrow_table()


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
