"""The source tables as SQL sees them: their manifest, DuckDB views over them, and who is in service."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa

from tasks.core.errors import DataContractError, SourceDataMissing
from tasks.core.layout import MANIFEST_NAME, table_glob
from tasks.core.schema import PLANS, SOURCE_TABLES
from tasks.core.settings import Settings
from tasks.core.sql import connect, load_sql
from tasks.data.contracts import ContractReport, check_source_dir


def read_manifest(source_dir: Path) -> dict:
    """What produced the source tables (simulator or import) and the days they cover."""
    path = source_dir / MANIFEST_NAME
    if not path.is_file():
        raise SourceDataMissing(
            f"no source data under {source_dir}: run `churn simulate` or `churn import` first"
        )
    return json.loads(path.read_text())


def export_days(source_dir: Path) -> list[date]:
    """The snapshot days of every export imported (``churn:`` or ``attributes:`` in a
    subscribers mapping), ascending; none before the first import."""
    if not (source_dir / MANIFEST_NAME).is_file():
        return []
    return sorted(date.fromisoformat(d) for d in read_manifest(source_dir).get("export_days", []))


def source_date_range(source_dir: Path) -> tuple[date, date]:
    """First and last day covered by the source tables."""
    manifest = read_manifest(source_dir)
    return date.fromisoformat(manifest["start"]), date.fromisoformat(manifest["end"])


def register_sources(
    con: duckdb.DuckDBPyConnection, source_dir: Path, subscribers: str | None = None
) -> None:
    """Expose each source table, and the plan catalog, as a view named after the table.

    ``subscribers``: a condition on ``subscriber_id`` (a shard's id range) applied to every table
    that has the column; DuckDB pushes it into the Parquet scans.
    """
    for spec in SOURCE_TABLES.values():
        pattern = Path(table_glob(source_dir, spec))
        if not list(pattern.parent.glob(pattern.name)):
            raise SourceDataMissing(
                f"source table {spec.name} is missing ({pattern}): "
                "run `churn simulate` or `churn import` first"
            )
        relation = con.read_parquet(str(pattern))
        if subscribers and "subscriber_id" in relation.columns:
            relation = relation.filter(subscribers)
        relation.create_view(spec.name)
    _register_plan_catalog(con)


def register_empty_sources(con: duckdb.DuckDBPyConnection) -> None:
    """Every source table as an empty table of its schema, and the plan catalog: what the feature
    SQL reads, for learning its output columns and types without data."""
    for spec in SOURCE_TABLES.values():
        con.register(spec.name, spec.arrow_schema.empty_table())
    _register_plan_catalog(con)


def _register_plan_catalog(con: duckdb.DuckDBPyConnection) -> None:
    con.register(
        "plan_catalog", pa.table({"plan": list(PLANS), "list_price": list(PLANS.values())})
    )


def create_spine(con: duckdb.DuckDBPyConnection, days: list[date]) -> None:
    """Temp table ``spine``: every subscriber in service on each of ``days`` (sql/features/active_subscribers.sql)."""
    con.execute("DROP TABLE IF EXISTS spine")
    con.execute(
        "CREATE TEMP TABLE spine AS " + load_sql("features/active_subscribers"),
        {"snapshot_dates": days},
    )


def active_subscribers(settings: Settings, day: date) -> pa.Table:
    """Subscribers in service on ``day``. Grain: one row per subscriber_id, ordered by id."""
    con = connect()
    register_sources(con, settings.source_dir)
    create_spine(con, [day])
    return con.sql("SELECT subscriber_id FROM spine ORDER BY subscriber_id").to_arrow_table()


def check_sources(settings: Settings, expected_latest: date | None = None) -> list[ContractReport]:
    """Check every source table's contract on its newest day; one error lists every failing table.

    A source made from a snapshot export (manifest ``snapshot_export``) may have an empty
    ``usage_daily``: freshness is not asked of it while it has no rows at all.
    """
    if expected_latest is None:
        expected_latest = source_date_range(settings.source_dir)[1]
    reports = check_source_dir(
        settings.source_dir,
        expected_latest=expected_latest,
        volume_tolerance=settings.volume_tolerance,
        allow_empty_daily="snapshot_export" in read_manifest(settings.source_dir),
    )
    failed = [r for r in reports if not r.passed]
    if failed:
        raise DataContractError(
            ", ".join(r.table for r in failed), [v for r in failed for v in r.violations]
        )
    return reports
