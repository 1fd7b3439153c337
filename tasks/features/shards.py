"""One chunk of feature days for one range of subscriber ids: the unit a build runs, here or on Dask.

Every feature is a function of one subscriber's own rows (the SQL partitions and joins by
``subscriber_id`` only), so a build can be cut into contiguous id ranges that are computed apart
and give, together, exactly the rows of the whole: :func:`build_shard` registers the source tables
filtered to its range (DuckDB pushes the filter into the Parquet scans, and the source files are
sorted by subscriber, so a shard reads mostly its own row groups), stages its partitions and usage
states under its own folder, and leaves its usage windows of the chunk's last day for its next
chunk. The build (``tasks/features/tables.py``) checks the contracts on the union of the shards'
files and publishes them together.

Shards are ``CHURN_FEATURE_SHARD_SUBSCRIBERS`` ids each (one shard below that, the layout of
before), so peak memory follows the shard, not the base. ``CHURN_FEATURE_RUNNER=dask`` runs a
chunk's shards on the Dask cluster at ``CHURN_DASK_ADDRESS`` (a LocalCluster of
``CHURN_MODEL_THREADS`` workers when unset); its workers must see ``CHURN_HOME`` at the same path
(a shared filesystem), as they read the source and write the staging folder there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from tasks.core.settings import Settings
from tasks.core.sql import connect, load_sql, used_params
from tasks.data.sources import create_spine, register_sources
from tasks.features.attribute_view import (
    attribute_query,
    declared_attributes,
    register_attributes,
    uses_attributes,
)
from tasks.features.definitions import ATTRIBUTES_VIEW, feature_definitions
from tasks.features.feast_offline import PARTITION_KEY
from tasks.features.windows import (
    WINDOW_TABLES,
    IdRange,
    UsageWindows,
    WindowsPlan,
    write_relation,
)

FEATURE_TABLES = (
    "subscriber_profile",
    "subscriber_usage_30d",
    "subscriber_support_30d",
    "subscriber_billing_90d",
    "subscriber_usage_90d",
)
"""Feature tables in build order; each is built by ``sql/features/<name>.sql`` and read by the Feast view of that name."""
CHUNK_TABLES = tuple(name for name in FEATURE_TABLES if name not in WINDOW_TABLES)
"""Feature tables recomputed from the source for a whole chunk of days in one query."""


def feature_tables(settings: Settings) -> tuple[str, ...]:
    """The feature tables a build writes: :data:`FEATURE_TABLES`, and the imported attributes'
    view where the feature definitions in use declare features of it."""
    extra = (ATTRIBUTES_VIEW,) if uses_attributes(feature_definitions(settings)) else ()
    return FEATURE_TABLES + extra


@dataclass(frozen=True)
class ShardJob:
    """Everything one shard of one chunk needs; picklable, so a Dask worker can run it."""

    settings: Settings
    shard: IdRange
    start: date
    end: date
    staging: Path
    """This shard's staging root: ``<table>/snapshot_date=D/<files>`` and ``_state/...``."""
    windows: WindowsPlan
    carry_in: Path | None
    """The shard's usage windows of ``start - 1``, left by its previous chunk of this build."""
    carry_out: Path
    duckdb_threads: int | None = None


@dataclass(frozen=True)
class ShardResult:
    shard: IdRange
    rows: dict[str, int]
    scratch_days: list[date] = field(default_factory=list)


def build_shard(job: ShardJob) -> ShardResult:
    """Stage every feature table's partitions of ``[job.start, job.end]`` for the shard's ids."""
    settings = job.settings
    con = connect(
        memory_limit=settings.duckdb_memory_limit,
        spill_dir=settings.home / "tmp" / "duckdb",
        threads=job.duckdb_threads,
    )
    try:
        register_sources(con, settings.source_dir, job.shard.predicate())
        definitions = feature_definitions(settings)
        attributes = declared_attributes(definitions) if uses_attributes(definitions) else []
        if attributes:
            register_attributes(con, settings.source_dir, job.shard.predicate())
        carry = (job.start - timedelta(days=1), job.carry_in) if job.carry_in else None
        windows = UsageWindows(con, settings, job.windows, job.shard, carry)
        rows = stage_chunk(con, job.start, job.end, job.staging, windows, job.shard, attributes)
        windows.save_carry(job.end, job.carry_out)
        return ShardResult(job.shard, rows, windows.scratch_days)
    finally:
        con.close()


def stage_chunk(
    con,
    start: date,
    end: date,
    staging: Path,
    windows: UsageWindows,
    shard: IdRange,
    attributes: Sequence[str] = (),
) -> dict[str, int]:
    """Write every table's partitions of ``[start, end]`` (and the usage states to keep) to
    ``staging``; ``attributes``: the imported attributes the definitions use (none: no such table)."""
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    staging.mkdir(parents=True)
    create_spine(con, days)
    params = {"start_date": start, "end_date": end}
    chunk_tables = CHUNK_TABLES + ((ATTRIBUTES_VIEW,) if attributes else ())
    counts = dict.fromkeys(FEATURE_TABLES + chunk_tables, 0)
    for name in chunk_tables:
        query = load_sql(f"features/{name}").strip().rstrip(";")
        if name == ATTRIBUTES_VIEW:
            query = attribute_query(query, attributes)
        relation = con.sql(
            f"SELECT * FROM ({query}) ORDER BY snapshot_date, subscriber_id",
            params=used_params(query, params),
        )
        relation.write_parquet(
            str(staging / name),
            compression="zstd",
            partition_by=["snapshot_date"],
            filename_pattern=shard.stem + "{i}",
            overwrite=True,
        )
        counts[name] = sum(
            pq.ParquetFile(f).metadata.num_rows for f in (staging / name).glob("*/*.parquet")
        )
    for day in days:
        windows.advance_to(day)
        windows.stage(day, staging)
        for name in WINDOW_TABLES:
            counts[name] += _write_day(con, name, day, staging / name, shard)
    return counts


def _write_day(con, name: str, day: date, table_dir: Path, shard: IdRange) -> int:
    """One day's partition of a table built from ``usage_windows``, rows ordered by subscriber_id;
    a day with nobody in service gets no partition (as a partitioned write gives none)."""
    query = load_sql(f"features/{name}").strip().rstrip(";")
    path = table_dir / f"{PARTITION_KEY}={day.isoformat()}" / f"{shard.stem}0.parquet"
    path.parent.mkdir(parents=True)
    rows = write_relation(
        con.sql(
            f"SELECT * EXCLUDE ({PARTITION_KEY}) FROM ({query}) ORDER BY subscriber_id",
            params={"snapshot_date": day},
        ),
        path,
    )
    if not rows:
        shutil.rmtree(path.parent)
    return rows


ShardRunner = Callable[[list[ShardJob]], list[ShardResult]]


@contextmanager
def shard_runner(settings: Settings, shards: int) -> Iterator[tuple[ShardRunner, int | None]]:
    """How a build runs its shards, and the DuckDB threads each gets (None: DuckDB's default).

    ``local``: one after the other in this process. ``dask``: on the cluster (see the module
    docstring), opened once per build; a LocalCluster's workers share this machine's cores.
    """
    if settings.feature_runner != "dask":
        yield (lambda jobs: [build_shard(job) for job in jobs]), None
        return
    from tasks.core.cluster import dask_client

    with dask_client(settings) as client:
        # Results in job order, whatever order the workers finish in.
        yield (
            (lambda jobs: client.gather(client.map(build_shard, jobs, pure=False))),
            (
                None
                if settings.dask_address
                else max(1, (os.cpu_count() or 1) // min(shards, settings.model_threads))
            ),
        )
