"""The retention team's daily high-risk file: who to call first, how much is at stake, and why.

``$CHURN_HOME/retention/high_risk_YYYY-MM-DD.csv`` (and the same rows as ``.parquet``): the top
``retention_capacity`` subscribers by expected monthly revenue at risk (probability × monthly
charge), ranked from 1. The CSV is UTF-8 with a byte-order mark (so a spreadsheet opens the
words as written), ISO dates, a dot as decimal separator, one reason per column. Both files are
written to a temporary name in the same folder and renamed, so the team never opens half a file.

When the source numbers its customers by their own id (``source/customer_keys.parquet``, see
:mod:`tasks.data.customer_keys`), a ``customer_key`` column follows ``subscriber_id``: the id
the team knows the customer by. Without that table the file has exactly HIGH_RISK_COLUMNS.
"""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.files import PARQUET_OPTIONS, atomic_path
from tasks.core.settings import Settings
from tasks.data.customer_keys import KEY, keys_of

HIGH_RISK_COLUMNS = (
    "rank",
    "subscriber_id",
    "probability",
    "risk_tier",
    "monthly_charge",
    "revenue_at_risk",
    "reason_1",
    "reason_2",
    "reason_3",
    "model_version",
    "score_date",
)


def high_risk_paths(settings: Settings, day: date) -> tuple[Path, Path]:
    """The CSV and Parquet paths of ``day``'s file."""
    stem = settings.retention_dir / f"high_risk_{day.isoformat()}"
    return stem.with_suffix(".csv"), stem.with_suffix(".parquet")


def select_high_risk(
    candidates: pa.Table, capacity: int, model_version: int, day: date, reason_count: int = 3
) -> pa.Table:
    """The file's rows: the top ``capacity`` candidates by revenue at risk, then probability, then id.

    ``candidates`` has subscriber_id, probability, risk_tier, monthly_charge, revenue_at_risk and
    reasons (a list of plain-word reasons, best first).
    """
    ordered = candidates.sort_by(
        [
            ("revenue_at_risk", "descending"),
            ("probability", "descending"),
            ("subscriber_id", "ascending"),
        ]
    ).slice(0, capacity)
    n = len(ordered)
    reasons = ordered.column("reasons").to_pylist()
    columns: dict[str, pa.Array] = {
        "rank": pa.array(range(1, n + 1), pa.int32()),
        "subscriber_id": ordered.column("subscriber_id"),
        "probability": pc.round(ordered.column("probability"), 4),
        "risk_tier": ordered.column("risk_tier"),
        "monthly_charge": pc.round(ordered.column("monthly_charge"), 2),
        "revenue_at_risk": pc.round(ordered.column("revenue_at_risk"), 2),
    }
    for i in range(reason_count):
        columns[f"reason_{i + 1}"] = pa.array(
            [r[i] if r is not None and len(r) > i else "" for r in reasons], pa.string()
        )
    columns["model_version"] = pa.array([model_version] * n, pa.int32())
    columns["score_date"] = pa.array([day] * n, pa.date32())
    return pa.table(columns)


def with_customer_keys(rows: pa.Table, source_dir: Path) -> pa.Table:
    """``rows`` with ``customer_key`` right after ``subscriber_id`` (empty for a subscriber
    without one); ``rows`` as they are when the source has no keys table.

    Called on the file's rows only: the keys of a few thousand subscribers, not of everyone.
    """
    ids = rows.column("subscriber_id")
    found = keys_of(source_dir, ids)
    if found is None:
        return rows
    at = pc.index_in(ids, value_set=found.column("subscriber_id").combine_chunks())
    keys = pc.take(found.column(KEY).combine_chunks(), at)
    return rows.add_column(rows.schema.get_field_index("subscriber_id") + 1, KEY, keys)


def write_high_risk_file(settings: Settings, day: date, rows: pa.Table) -> tuple[Path, Path]:
    """Write ``day``'s file as CSV and Parquet, each atomically; a rerun replaces both."""
    csv_path, parquet_path = high_risk_paths(settings, day)
    # Both written to temp names first, then renamed one right after the other: a failure while
    # writing leaves yesterday's pair, never a new Parquet beside an old CSV.
    with atomic_path(parquet_path) as parquet_tmp, atomic_path(csv_path) as csv_tmp:
        pq.write_table(rows, parquet_tmp, **PARQUET_OPTIONS)
        with csv_tmp.open("w", encoding="utf-8-sig", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(rows.column_names)
            for row in rows.to_pylist():
                writer.writerow(_cell(name, value) for name, value in row.items())
    return csv_path, parquet_path


_DECIMALS = {"probability": 4, "monthly_charge": 2, "revenue_at_risk": 2}


def _cell(name: str, value: object) -> object:
    """Spreadsheet-friendly text: fixed decimals (never 1e-05), ISO dates."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.{_DECIMALS.get(name, 4)}f}"
    return value
