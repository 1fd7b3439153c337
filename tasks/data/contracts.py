"""Data contracts: check a table against its :class:`~tasks.core.schema.TableSpec` before anything uses it.

A contract is derived from a ``TableSpec`` alone, so source tables and feature tables are checked
the same way. Every rule has a stable name that appears in messages:

==================  =====================================================================  ==========
rule                what fails                                                             counted by
==================  =====================================================================  ==========
``column_present``  a declared column is missing (count = rows)                            arrow
``type``            the column's arrow type family differs (count = rows)                  arrow
``not_null``        nulls (and NaN) in a non-nullable column                               whylogs
``min``/``max``     values outside ``Column.min``/``Column.max`` (inclusive bounds)        whylogs
``allowed_values``  values outside ``Column.allowed`` (detail lists up to 5 of them)       whylogs
``freshness``       newest ``date_column`` day is not the expected one (count = rows dated
                    after it; 0 when the data is stale)                                    whylogs
``unique``          surplus rows of repeated values in a unique (or single key) column     arrow
``unique_keys``     surplus rows of repeated ``keys`` combinations (keys of >1 column)     arrow
``volume``          rows on the newest day vs the day before differ by more than the
                    tolerance (count = the difference in rows)                             arrow
==================  =====================================================================  ==========

How whylogs is used: the checked columns are profiled once with a ``DeclarativeSchema`` that
carries exactly the metrics the rules need (counts, types, distribution and condition-count
metrics whose conditions are the rules' predicates), a ``Constraints`` set is built from the
factories (``no_missing_values``, ``condition_never_meets``) plus one ``DatasetConstraint`` for
freshness, and ``generate_constraints_report(with_summary=True)`` is evaluated. Violation counts
are read from that report's metric summaries, so the report and the violations always agree.
whylogs profiles only the present values, on its per-column fast path; the missing values and
the conditions' matches are counted exactly with pyarrow and enter the profile as whylogs metrics
(see :mod:`tasks.data.contract_values`): ~15x faster on a 1M-row table, same counts.

What whylogs cannot count exactly is computed with pyarrow and appended to the same report as
``ReportResult`` rows (summary ``{"metric": "pyarrow", ...}``):

* presence and type: whylogs sees values after conversion to pandas, where a date and an
  integer day number look alike, so the arrow schema is the only faithful witness;
* uniqueness: whylogs only has HyperLogLog cardinality estimates (``column_is_probably_unique``);
* volume: a profile has no per-day row counts (unless segmented, which would multiply the cost).

The whylogs rules (nulls, bounds, allowed values, freshness) are built in
:mod:`tasks.data.contract_values`; presence, types, uniqueness and volume are computed here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.errors import ContractViolation, DataContractError, SourceDataMissing
from tasks.core.layout import table_glob, table_path
from tasks.core.schema import SOURCE_TABLES, Column, TableSpec
from tasks.core.telemetry import disable_telemetry
from tasks.data.contract_values import (
    MAX_EXAMPLES,
    day_numbers,
    from_day_number,
    type_family,
    whylogs_checks,
)

if TYPE_CHECKING:
    from whylogs.core.constraints.metric_constraints import ReportResult
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

logger = logging.getLogger(__name__)

RULES = (
    "column_present",
    "type",
    "not_null",
    "min",
    "max",
    "allowed_values",
    "unique",
    "unique_keys",
    "freshness",
    "volume",
)

TableLike = pa.Table | pl.DataFrame | pd.DataFrame


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class ContractReport:
    """The outcome of checking one table: its violations and the whylogs constraints report."""

    table: str
    rows: int
    violations: list[ContractViolation]
    whylogs_report: list[ReportResult]
    """``generate_constraints_report(with_summary=True)`` plus the rules computed with pyarrow."""
    profile: DatasetProfileView | None = field(default=None, repr=False)
    """The whylogs profile the constraints were evaluated on (None for an empty table)."""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.violations

    def raise_if_failed(self) -> None:
        """Raise :class:`DataContractError` carrying every violation, if there is any."""
        if self.violations:
            raise DataContractError(self.table, list(self.violations))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (what a monitoring job stores for the day)."""
        return {
            "table": self.table,
            "rows": self.rows,
            "passed": self.passed,
            "violations": [
                {"column": v.column, "rule": v.rule, "count": v.count, "detail": v.detail}
                for v in self.violations
            ],
            "constraints": [
                {
                    "name": r.name,
                    "passed": int(r.passed),
                    "failed": int(r.failed),
                    "summary": _jsonable(r.summary),
                }
                for r in self.whylogs_report
            ],
        }


def _jsonable(value: Any) -> Any:
    """Numpy scalars and dates from whylogs summaries → plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def check_table(
    spec: TableSpec,
    data: TableLike,
    *,
    expected_latest: date | None = None,
    volume_tolerance: float | None = None,
    previous_day_rows: int | None = None,
) -> ContractReport:
    """Check ``data`` against the contract derived from ``spec``; never raises for bad data.

    ``expected_latest`` turns on ``freshness`` (the newest ``date_column`` day must equal it);
    ``volume_tolerance`` turns on ``volume`` (newest day vs the day before). The day before is
    counted in ``data`` unless ``previous_day_rows`` gives it (a caller that checks only the
    newest day counts it elsewhere, cheaply).
    """
    disable_telemetry()  # before anything below imports whylogs
    started = time.perf_counter()
    table, unreadable = _as_arrow(data)
    rows = table.num_rows
    violations: list[ContractViolation] = []
    computed: list[ReportResult] = []

    checked = _present_and_typed(spec, table, unreadable, violations, computed)
    whylogs_violations, whylogs_results, profile = whylogs_checks(
        spec, checked, rows, expected_latest
    )
    violations += whylogs_violations
    violations += _uniqueness(spec, table, checked, computed)
    if volume_tolerance is not None:
        violations += _volume(spec, checked, volume_tolerance, previous_day_rows, computed)

    violations.sort(key=partial(violation_sort_key, spec))
    seconds = time.perf_counter() - started
    logger.info(
        "contract %s: %d rows, %d violation(s), %.2fs", spec.name, rows, len(violations), seconds
    )
    return ContractReport(
        table=spec.name,
        rows=rows,
        violations=violations,
        whylogs_report=whylogs_results + computed,
        profile=profile,
        seconds=seconds,
    )


def enforce(spec: TableSpec, data: TableLike, **kwargs: Any) -> ContractReport:
    """:func:`check_table`, then raise :class:`DataContractError` if any rule failed."""
    report = check_table(spec, data, **kwargs)
    report.raise_if_failed()
    return report


def is_daily(spec: TableSpec) -> bool:
    """Daily tables (one row per subscriber per day) are the partitioned ones with a date column."""
    return spec.partitioned and spec.date_column is not None


def check_source_dir(
    source_dir: Path,
    *,
    expected_latest: date | None = None,
    days: int = 1,
    volume_tolerance: float | None = None,
    specs: Iterable[TableSpec] | None = None,
    allow_empty_daily: bool = False,
) -> list[ContractReport]:
    """Check every source table under ``source_dir``: the newest ``days`` days of daily tables,
    the whole of the others.

    Freshness (``expected_latest``) and volume apply to daily tables only: a day without
    sign-ups or bills is normal. ``volume_tolerance`` defaults to ``CHURN_VOLUME_TOLERANCE``.
    ``allow_empty_daily``: a daily table without a single row is not held to freshness (a source
    that is one snapshot export has no daily data at all); a daily table with rows always is.
    Raises :class:`SourceDataMissing` when a table is absent.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    if volume_tolerance is None:
        from tasks.core.settings import get_settings

        volume_tolerance = get_settings().volume_tolerance
    reports = []
    for spec in specs if specs is not None else SOURCE_TABLES.values():
        path = table_path(source_dir, spec)
        if not path.exists() or (spec.partitioned and not any(path.glob("*.parquet"))):
            raise SourceDataMissing(f"source table {spec.name} not found at {path}")
        if is_daily(spec):
            data, previous = _read_newest_days(source_dir, spec, days)
            empty_allowed = allow_empty_daily and data.num_rows == 0
            reports.append(
                check_table(
                    spec,
                    data,
                    expected_latest=None if empty_allowed else expected_latest,
                    volume_tolerance=volume_tolerance,
                    previous_day_rows=previous,
                )
            )
        else:
            reports.append(check_table(spec, pq.read_table(path)))
    return reports


# --------------------------------------------------------------------------------------------
# Input normalisation, presence and types (arrow)
# --------------------------------------------------------------------------------------------


def _as_arrow(data: TableLike) -> tuple[pa.Table, dict[str, str]]:
    """``data`` as an arrow table, plus pandas columns arrow could not read (name → reason)."""
    if isinstance(data, pa.Table):
        return data, {}
    if isinstance(data, pl.DataFrame):
        return data.to_arrow(), {}
    if isinstance(data, pd.DataFrame):
        try:
            return pa.Table.from_pandas(data, preserve_index=False), {}
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return _pandas_by_column(data)
    raise TypeError(f"cannot check a {type(data).__name__}; pass a pyarrow, polars or pandas table")


def _pandas_by_column(df: pd.DataFrame) -> tuple[pa.Table, dict[str, str]]:
    """Convert column by column so one mixed-type object column fails alone, as a type violation."""
    arrays, names, unreadable = [], [], {}
    for name in df.columns:
        try:
            arrays.append(pa.array(df[name], from_pandas=True))
            names.append(str(name))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            unreadable[str(name)] = f"mixed values arrow cannot read: {exc}"
    return pa.Table.from_arrays(arrays, names=names), unreadable


def _present_and_typed(
    spec: TableSpec,
    table: pa.Table,
    unreadable: dict[str, str],
    violations: list[ContractViolation],
    computed: list[ReportResult],
) -> dict[str, pa.ChunkedArray]:
    """Columns that exist with the right type family, decoded; record the ones that don't.

    A missing or mistyped column gets no value rules: its values cannot be compared with the
    declared bounds, and whylogs must never be asked about a column it was not given.
    """
    checked: dict[str, pa.ChunkedArray] = {}
    rows = table.num_rows
    for col in spec.columns:
        expected = type_family(col.type)
        if col.name in unreadable:
            fail = ContractViolation(spec.name, col.name, "type", rows, unreadable[col.name])
        elif col.name not in table.column_names:
            found = ", ".join(table.column_names[:12]) or "none"
            fail = ContractViolation(
                spec.name, col.name, "column_present", rows, f"column missing; found: {found}"
            )
        else:
            array = table.column(col.name)
            actual = type_family(array.type)
            if actual == expected or pa.types.is_null(array.type):
                # An all-null column (arrow type null) has no value of a wrong type; not_null
                # decides whether its nulls are allowed.
                checked[col.name] = _decoded(array, col)
                fail = None
            else:
                fail = ContractViolation(
                    spec.name,
                    col.name,
                    "type",
                    rows,
                    f"expected {expected} ({col.type}), found {array.type}",
                )
        rule = fail.rule if fail else "type"
        computed.append(_computed_result(spec, col.name, rule, fail))
        if fail:
            violations.append(fail)
    return checked


def _decoded(array: pa.ChunkedArray, col: Column) -> pa.ChunkedArray:
    """Dictionary-decoded, with a null-typed column cast to the declared type."""
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if pa.types.is_null(array.type):
        array = array.cast(col.type)
    return array


def _computed_result(
    spec: TableSpec, column: str, rule: str, violation: ContractViolation | None
) -> ReportResult:
    """A rule computed outside whylogs, in the shape of a whylogs ``ReportResult``."""
    from whylogs.core.constraints.metric_constraints import ReportResult

    summary = {"metric": "pyarrow", "table": spec.name, "column": column, "rule": rule}
    if violation is not None:
        summary |= {"count": violation.count, "detail": violation.detail}
        return ReportResult(name=f"{column} {rule}", passed=0, failed=1, summary=summary)
    return ReportResult(name=f"{column} {rule}", passed=1, failed=0, summary=summary)


def violation_sort_key(spec: TableSpec, v: ContractViolation) -> tuple[int, int]:
    """Spec column order, then rule order; table-level rules (e.g. unique_keys) last."""
    names = [c.name for c in spec.columns]
    position = names.index(v.column) if v.column in names else len(names)
    return position, RULES.index(v.rule) if v.rule in RULES else len(RULES)


# --------------------------------------------------------------------------------------------
# Computed with pyarrow: unique, unique_keys, volume
# --------------------------------------------------------------------------------------------


def _uniqueness(
    spec: TableSpec,
    table: pa.Table,
    checked: dict[str, pa.ChunkedArray],
    computed: list[ReportResult],
) -> list[ContractViolation]:
    """Exact duplicate counts: whylogs only estimates cardinality (HyperLogLog)."""
    unique_columns = [c.name for c in spec.columns if c.unique]
    if len(spec.keys) == 1 and spec.keys[0] not in unique_columns:
        unique_columns.append(spec.keys[0])
    violations = []
    for name in unique_columns:
        if name in checked:
            fail = _duplicates(spec, pa.table({name: checked[name]}), (name,), "unique")
            computed.append(_computed_result(spec, name, "unique", fail))
            violations += [fail] if fail else []
    if len(spec.keys) > 1 and all(k in checked for k in spec.keys):
        keys_table = pa.table({k: checked[k] for k in spec.keys})
        fail = _duplicates(spec, keys_table, spec.keys, "unique_keys")
        computed.append(_computed_result(spec, ",".join(spec.keys), "unique_keys", fail))
        violations += [fail] if fail else []
    return violations


def _duplicates(
    spec: TableSpec, table: pa.Table, keys: tuple[str, ...], rule: str
) -> ContractViolation | None:
    """Rows beyond the first for each repeated value (null keys are not_null's business)."""
    table = table.drop_null()
    counts = table.group_by(list(keys)).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts["count_all"], 1))
    if repeated.num_rows == 0:
        return None
    surplus = int(pc.sum(pc.subtract(repeated["count_all"], 1)).as_py())
    sample = repeated.sort_by([(k, "ascending") for k in keys]).slice(0, MAX_EXAMPLES).to_pylist()
    shown = [
        "(" + ", ".join(str(r[k]) for k in keys) + ")" if len(keys) > 1 else str(r[keys[0]])
        for r in sample
    ]
    detail = f"{repeated.num_rows:,} repeated value(s), e.g. {', '.join(shown)}"
    return ContractViolation(spec.name, ",".join(keys), rule, surplus, detail)


def _volume(
    spec: TableSpec,
    checked: dict[str, pa.ChunkedArray],
    tolerance: float,
    previous_day_rows: int | None,
    computed: list[ReportResult],
) -> list[ContractViolation]:
    """Rows on the newest day vs the day before; a profile has no per-day counts."""
    column = spec.date_column
    if column is None or column not in checked:
        return []
    days = day_numbers(checked[column])
    newest = pc.max(days).as_py()
    if newest is None:
        return []
    newest_rows = int(pc.sum(pc.equal(days, newest)).as_py() or 0)
    if previous_day_rows is None:
        previous_day_rows = int(pc.sum(pc.equal(days, newest - 1)).as_py() or 0)
    if previous_day_rows == 0:
        logger.info("volume of %s not checked: no rows on the day before the newest", spec.name)
        return []
    change = (newest_rows - previous_day_rows) / previous_day_rows
    fail = None
    if abs(change) > tolerance:
        newest_day = from_day_number(newest)
        detail = (
            f"{newest_rows:,} rows on {newest_day} vs {previous_day_rows:,} on "
            f"{from_day_number(newest - 1)}: {change:+.1%}, tolerance ±{tolerance:.0%}"
        )
        fail = ContractViolation(
            spec.name, column, "volume", abs(newest_rows - previous_day_rows), detail
        )
    computed.append(_computed_result(spec, column, "volume", fail))
    return [fail] if fail else []


# --------------------------------------------------------------------------------------------
# Reading the newest days of a daily table
# --------------------------------------------------------------------------------------------


def _read_newest_days(source_dir: Path, spec: TableSpec, days: int) -> tuple[pa.Table, int]:
    """The newest ``days`` days of a daily table, and the row count of the day before the newest.

    The count is what ``volume`` compares the newest day with; counting it in DuckDB (from
    Parquet statistics and one column) spares reading that day when ``days`` is 1.
    """
    from tasks.core.sql import connect

    column = spec.date_column
    assert column is not None  # is_daily() guarantees it
    # The path is a bound parameter, never SQL text: a quote in it cannot break the query.
    source = "read_parquet($path)"
    path = table_glob(source_dir, spec)
    con = connect()
    try:
        found = con.sql(f'SELECT max("{column}") FROM {source}', params={"path": path}).fetchall()
        newest = found[0][0]
        if newest is None:
            return pq.read_schema(
                next(table_path(source_dir, spec).glob("*.parquet"))
            ).empty_table(), 0
        first = newest - timedelta(days=days - 1)
        data = con.sql(
            f'SELECT * FROM {source} WHERE "{column}" >= $first',
            params={"path": path, "first": first},
        ).to_arrow_table()
        previous = con.sql(
            f'SELECT count(*) FROM {source} WHERE "{column}" = $day',
            params={"path": path, "day": newest - timedelta(days=1)},
        ).fetchall()[0][0]
    finally:
        con.close()
    return data, int(previous)
