"""The value rules of a data contract (nulls, allowed values, bounds, freshness), checked through whylogs.

Each column of a :class:`~tasks.core.schema.TableSpec` becomes a plan of whylogs metric
constraints (:func:`whylogs_checks`): no missing values where a column is not nullable, allowed
categories, minimum and maximum, and for a dated table a newest day equal to the expected one
(rows dated after it are counted), with counts and examples of the rows that break each. Dates
are profiled as day numbers. :func:`type_family` is how :mod:`tasks.data.contracts` compares
types (by family, not by exact Arrow type).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

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


@dataclass
class _ColumnPlan:
    """The conditions and constraints for one profiled column."""

    conditions: dict[str, Any] = field(default_factory=dict)  # condition name → whylogs Condition
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
            data[name] = day_numbers(array).to_pandas()
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


def from_day_number(day: float) -> str:
    """A whylogs distribution extreme (float day number) back to an ISO date."""
    return (_EPOCH + timedelta(days=int(day))).isoformat()


def day_numbers(array: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dates or timestamps as int32 days since 1970-01-01 (timestamps by their UTC date)."""
    if pa.types.is_timestamp(array.type):
        array = array.cast(pa.timestamp(array.type.unit)).cast(pa.date32())
    return array.cast(pa.date32()).cast(pa.int32())
