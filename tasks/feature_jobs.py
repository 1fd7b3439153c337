"""Contracts on source and feature tables, and loading the online store."""

from __future__ import annotations

import contextlib
import io
import logging
from datetime import date, timedelta

import pyarrow as pa

from tasks.contracts import ContractReport, check_source_dir, check_table
from tasks.core.errors import DataContractError
from tasks.core.settings import Settings
from tasks.feature_store import open_store
from tasks.features import (
    FEATURE_TABLES,
    built_days,
    day_start,
    feature_table_spec,
    read_feature_day,
    source_date_range,
)

logger = logging.getLogger(__name__)


def check_sources(settings: Settings, expected_latest: date | None = None) -> list[ContractReport]:
    """Check every source table's contract on its newest day; raise on the first failing table."""
    if expected_latest is None:
        expected_latest = source_date_range(settings.source_dir)[1]
    reports = check_source_dir(settings.source_dir, expected_latest=expected_latest)
    for report in reports:
        report.raise_if_failed()
    return reports


def check_feature_tables(settings: Settings, day: date) -> list[ContractReport]:
    """Check the contract of every feature table on ``day`` (and its volume against the day before)."""
    store = open_store(settings)
    reports = []
    for name in FEATURE_TABLES:
        spec = feature_table_spec(store.get_feature_view(name))
        days = [d for d in built_days(settings, name) if d in (day - timedelta(days=1), day)]
        table = pa.concat_tables([read_feature_day(settings, name, d) for d in days])
        report = check_table(
            spec, table, expected_latest=None, volume_tolerance=settings.volume_tolerance
        )
        reports.append(report)
    failed = [r for r in reports if not r.passed]
    if failed:
        raise DataContractError(
            ", ".join(r.table for r in failed), [v for r in failed for v in r.violations]
        )
    return reports


def materialize_online(settings: Settings, day: date) -> dict[str, int]:
    """Load each feature view's newest values as of ``day`` into the online store; rows per view."""
    store = open_store(settings)
    views = [store.get_feature_view(name) for name in FEATURE_TABLES]
    end = day_start(day)
    longest_ttl = max((v.ttl for v in views if v.ttl), default=timedelta(days=1))
    # Batched online writes (materialization.online_write_batch_size) keep memory flat.
    with contextlib.redirect_stdout(io.StringIO()):  # Feast prints a progress report per view
        store.materialize(
            start_date=end - longest_ttl, end_date=end, feature_views=list(FEATURE_TABLES)
        )
    return {name: read_feature_day(settings, name, day).num_rows for name in FEATURE_TABLES}
