"""Drift history: every monitored day's per-feature drift rows, appended, and read back by day.

One Parquet file per score date under ``$CHURN_HOME/monitoring/drift/`` (rewritten whole
when a day is monitored again), so trends and the drift report can read any window of days
without recomputing them; :func:`history_by_day` gives one row per day with its severity.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.files import write_parquet_atomic
from tasks.core.settings import Settings
from tasks.monitoring.drift import DRIFT_SCHEMA, Severity
from tasks.monitoring.reference import PREDICTION

HISTORY_KEYS = pa.schema(
    [
        pa.field("score_date", pa.date32(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("severity", pa.string(), nullable=False),
        pa.field("severity_features", pa.list_(pa.string()), nullable=False),
    ]
)
HISTORY_SCHEMA = pa.schema([*HISTORY_KEYS, *DRIFT_SCHEMA])


# ----------------------------------------------------------------------------- history


def history_dir(settings: Settings) -> Path:
    """``$CHURN_HOME/monitoring/drift``: one Parquet file per score date."""
    return settings.monitoring_dir / "drift"


def append_history(
    settings: Settings,
    score_date: date,
    model_version: int,
    drift_table: pa.Table,
    severity: Severity,
) -> Path:
    """Record the day's drift table and severity; a rerun of the same date replaces that day's file."""
    n = drift_table.num_rows
    keys = pa.table(
        {
            "score_date": pa.array([score_date] * n, pa.date32()),
            "model_version": pa.array([int(model_version)] * n, pa.int32()),
            "severity": pa.array([severity.level] * n, pa.string()),
            "severity_features": pa.array([list(severity.features)] * n, pa.list_(pa.string())),
        },
        schema=HISTORY_KEYS,
    )
    table = pa.Table.from_arrays(
        [*keys.columns, *drift_table.cast(DRIFT_SCHEMA).columns], schema=HISTORY_SCHEMA
    )
    path = history_dir(settings) / f"{score_date.isoformat()}.parquet"
    return write_parquet_atomic(table, path)


def read_history(
    settings: Settings, start: date | None = None, end: date | None = None
) -> pa.Table:
    """Every recorded day (or those in ``[start, end]``), oldest first, rows in drift-table order."""
    directory = history_dir(settings)
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    tables = []
    for path in files:
        day = date.fromisoformat(path.stem)
        if (start is None or day >= start) and (end is None or day <= end):
            tables.append(pq.read_table(path, schema=HISTORY_SCHEMA))
    if not tables:
        return HISTORY_SCHEMA.empty_table()
    return pa.concat_tables(tables)


DAY_HISTORY_SCHEMA = pa.schema(
    [
        ("score_date", pa.date32()),
        ("model_version", pa.int32()),
        ("severity", pa.string()),
        ("severity_features", pa.list_(pa.string())),
        ("alerts", pa.int64()),
        ("warnings", pa.int64()),
        ("max_psi_feature", pa.string()),
        ("max_psi", pa.float64()),
        ("max_ks_feature", pa.string()),
        ("max_ks", pa.float64()),
        ("prediction_psi", pa.float64()),
    ]
)


def history_by_day(history: pa.Table) -> pa.Table:
    """One row per day of :func:`read_history`'s table: severity, counts, largest PSI and KS."""
    out: dict[date, dict[str, Any]] = {}
    for row in history.to_pylist():
        day = out.setdefault(
            row["score_date"],
            {
                "score_date": row["score_date"],
                "model_version": row["model_version"],
                "severity": row["severity"],
                "severity_features": row["severity_features"],
                "alerts": 0,
                "warnings": 0,
                "max_psi": -1.0,
                "max_ks": -1.0,
                "max_psi_feature": None,
                "max_ks_feature": None,
                "prediction_psi": None,
            },
        )
        if row["kind"] == PREDICTION:
            day["prediction_psi"] = row["psi"]
            continue
        day["alerts"] += row["level"] == "alert"
        day["warnings"] += row["level"] == "warn"
        if row["psi"] > day["max_psi"]:
            day["max_psi"], day["max_psi_feature"] = row["psi"], row["feature"]
        if (
            row["test"] == "ks"
            and row["statistic"] is not None
            and row["statistic"] > day["max_ks"]
        ):
            day["max_ks"], day["max_ks_feature"] = row["statistic"], row["feature"]
    for day in out.values():
        day["max_psi"] = None if day["max_psi"] < 0 else day["max_psi"]
        day["max_ks"] = None if day["max_ks"] < 0 else day["max_ks"]
    return pa.Table.from_pylist([out[d] for d in sorted(out)], schema=DAY_HISTORY_SCHEMA)
