"""Feature tables: built by ``sql/features/*.sql``, checked by their contracts, then published.

Layout: ``$CHURN_HOME/features/<table>/snapshot_date=YYYY-MM-DD/part_0.parquet``, one partition per
snapshot day, so a reader touches only the days that its window and TTL can reach. A build writes
a chunk of days to a staging area, checks the contract of every table on the chunk's newest day
(volume against the day before it), and only then moves the files into place, one
``os.replace`` per file: a reader sees a day's old file or its new one, never a mix, and a day
that fails its contract is never published. (On an imported export's day, the day before is
counted with the export's sign-ups and less its cancellations: its churned subscribers all leave
on that day.)

The two usage views are built one day at a time from that day's usage windows, which the build
carries from the day before instead of re-reading 90 days of usage (``tasks/features/windows.py``:
the state, its fingerprints and what invalidates it); the other views recompute their chunk from
the source. Every partition is written whole and moved into place, never appended to.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore, FeatureView

from tasks.core.errors import DataContractError, SourceDataMissing
from tasks.core.schema import Column, TableSpec
from tasks.core.settings import Settings
from tasks.core.sql import connect
from tasks.data.contracts import ContractReport, check_table
from tasks.data.sources import export_days, register_sources, source_date_range
from tasks.features.definitions import FEAST_TO_ARROW
from tasks.features.feast_offline import PARTITION_KEY, partition_files
from tasks.features.redis_online import materialize_views
from tasks.features.shards import (  # FEATURE_TABLES: the fixed five, re-exported for readers
    FEATURE_TABLES,  # noqa: F401
    ShardJob,
    feature_tables,
    shard_runner,
)
from tasks.features.store import check_online_store, open_store
from tasks.features.windows import (
    id_ranges,
    log_scratch,
    move_partitions,
    plan_windows,
    prune_states,
    publish_states,
)

logger = logging.getLogger(__name__)

LOOKBACK_DAYS = 91
"""Days of source history the longest feature window needs (90 days before the snapshot day, and the day itself)."""


def as_of_timestamp(day: date) -> datetime:
    """When the data of ``day`` is complete: ``day + 1, 00:00 UTC``.

    A snapshot of day d carries this timestamp, and an entity row "as of d" asks at it, so no
    feature row holds anything that happened after its own timestamp.
    """
    return datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC)


@dataclass(frozen=True)
class BuildSummary:
    """Feature partitions written by one build."""

    start: date
    end: date
    rows: dict[str, int]
    features_dir: Path
    contracts: list[ContractReport]


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
                FEAST_TO_ARROW[str(field.dtype)],
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


def feature_table_specs(store: FeatureStore, settings: Settings) -> dict[str, TableSpec]:
    """Contracts of every feature table the build writes, from the registered Feast views."""
    return {
        name: feature_table_spec(store.get_feature_view(name)) for name in feature_tables(settings)
    }


def built_days(settings: Settings, name: str) -> list[date]:
    """The snapshot days a feature table has partitions for, oldest first."""
    root = settings.features_dir / name
    return sorted(
        date.fromisoformat(p.name.split("=", 1)[1]) for p in root.glob(f"{PARTITION_KEY}=*")
    )


def read_feature_day(settings: Settings, name: str, day: date) -> pa.Table:
    """One day's partition of a feature table."""
    files = partition_files(settings.features_dir / name, day, day)
    if not files:
        raise _missing_day(name, day)
    return pq.read_table(files)


def _missing_day(name: str, day: date) -> SourceDataMissing:
    return SourceDataMissing(
        f"feature table {name} has no partition for {day}: run `churn features build`"
    )


def _day_rows(root: Path, day: date) -> int | None:
    """Rows in one partition, from Parquet footers; None when the day is not there."""
    files = partition_files(root, day, day)
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files else None


def build_feature_tables(
    settings: Settings,
    start: date | None = None,
    end: date | None = None,
    *,
    specs: dict[str, TableSpec] | None = None,
    chunk_days: int = 31,
    progress: Callable[[int], None] | None = None,
) -> BuildSummary:
    """Compute, check and publish every feature table for the snapshot days ``[start, end]``.

    Grain of each table: one row per (subscriber_id, snapshot_ts) for subscribers in service that
    day. ``start``/``end`` default to the source's first/last day. ``specs`` are the contracts to
    enforce (default: from the Feast registry; ``{}`` skips them, for tests of the SQL alone).
    Days are built in chunks of ``chunk_days``, and each chunk in shards of
    ``feature_shard_subscribers`` ids (``tasks/features/shards.py``: here or on Dask), so memory
    follows the chunk and the shard, not the history or the base; the usage views step from the
    day before (``tasks/features/windows.py``), so their cost per day does not grow with the
    window either.

    Raises:
        DataContractError: a table broke its contract on a chunk's newest day; nothing of that
            chunk is published (earlier chunks stay).
    """
    first, last = source_date_range(settings.source_dir)
    start = start or first
    end = end or last
    if start > end:
        raise ValueError(f"build range is empty: start {start} is after end {end}")
    if start < first or end > last:
        raise SourceDataMissing(
            f"source data covers {first} .. {last}; cannot build features for {start} .. {end}"
        )
    if specs is None:
        specs = feature_table_specs(open_store(settings), settings)
    tables = feature_tables(settings)
    rows = {name: 0 for name in tables}
    reports: list[ContractReport] = []
    build = uuid.uuid4().hex
    work = settings.home / "tmp" / "staging" / build
    con = connect(memory_limit=settings.duckdb_memory_limit)
    try:
        register_sources(con, settings.source_dir)
        plan = plan_windows(con, settings, start, end, build)
        max_id = con.execute("SELECT COALESCE(MAX(subscriber_id), 0) FROM subscribers").fetchone()[
            0
        ]
    finally:
        con.close()
    shards = id_ranges(max_id, settings.feature_shard_subscribers)
    carry: dict[int, Path] = {}
    scratch_logged = False
    try:
        with shard_runner(settings, len(shards)) as (run, threads):
            chunk_start = start
            while chunk_start <= end:
                chunk_end = min(end, chunk_start + timedelta(days=chunk_days - 1))
                staging = work / chunk_start.isoformat()
                jobs = [
                    ShardJob(
                        settings=settings,
                        shard=shard,
                        start=chunk_start,
                        end=chunk_end,
                        staging=staging / str(shard.index),
                        windows=plan,
                        carry_in=carry.get(shard.index),
                        carry_out=work / "carry" / chunk_end.isoformat() / f"{shard.index}.parquet",
                        duckdb_threads=threads,
                    )
                    for shard in shards
                ]
                results = run(jobs)
                if results[0].scratch_days and not scratch_logged:
                    log_scratch(results[0].scratch_days[0])
                    scratch_logged = True
                roots = [job.staging for job in jobs]
                reports += _check_day(
                    settings,
                    specs,
                    chunk_end,
                    roots,
                    settings.features_dir,
                    " (nothing of this chunk was published)",
                )
                for name in tables:
                    move_partitions([root / name for root in roots], settings.features_dir / name)
                    rows[name] += sum(r.rows[name] for r in results)
                # States last: a crash in between leaves partitions without a state (a scratch
                # build next time), never a state ahead of the tables.
                publish_states(settings, roots)
                shutil.rmtree(staging, ignore_errors=True)
                for old in set(carry.values()):
                    shutil.rmtree(old.parent, ignore_errors=True)
                carry = {job.shard.index: job.carry_out for job in jobs}
                if progress:
                    progress((chunk_end - chunk_start).days + 1)
                chunk_start = chunk_end + timedelta(days=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prune_states(settings)
    return BuildSummary(start, end, rows, settings.features_dir, reports)


def _day_files(staged: list[Path], published: Path, name: str, day: date) -> list[str]:
    """A table's files of ``day``: every shard's staged files if any shard staged it, else the
    published partition's."""
    files = [f for root in staged for f in partition_files(root / name, day, day)]
    return files or partition_files(published / name, day, day)


def _check_day(
    settings: Settings,
    specs: dict[str, TableSpec],
    day: date,
    staged: list[Path],
    published: Path,
    context: str = "",
) -> list[ContractReport]:
    """Contracts of every table on ``day``, read from the staging folders of the build's shards
    (else the published table); one error lists every failing table."""
    reports = []
    moves: int | None = None
    for name, spec in specs.items():
        files = _day_files(staged, published, name, day)
        # A day with nobody in service has no partition: check an empty table (volume catches it).
        table = pq.read_table(files) if files else spec.arrow_schema.empty_table()
        previous = _day_files(staged, published, name, day - timedelta(days=1))
        previous_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in previous)
        if previous_rows and moves is None:
            moves = _recorded_moves(settings, day)
        expected = previous_rows + (moves or 0)
        reports.append(
            check_table(
                spec,
                table,
                volume_tolerance=settings.volume_tolerance if expected > 0 else None,
                previous_day_rows=expected if expected > 0 else None,
            )
        )
    failed = [r for r in reports if not r.passed]
    if failed:
        raise DataContractError(
            ", ".join(r.table for r in failed) + f" on {day}{context}",
            [v for r in failed for v in r.violations],
        )
    return reports


def _recorded_moves(settings: Settings, day: date) -> int:
    """On an imported export's day: its sign-ups less the cancellations taking effect on it, as
    the source records them; on any other day, 0.

    A feature table holds one row per subscriber in service, so the day's volume is judged against
    the day before plus these: the churned subscribers of an export all leave on its day, which is
    what the export says, not a broken feed. Only export days: elsewhere a wave of cancellations
    is exactly what the volume rule is there to question.
    """
    if day not in export_days(settings.source_dir):
        return 0
    con = connect()
    try:
        register_sources(con, settings.source_dir)
        found = con.execute(
            "SELECT (SELECT count(*) FROM subscribers WHERE signup_date = $day)"
            " - (SELECT count(*) FROM cancellations WHERE cancel_date = $day)",
            {"day": day},
        ).fetchone()
    finally:
        con.close()
    return int(found[0])


def check_feature_tables(settings: Settings, day: date) -> list[ContractReport]:
    """Check the contract of every published feature table on ``day`` (volume against the day before)."""
    for name in feature_tables(settings):
        if not partition_files(settings.features_dir / name, day, day):
            raise _missing_day(name, day)
    specs = feature_table_specs(open_store(settings), settings)
    return _check_day(settings, specs, day, [], settings.features_dir)


def materialize_online(settings: Settings, day: date) -> dict[str, int]:
    """Load each feature view's newest values as of ``day`` into the online store.

    Returns the rows of each view's partition for ``day`` (the subscribers in service that day).
    """
    check_online_store(settings)  # a dead Redis fails here in seconds, not after Feast's retries
    store = open_store(settings)
    tables = feature_tables(settings)
    views = [store.get_feature_view(name) for name in tables]
    end = as_of_timestamp(day)
    longest_ttl = max((v.ttl for v in views if v.ttl), default=timedelta(days=1))
    rows = {}
    for name in tables:
        count = _day_rows(settings.features_dir / name, day)
        if count is None:
            raise _missing_day(name, day)
        rows[name] = count
    start = end - longest_ttl
    if settings.online_store == "redis" and settings.redis_url is not None:
        # Feast's Redis writer builds a protobuf per value in Python; the bulk writer writes the
        # same bytes from Arrow batches in pipelines, ~5x faster (tasks/features/redis_online.py).
        materialize_views(
            store,
            views,
            start,
            end,
            settings.redis_url.get_secret_value(),
            batch_rows=settings.online_write_batch_size,
        )
        return rows
    # Batched online writes (materialization.online_write_batch_size) keep memory flat.
    with contextlib.redirect_stdout(io.StringIO()):  # Feast prints a progress report per view
        store.materialize(start_date=start, end_date=end, feature_views=list(tables))
    return rows
