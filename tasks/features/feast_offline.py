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

Configure with ``offline_store: type: tasks.features.feast_offline.PartitionedDuckDBOfflineStore``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from duckdb import DuckDBPyConnection
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
_POS = "__batch_position"


class PartitionedDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: StrictStr = "tasks.features.feast_offline.PartitionedDuckDBOfflineStore"


def partition_root(source: FileSource) -> Path | None:
    """The table directory of a source laid out as ``<dir>/snapshot_date=YYYY-MM-DD/*.parquet``.

    None (use the stock store) unless the path is ``<dir>/*/*.parquet`` and every visible
    subdirectory of ``<dir>`` is a ``snapshot_date=`` partition.
    """
    path = Path(source.path)
    if path.name != "*.parquet" or path.parent.name != "*":
        return None
    root = path.parent.parent
    if root.is_dir() and any(
        p.is_dir() and not p.name.startswith((".", f"{PARTITION_KEY}=")) for p in root.iterdir()
    ):
        return None
    return root


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


def partition_files_between(
    root: Path, earliest: datetime | None, latest: datetime | None
) -> list[str]:
    """Files that can hold rows timestamped within ``[earliest, latest]``.

    The snapshot of day d is stamped d + 1, 00:00 UTC, so a timestamp on calendar day t lives in
    partition t - 1 (or t, for a source stamped within its own day): one day of margin below.
    """
    first = (_utc(earliest).date() - timedelta(days=1)) if earliest is not None else None
    last = _utc(latest).date() if latest is not None else None
    return partition_files(root, first, last)


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
    """A retrieval job whose result a function computes each time it is asked for (nothing is kept)."""

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


BATCH_ROWS = 500_000
"""Entity rows joined per query; bounds DuckDB's working memory whatever the frame's size."""
JOIN_MEMORY_LIMIT = "1GB"
"""DuckDB memory per batch join; measured need at 250k rows × 4 views is well below it."""


def point_in_time_join(entity: pa.Table, timestamp_col: str, plans: list[_ViewPlan]) -> pa.Table:
    """Entity rows (in their order) with each view's newest feature values within its TTL.

    Grain: one row per entity row; columns: the entity columns, then the features per view.
    Entity rows are joined in batches of consecutive timestamps, each reading only the partitions
    its own time span can reach, so memory follows the batch, not the frame.
    """
    in_order = _is_sorted(entity.column(timestamp_col))
    ordered = (
        entity
        if in_order
        else entity.sort_by([(timestamp_col, "ascending"), (_ROW_ID, "ascending")])
    )
    batches = [
        _join_batch(ordered.slice(offset, BATCH_ROWS), timestamp_col, plans)
        for offset in range(0, max(ordered.num_rows, 1), BATCH_ROWS)
    ]
    joined = pa.concat_tables(batches)
    if not in_order:
        # Back to the caller's row order, as Feast's own stores return it.
        joined = joined.take(pc.sort_indices(joined.column(_ROW_ID)))
    return joined.drop_columns([_ROW_ID])


def _is_sorted(values: pa.ChunkedArray) -> bool:
    """Whether timestamps never decrease (then batches of days are already in row order)."""
    if len(values) < 2:
        return True
    flat = values.combine_chunks()
    return bool(pc.all(pc.greater_equal(flat.slice(1), flat.slice(0, len(flat) - 1))).as_py())


def _feature_source(
    con, name: str, plan: _ViewPlan, earliest: datetime | None, latest: datetime | None
) -> None:
    """Create view ``name`` over the partitions of ``plan`` that can hold rows in ``[earliest, latest]``."""
    names = [*plan.join_key_map, plan.timestamp_field, *(src for src, _ in plan.features)]
    columns = ", ".join(_quote(c) for c in names)
    files = partition_files_between(plan.root, earliest, latest)
    if files:
        con.read_parquet(files, hive_partitioning=False).select(columns).create_view(name)
        return
    # No partition in reach: an empty view that keeps the table's column types when any day exists.
    any_day = partition_files(plan.root, None, None)[:1]
    if any_day:
        con.read_parquet(any_day, hive_partitioning=False).select(columns).limit(0).create_view(
            name
        )
    else:
        nulls = ", ".join(f"NULL AS {_quote(c)}" for c in names)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM (SELECT {nulls}) WHERE false")


def _join_batch(entity: pa.Table, timestamp_col: str, plans: list[_ViewPlan]) -> pa.Table:
    """One batch: the entity columns as given, then each view's features, row for row."""
    keys = sorted({ek for plan in plans for ek in plan.join_key_map.values()})
    # DuckDB sees only what the join needs; the other entity columns are reattached untouched.
    narrow = entity.select([*keys, timestamp_col]).append_column(
        _POS, pa.array(range(entity.num_rows), pa.int64())
    )
    con = connect(memory_limit=JOIN_MEMORY_LIMIT)
    con.register("entity_rows", narrow)
    ts_values = entity.column(timestamp_col)
    low, high = pc.min(ts_values).as_py(), pc.max(ts_values).as_py()
    selects: list[str] = []
    joins: list[str] = []
    params: dict[str, object] = {}
    for i, plan in enumerate(plans):
        alias = f"f{i}"
        earliest = low - plan.ttl if plan.ttl is not None and low is not None else None
        _feature_source(con, f"view_{i}", plan, earliest, high)
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
        + f" ORDER BY e.{_quote(_POS)}"
    )
    features = con.sql(query, params=params).to_arrow_table()
    con.close()
    for name in features.column_names:
        entity = entity.append_column(name, features.column(name))
    return entity


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
        if (
            not isinstance(entity_df, pd.DataFrame)
            or any(p is None for p in plans)
            or OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        ):
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
            min_event_timestamp=pc.min(ts).as_py() if len(entity) else None,
            max_event_timestamp=pc.max(ts).as_py() if len(entity) else None,
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
        args = (config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date)  # fmt: skip
        return _pruned_pull(
            DuckDBOfflineStore.pull_latest_from_table_or_query, *args, latest_only=True
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
        args = (config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                created_timestamp_column, start_date, end_date)  # fmt: skip
        return _pruned_pull(
            DuckDBOfflineStore.pull_all_from_table_or_query, *args, latest_only=False
        )


def _pruned_pull(
    stock: Callable[..., RetrievalJob],
    config: RepoConfig,
    data_source,
    join_key_columns: list[str],
    feature_name_columns: list[str],
    timestamp_field: str,
    created_timestamp_column: str | None,
    start_date: datetime | None,
    end_date: datetime | None,
    *,
    latest_only: bool,
) -> RetrievalJob:
    """Read a time range from the partitions in reach, or hand the request to the stock store."""
    root = partition_root(data_source) if isinstance(data_source, FileSource) else None
    if root is None or created_timestamp_column or data_source.field_mapping:
        return stock(config, data_source, join_key_columns, feature_name_columns, timestamp_field,
                     created_timestamp_column, start_date, end_date)  # fmt: skip
    return ArrowRetrievalJob(
        lambda: read_time_range(
            root,
            join_key_columns,
            feature_name_columns,
            timestamp_field,
            start_date,
            end_date,
            latest_only=latest_only,
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
    files = partition_files_between(root, start, end)
    if not files:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    con, query, params = _time_range_query(
        files, join_key_columns, columns, timestamp_field, start, end, latest_only
    )
    keys = ", ".join(_quote(k) for k in join_key_columns)
    query += f"ORDER BY {keys}, {_quote(timestamp_field)}"
    return con.sql(query, params=params).to_arrow_table()


def latest_row_batches(
    root: Path,
    join_key_columns: list[str],
    feature_name_columns: list[str],
    timestamp_field: str,
    start: datetime,
    end: datetime,
    batch_rows: int,
) -> Iterator[pa.RecordBatch]:
    """:func:`read_time_range`'s newest row per key, in batches of ``batch_rows`` in no set order.

    For bulk materialization: the rows stream out of DuckDB (which spills past its memory
    limit) instead of being collected into one table.
    """
    columns = [*join_key_columns, *feature_name_columns, timestamp_field]
    files = partition_files_between(root, start, end)
    if not files:
        return
    con, query, params = _time_range_query(
        files, join_key_columns, columns, timestamp_field, start, end, True
    )
    yield from con.sql(query, params=params).to_arrow_reader(batch_rows)


def _time_range_query(
    files: list[str],
    join_key_columns: list[str],
    columns: list[str],
    timestamp_field: str,
    start: datetime | None,
    end: datetime | None,
    latest_only: bool,
) -> tuple[DuckDBPyConnection, str, dict[str, datetime | None]]:
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
    params = {"start": _utc(start) if start else None, "end": _utc(end) if end else None}
    return con, query, params


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
