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

What whylogs cannot count exactly is computed with pyarrow and appended to the same report as
``ReportResult`` rows (summary ``{"metric": "pyarrow", ...}``):

* presence and type: whylogs sees values after conversion to pandas, where a date and an
  integer day number look alike, so the arrow schema is the only faithful witness;
* uniqueness: whylogs only has HyperLogLog cardinality estimates (``column_is_probably_unique``);
* volume: a profile has no per-day row counts (unless segmented, which would multiply the cost).
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from functools import lru_cache, partial
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

if TYPE_CHECKING:
    from whylogs.core.constraints import DatasetConstraint, MetricConstraint
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
"""Every rule name, in the order violations are listed within a column."""

TYPE_FAMILIES = ("integer", "floating", "string", "date", "timestamp", "boolean")
MAX_EXAMPLES = 5
_EPOCH = date(1970, 1, 1)

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
    whylogs_violations, whylogs_results, profile = _whylogs_checks(
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
) -> list[ContractReport]:
    """Check every source table under ``source_dir``: the newest ``days`` days of daily tables,
    the whole of the others.

    Freshness (``expected_latest``) and volume apply to daily tables only: a day without
    sign-ups or bills is normal. ``volume_tolerance`` defaults to ``CHURN_VOLUME_TOLERANCE``.
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
            reports.append(
                check_table(
                    spec,
                    data,
                    expected_latest=expected_latest,
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


def type_family(arrow_type: pa.DataType) -> str:
    """integer / floating / string / date / timestamp / boolean (or the type's own name)."""
    t = arrow_type
    if pa.types.is_dictionary(t):
        return type_family(t.value_type)
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "floating"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp"
    return str(t)


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
# whylogs: not_null, min, max, allowed_values, freshness
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _WhylogsRule:
    """One contract rule as a whylogs constraint, and how to read its count and detail."""

    column: str
    rule: str
    constraint: MetricConstraint | DatasetConstraint
    count: Callable[[dict[str, Any]], int]
    """From the constraint's metric summary (the report is the source of the number)."""
    detail: Callable[[DatasetProfileView], str]


@dataclass
class _ColumnPlan:
    """The conditions and constraints for one profiled column."""

    conditions: dict[str, Any] = field(default_factory=dict)  # condition name → whylogs Condition
    rules: list[_WhylogsRule] = field(default_factory=list)


def _whylogs_checks(
    spec: TableSpec,
    checked: dict[str, pa.ChunkedArray],
    rows: int,
    expected_latest: date | None,
) -> tuple[list[ContractViolation], list[ReportResult], DatasetProfileView | None]:
    """Profile the checked columns once, evaluate the constraints, turn failures into violations."""
    if not checked:
        return [], [], None
    if rows == 0:
        # whylogs does not profile an empty frame; only freshness can fail on no rows.
        return _empty_table_freshness(spec, checked, expected_latest), [], None

    disable_telemetry()
    import whylogs as why
    from whylogs.core.constraints import ConstraintsBuilder

    plans = {name: _plan_column(spec, spec.column(name), expected_latest) for name in checked}
    frame = _profile_frame(checked)
    view = why.log(pandas=frame, schema=_schema(plans, checked)).view()

    rules = [rule for plan in plans.values() for rule in plan.rules]
    if not rules:
        return [], [], view
    builder = ConstraintsBuilder(dataset_profile_view=view)
    for rule in rules:
        builder.add_constraint(rule.constraint)
    report = builder.build().generate_constraints_report(with_summary=True)

    by_name = {r.name: r for r in report}
    violations = []
    for rule in rules:
        result = by_name[rule.constraint.name]
        if result.failed:
            summary = result.summary or {}
            violations.append(
                ContractViolation(
                    spec.name, rule.column, rule.rule, int(rule.count(summary)), rule.detail(view)
                )
            )
    return violations, report, view


def _plan_column(spec: TableSpec, col: Column, expected_latest: date | None) -> _ColumnPlan:
    """The whylogs conditions and constraints that encode ``col``'s rules."""
    from whylogs.core.constraints.factories import no_missing_values
    from whylogs.core.metrics.condition_count_metric import Condition

    plan = _ColumnPlan()
    name = col.name
    family = type_family(col.type)
    if not col.nullable:
        plan.rules.append(
            _WhylogsRule(
                name,
                "not_null",
                no_missing_values(name),
                count=lambda s: s["null"],
                detail=partial(_null_detail, name),
            )
        )

    # Conditions are violation predicates, counted with condition_never_meets: whylogs updates
    # a counter per *matching* value, so matching the rare bad values instead of the common
    # good ones halves the cost. The predicates cannot raise on what they are given (numbers
    # against numbers, hashable strings against a set; nulls never reach them), which matters
    # because whylogs swallows a predicate's exception and would count the value as valid.
    numeric = family in ("integer", "floating")
    if numeric and col.min is not None:
        plan.conditions["below_min"] = Condition(relation=partial(operator.gt, col.min))
        plan.rules.append(
            _never_rule(
                name,
                "min",
                "below_min",
                f"{name} >= {col.min} (min)",
                partial(_bound_detail, name, col.min, "min"),
            )
        )
    if numeric and col.max is not None:
        plan.conditions["above_max"] = Condition(relation=partial(operator.lt, col.max))
        plan.rules.append(
            _never_rule(
                name,
                "max",
                "above_max",
                f"{name} <= {col.max} (max)",
                partial(_bound_detail, name, col.max, "max"),
            )
        )
    if col.allowed is not None:
        offenders: list[Any] = []
        plan.conditions["not_allowed"] = Condition(
            relation=_not_allowed(frozenset(col.allowed), offenders)
        )
        plan.rules.append(
            _never_rule(
                name,
                "allowed_values",
                "not_allowed",
                f"{name} in allowed values {sorted(col.allowed)}",
                lambda _view: _examples(sorted(map(str, offenders))),
            )
        )
    if name == spec.date_column and expected_latest is not None:
        day = _day_number(expected_latest)
        plan.conditions["after_expected"] = Condition(relation=partial(operator.lt, day))
        plan.rules.append(_freshness_rule(name, expected_latest))
    return plan


def _never_rule(
    column: str,
    rule: str,
    condition: str,
    name: str,
    detail: Callable[[DatasetProfileView], str],
) -> _WhylogsRule:
    """A ``condition_never_meets`` constraint, renamed to state the bound it guards."""
    from whylogs.core.constraints.factories import condition_never_meets

    constraint = replace(condition_never_meets(column, condition), name=name)
    return _WhylogsRule(column, rule, constraint, count=lambda s: s[condition], detail=detail)


def _not_allowed(allowed: frozenset[str], offenders: list[Any]) -> Callable[[Any], bool]:
    """Violation predicate for ``allowed_values`` that also keeps the first few offenders.

    A closure, not a ``partial``: whylogs deep-copies its schema, which would copy a partial's
    list argument, while functions are copied by reference and keep filling ``offenders``.
    """

    def not_allowed(value: Any) -> bool:
        if value in allowed:
            return False
        if len(offenders) < MAX_EXAMPLES and value not in offenders:
            offenders.append(value)
        return True

    return not_allowed


def _freshness_rule(column: str, expected: date) -> _WhylogsRule:
    """Newest day == expected, read from the exact maximum of the whylogs distribution.

    A ``DatasetConstraint`` because it reads two metrics of the column: the distribution's
    maximum decides, the ``after_expected`` condition count says how many rows are too new.
    """
    from whylogs.core.constraints import DatasetConstraint
    from whylogs.core.constraints.metric_constraints import MissingMetric

    day = _day_number(expected)

    def newest_is_expected(view: DatasetProfileView) -> tuple[bool, dict[str, Any]]:
        profile = view.get_column(column)
        if profile is None:
            raise MissingMetric(column)
        dist = profile.get_metric("distribution")
        counts = profile.get_metric("condition_count")
        passed = not dist.kll.value.is_empty() and int(dist.max) == day
        return passed, {f"{column}/distribution": dist, f"{column}/condition_count": counts}

    constraint = DatasetConstraint(
        condition=newest_is_expected,
        name=f"{column} newest day is {expected.isoformat()} (freshness)",
    )

    def detail(view: DatasetProfileView) -> str:
        dist = view.get_column(column).get_metric("distribution")
        found = "no dates" if dist.kll.value.is_empty() else _from_day_number(dist.max)
        return f"expected newest {column} {expected.isoformat()}, found {found}"

    return _WhylogsRule(
        column,
        "freshness",
        constraint,
        count=lambda s: s[f"{column}/condition_count/after_expected"],
        detail=detail,
    )


def _empty_table_freshness(
    spec: TableSpec, checked: dict[str, pa.ChunkedArray], expected_latest: date | None
) -> list[ContractViolation]:
    """An empty table is stale whenever a newest day is expected."""
    column = spec.date_column
    if expected_latest is None or column is None or column not in checked:
        return []
    detail = f"expected newest {column} {expected_latest.isoformat()}, found no rows"
    return [ContractViolation(spec.name, column, "freshness", 0, detail)]


def _null_detail(column: str, view: DatasetProfileView) -> str:
    """Say how many of the missing values are NaN rather than null."""
    nan = view.get_column(column).get_metric("counts").nan.value
    return f"{nan:,} of them NaN" if nan else ""


def _bound_detail(column: str, bound: float, rule: str, view: DatasetProfileView) -> str:
    """'values below 0.0; lowest -3.5' from the exact min/max of the whylogs distribution."""
    dist = view.get_column(column).get_metric("distribution")
    if rule == "min":
        return f"values below {_number(bound)}; lowest {_number(dist.min)}"
    return f"values above {_number(bound)}; highest {_number(dist.max)}"


def _number(value: float) -> str:
    """Integral floats without a decimal point (whylogs keeps extremes as floats)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.6g}"


def _examples(values: list[str]) -> str:
    return "e.g. " + ", ".join(repr(v) for v in values[:MAX_EXAMPLES]) if values else ""


def _profile_frame(checked: dict[str, pa.ChunkedArray]) -> pd.DataFrame:
    """The checked columns as a pandas frame whylogs can profile quickly and exactly.

    * strings → ``StringDtype("python")``: whylogs takes its vectorised path for str dtypes
      (object columns go through six per-value ``apply`` calls: 7x slower);
    * dates and timestamps → day numbers (days since 1970-01-01) and booleans → int8: whylogs
      1.6.4 cannot type datetime/bool dtypes under NumPy 2 (``np.unicode_``) and treats
      integers vectorised; freshness compares day numbers.
    """
    data = {}
    for name, array in checked.items():
        family = type_family(array.type)
        if family == "string":
            data[name] = array.cast(pa.string()).to_pandas(
                types_mapper={pa.string(): pd.StringDtype("python")}.get
            )
        elif family in ("date", "timestamp"):
            data[name] = _day_numbers(array).to_pandas()
        elif family == "boolean":
            data[name] = array.cast(pa.int8()).to_pandas()
        else:
            data[name] = array.to_pandas()
    return pd.DataFrame(data)


def _schema(plans: dict[str, _ColumnPlan], checked: dict[str, pa.ChunkedArray]) -> Any:
    """A whylogs ``DeclarativeSchema`` with only the metrics the rules read (plus types)."""
    from whylogs.core.metrics import StandardMetric
    from whylogs.core.resolvers import MetricSpec, ResolverSpec
    from whylogs.core.schema import DeclarativeSchema
    from whylogs.core.specialized_resolvers import ConditionCountMetricSpec

    resolvers = []
    for name, plan in plans.items():
        metrics = [MetricSpec(StandardMetric.counts.value), MetricSpec(StandardMetric.types.value)]
        if type_family(checked[name].type) != "string":
            # Exact min/max (KLL keeps both extremes exactly) for the details and monitoring.
            metrics.append(MetricSpec(StandardMetric.distribution.value))
        if plan.conditions:
            metrics.append(ConditionCountMetricSpec(dict(plan.conditions)))
        resolvers.append(ResolverSpec(column_name=name, metrics=metrics))
    return DeclarativeSchema(resolvers, type_mapper=_type_mapper())


@lru_cache(maxsize=1)
def _type_mapper() -> Any:
    """whylogs' StandardTypeMapper, answering for pandas string dtypes first.

    whylogs 1.6.4's ``String`` matcher evaluates ``np.unicode_``, which NumPy 2 removed, for any
    dtype that is not numeric or object: a ``StringDtype`` column would raise AttributeError.
    """
    from whylogs.core.datatypes import StandardTypeMapper, String

    class _StringDtypeFirst(StandardTypeMapper):
        def __call__(self, dtype_or_type: Any) -> Any:
            if isinstance(dtype_or_type, pd.StringDtype):
                return String()
            return super().__call__(dtype_or_type)

    return _StringDtypeFirst()


def _day_number(day: date) -> int:
    return (day - _EPOCH).days


def _from_day_number(day: float) -> str:
    """A whylogs distribution extreme (float day number) back to an ISO date."""
    return (_EPOCH + timedelta(days=int(day))).isoformat()


def _day_numbers(array: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dates or timestamps as int32 days since 1970-01-01 (timestamps by their UTC date)."""
    if pa.types.is_timestamp(array.type):
        array = array.cast(pa.timestamp(array.type.unit)).cast(pa.date32())
    return array.cast(pa.date32()).cast(pa.int32())


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
    days = _day_numbers(checked[column])
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
        newest_day = _from_day_number(newest)
        detail = (
            f"{newest_rows:,} rows on {newest_day} vs {previous_day_rows:,} on "
            f"{_from_day_number(newest - 1)}: {change:+.1%}, tolerance ±{tolerance:.0%}"
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
