"""The value rules of a data contract (nulls, allowed values, bounds, freshness), checked through whylogs.

Each column of a :class:`~tasks.core.schema.TableSpec` becomes a plan of whylogs metric
constraints (:func:`whylogs_checks`): no missing values where a column is not nullable, allowed
categories, minimum and maximum, and for a dated table a newest day equal to the expected one
(rows dated after it are counted), with counts and examples of the rows that break each. Dates
are profiled as day numbers. :func:`type_family` is how :mod:`tasks.data.contracts` compares
types (by family, not by exact Arrow type).

How the profile is made without per-value Python (whylogs 1.6.4 splits a pandas column with
per-value ``apply`` calls: ``np.isinf`` on every float, ~1 s per 1M-row column, and a condition
count calls its predicate on every value):

* whylogs profiles each column's *present* values (no null, no NaN) as a column declared
  ``ColumnProperties.homogeneous``, its public fast path: numbers go straight to the ``counts``,
  ``types`` and ``distribution`` metrics (KLL keeps the exact minimum and maximum);
* what that path does not count is counted exactly with pyarrow and added to the profile as
  whylogs metrics of a second view merged into the first: the missing values in ``counts``
  (``n``, ``null``, ``nan``, ``inf`` as whylogs' own pandas path would count them) and one
  ``condition_count`` metric per column whose matches (rows below ``min``, above ``max``, outside
  the allowed values, dated after the expected day) are the vectorised form of its conditions.

The constraints are then evaluated by whylogs on that view as before, so the report's summaries
are where the violation counts are read from.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.errors import ContractViolation
from tasks.core.schema import Column, TableSpec
from tasks.core.telemetry import disable_telemetry

if TYPE_CHECKING:
    from whylogs.core.constraints import DatasetConstraint, MetricConstraint
    from whylogs.core.constraints.metric_constraints import ReportResult
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

TYPE_FAMILIES = ("integer", "floating", "string", "date", "timestamp", "boolean")
MAX_EXAMPLES = 5
_EPOCH = date(1970, 1, 1)


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


@dataclass(frozen=True)
class _Values:
    """A checked column in the form whylogs profiles (day numbers, 0/1, strings), split up.

    ``present`` holds the values that are neither null nor NaN, in row order; ``nan`` and
    ``floating`` say what whylogs' own pandas path would have seen: arrow turns an integer (or
    0/1, or day-number) column with a null into a float column in pandas, whose nulls are NaN.
    """

    present: pa.ChunkedArray
    missing: int
    nan: int
    inf: int
    floating: bool

    @property
    def string(self) -> bool:
        return pa.types.is_string(self.present.type)


@dataclass
class _ColumnPlan:
    """The conditions, their exact match counts and the constraints for one profiled column."""

    conditions: dict[str, Any] = field(default_factory=dict)  # condition name → whylogs Condition
    matches: dict[str, int] = field(default_factory=dict)  # condition name → matching values
    rules: list[_WhylogsRule] = field(default_factory=list)


def whylogs_checks(
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
    from whylogs.core.constraints import ConstraintsBuilder

    values = {name: _split(array) for name, array in checked.items()}
    plans = {
        name: _plan_column(spec, spec.column(name), expected_latest, values[name])
        for name in checked
    }
    view = _profile(values).merge(_counted_view(values, plans))

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


def _plan_column(
    spec: TableSpec, col: Column, expected_latest: date | None, values: _Values
) -> _ColumnPlan:
    """The whylogs conditions and constraints that encode ``col``'s rules, with exact counts.

    A condition is a violation predicate (as whylogs' ``Condition`` states it) and its count, the
    number of present values it matches, is computed with pyarrow over ``values.present``: the
    same predicate, vectorised. Nulls and NaN are never compared (not_null counts them).
    """
    from whylogs.core.constraints.factories import no_missing_values
    from whylogs.core.metrics.condition_count_metric import Condition

    plan = _ColumnPlan()
    name = col.name
    present = values.present

    def condition(key: str, relation: Callable[[Any], bool], mask: pa.ChunkedArray) -> None:
        plan.conditions[key] = Condition(relation=relation)
        plan.matches[key] = int(pc.sum(mask).as_py() or 0) if len(mask) else 0

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

    numeric = type_family(col.type) in ("integer", "floating")
    if numeric and col.min is not None:
        condition("below_min", partial(operator.gt, col.min), _compare(pc.less, present, col.min))
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
        condition(
            "above_max", partial(operator.lt, col.max), _compare(pc.greater, present, col.max)
        )
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
        allowed = frozenset(col.allowed)
        condition("not_allowed", partial(_not_in, allowed), _not_allowed(present, allowed))
        plan.rules.append(
            _never_rule(
                name,
                "allowed_values",
                "not_allowed",
                f"{name} in allowed values {sorted(col.allowed)}",
                lambda _view: _offenders(present, allowed),
            )
        )
    if name == spec.date_column and expected_latest is not None:
        day = _day_number(expected_latest)
        condition("after_expected", partial(operator.lt, day), pc.greater(present, day))
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


def _not_in(allowed: frozenset[str], value: Any) -> bool:
    """The ``allowed_values`` violation predicate (``_not_allowed`` is its vectorised form)."""
    return value not in allowed


def _compare(
    op: Callable[..., pa.ChunkedArray], present: pa.ChunkedArray, bound: float
) -> pa.ChunkedArray:
    """``present <op> bound`` compared exactly, as Python compares a number with the bound.

    Floats are compared as float64 (a float32 value widened, never the bound narrowed); integers
    with the bound rounded toward them (``x < 0.5`` ⇔ ``x < 1``), so no integer is ever rounded.
    """
    if pa.types.is_integer(present.type) and math.isfinite(bound):
        rounded = math.ceil(bound) if op is pc.less else math.floor(bound)
        return op(present.cast(pa.int64()), pa.scalar(rounded, pa.int64()))
    return op(present.cast(pa.float64(), safe=False), pa.scalar(float(bound), pa.float64()))


def _not_allowed(present: pa.ChunkedArray, allowed: frozenset[str]) -> pa.ChunkedArray:
    """True where a present value is not one of ``allowed`` (anything but a string never is)."""
    if not pa.types.is_string(present.type):
        return pc.is_valid(present)  # numbers are never equal to the allowed strings
    return pc.invert(pc.is_in(present, value_set=pa.array(sorted(allowed), pa.string())))


def _offenders(present: pa.ChunkedArray, allowed: frozenset[str]) -> str:
    """'e.g. ...' with the first few distinct values outside ``allowed``, in row order."""
    offending = pc.unique(present.filter(_not_allowed(present, allowed)))
    return _examples(sorted(map(str, offending.slice(0, MAX_EXAMPLES).to_pylist())))


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
        found = "no dates" if dist.kll.value.is_empty() else from_day_number(dist.max)
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


def _split(array: pa.ChunkedArray) -> _Values:
    """The column as whylogs profiles it (day numbers, 0/1, strings), split into present values
    and counts of the missing ones (see :class:`_Values`).

    whylogs 1.6.4 cannot type datetime/bool dtypes under NumPy 2 (``np.unicode_``), hence day
    numbers and int8; freshness compares day numbers.
    """
    family = type_family(array.type)
    if family == "string":
        array = array.cast(pa.string())
    elif family in ("date", "timestamp"):
        array = day_numbers(array)
    elif family == "boolean":
        array = array.cast(pa.int8())
    inf = 0
    if pa.types.is_floating(array.type):
        present = array.filter(pc.invert(pc.is_nan(array)))  # a null mask entry drops the row
        inf = int(pc.sum(pc.is_inf(present)).as_py() or 0) if len(present) else 0
    else:
        present = array.drop_null()
    missing = len(array) - len(present)
    string = family == "string"
    return _Values(
        present=present,
        missing=missing,
        # pandas holds a numeric column's nulls as NaN, and whylogs counts those NaN as NaN.
        nan=0 if string else missing,
        inf=inf,
        floating=not string and (pa.types.is_floating(array.type) or missing > 0),
    )


def _profile(values: dict[str, _Values]) -> DatasetProfileView:
    """whylogs' profile of the present values: each column tracked alone as a homogeneous one."""
    from whylogs.core import DatasetProfile

    profile = DatasetProfile(_schema(values))
    for name, column in values.items():
        if len(column.present):
            profile.track(pandas=pd.DataFrame({name: _series(column)}))
    return profile.view()


def _series(column: _Values) -> pd.Series:
    """Present values with a fresh RangeIndex (whylogs' homogeneous path reads ``series[0]``).

    Strings as ``StringDtype("python")`` (whylogs' vectorised str path); numbers as float64 or
    int64, the dtype whylogs' pandas path would have typed them by (``types`` counts the same).
    """
    if column.string:
        return column.present.to_pandas(types_mapper={pa.string(): _dtype(column)}.get)
    return pd.Series(column.present.to_numpy().astype(_dtype(column), copy=False))


def _dtype(column: _Values) -> Any:
    if column.string:
        return pd.StringDtype("python")
    return np.dtype(np.float64 if column.floating else np.int64)


def _counted_view(values: dict[str, _Values], plans: dict[str, _ColumnPlan]) -> DatasetProfileView:
    """A view of what the homogeneous path leaves uncounted, counted with pyarrow, as whylogs
    metrics: the missing values (``counts``) and the conditions' matches (``condition_count``)."""
    from whylogs.core.metrics.column_metrics import ColumnCountsMetric
    from whylogs.core.metrics.condition_count_metric import ConditionCountMetric
    from whylogs.core.metrics.metric_components import IntegralComponent
    from whylogs.core.view.column_profile_view import ColumnProfileView
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

    columns = {}
    for name, column in values.items():
        metrics: dict[str, Any] = {
            "counts": ColumnCountsMetric(
                n=IntegralComponent(column.missing),
                null=IntegralComponent(column.missing),
                nan=IntegralComponent(column.nan),
                inf=IntegralComponent(column.inf),
            )
        }
        plan = plans[name]
        if plan.conditions:
            metrics["condition_count"] = ConditionCountMetric(
                conditions=dict(plan.conditions),
                total=IntegralComponent(len(column.present)),
                matches={key: IntegralComponent(n) for key, n in plan.matches.items()},
            )
        columns[name] = ColumnProfileView(metrics=metrics)
    return DatasetProfileView(columns=columns, dataset_timestamp=None, creation_timestamp=None)


def _schema(values: dict[str, _Values]) -> Any:
    """A whylogs ``DeclarativeSchema`` with only the metrics the rules read (plus types), every
    column declared homogeneous (no missing values: those are counted apart)."""
    from whylogs.core.metrics import StandardMetric
    from whylogs.core.preprocessing import ColumnProperties
    from whylogs.core.resolvers import MetricSpec, ResolverSpec
    from whylogs.core.schema import DeclarativeSchema

    resolvers, types = [], {}
    for name, column in values.items():
        metrics = [MetricSpec(StandardMetric.counts.value), MetricSpec(StandardMetric.types.value)]
        if not column.string:
            # Exact min/max (KLL keeps both extremes exactly) for the details and monitoring.
            metrics.append(MetricSpec(StandardMetric.distribution.value))
        resolvers.append(ResolverSpec(column_name=name, metrics=metrics))
        types[name] = (_dtype(column), ColumnProperties.homogeneous)
    return DeclarativeSchema(resolvers, types=types, type_mapper=_type_mapper())


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


def from_day_number(day: float) -> str:
    """A whylogs distribution extreme (float day number) back to an ISO date."""
    return (_EPOCH + timedelta(days=int(day))).isoformat()


def day_numbers(array: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dates or timestamps as int32 days since 1970-01-01 (timestamps by their UTC date)."""
    if pa.types.is_timestamp(array.type):
        array = array.cast(pa.timestamp(array.type.unit)).cast(pa.date32())
    return array.cast(pa.date32()).cast(pa.int32())
