"""Data contracts: every rule fails with its table, column, rule and count; valid data passes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.errors import ContractViolation, DataContractError, SourceDataMissing
from tasks.core.files import write_parquet_atomic
from tasks.core.layout import table_path
from tasks.core.schema import SOURCE_TABLES, SUBSCRIBERS, USAGE_DAILY, Column, TableSpec
from tasks.data.contract_values import type_family
from tasks.data.contracts import ContractReport, check_source_dir, check_table, enforce

DAY = date(2026, 1, 31)


def valid_rows(spec: TableSpec, n: int = 3, day: date = DAY) -> dict[str, list[Any]]:
    """``n`` rows that satisfy every rule of ``spec`` (distinct ids, all on ``day``)."""
    data: dict[str, list[Any]] = {}
    for col in spec.columns:
        family = type_family(col.type)
        if col.unique or col.name in spec.keys and family == "integer":
            data[col.name] = list(range(1, n + 1))
        elif col.allowed:
            data[col.name] = [col.allowed[i % len(col.allowed)] for i in range(n)]
        elif family == "date":
            data[col.name] = [day] * n
        elif family == "integer":
            data[col.name] = [int(col.min or 0)] * n
        else:
            data[col.name] = [float(col.min or 0.0) + 1.0] * n
    return data


def to_table(spec: TableSpec, data: dict[str, list[Any]]) -> pa.Table:
    """Arrow table typed as the spec says (absent columns left out, arrow arrays kept as given)."""
    fields = [f for f in spec.arrow_schema if f.name in data]
    return pa.table(
        {
            f.name: data[f.name]
            if isinstance(data[f.name], pa.Array)
            else pa.array(data[f.name], f.type)
            for f in fields
        }
    )


def expected_message(table: str, column: str, rule: str, count: int) -> str:
    """The line a violation contributes to ``str(DataContractError)``."""
    return str(ContractViolation(table, column, rule, count)).split(" (")[0]


def _without(column: str) -> Callable[[dict], dict]:
    def edit(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != column}

    return edit


def _set(column: str, values: list[Any]) -> Callable[[dict], dict]:
    def edit(d: dict) -> dict:
        return d | {column: values}

    return edit


# (spec, edit of valid rows, check_table kwargs, column, rule, count, text in the detail)
FAILING_CASES = [
    pytest.param(
        # a declared column is missing: reported by name, whylogs never sees it
        SUBSCRIBERS,
        _without("region"),
        {},
        "region",
        "column_present",
        3,
        "column missing",
        id="column_present",
    ),
    pytest.param(
        # charges arrive as text: the arrow type family differs, count = every row
        SUBSCRIBERS,
        _set("monthly_charge", pa.array(["1", "2", "3"])),
        {},
        "monthly_charge",
        "type",
        3,
        "expected floating",
        id="type",
    ),
    pytest.param(
        # one subscriber without a plan
        SUBSCRIBERS,
        _set("plan", ["basic", None, "premium"]),
        {},
        "plan",
        "not_null",
        1,
        "",
        id="not_null",
    ),
    pytest.param(
        # a negative charge breaks min=0
        SUBSCRIBERS,
        _set("monthly_charge", [10.0, -5.0, 20.0]),
        {},
        "monthly_charge",
        "min",
        1,
        "lowest -5",
        id="min",
    ),
    pytest.param(
        # two charges above max=500
        SUBSCRIBERS,
        _set("monthly_charge", [900.0, 10.0, 501.5]),
        {},
        "monthly_charge",
        "max",
        2,
        "highest 900",
        id="max",
    ),
    pytest.param(
        # two rows with a region outside REGIONS; the detail names the offender
        SUBSCRIBERS,
        _set("region", ["north", "mars", "mars"]),
        {},
        "region",
        "allowed_values",
        2,
        "'mars'",
        id="allowed_values",
    ),
    pytest.param(
        # subscriber 1 twice: one surplus row
        SUBSCRIBERS,
        _set("subscriber_id", [1, 1, 2]),
        {},
        "subscriber_id",
        "unique",
        1,
        "e.g. 1",
        id="unique",
    ),
    pytest.param(
        # the same (subscriber, day) twice in usage: the composite key repeats
        USAGE_DAILY,
        _set("subscriber_id", [7, 7, 8]),
        {},
        "subscriber_id,usage_date",
        "unique_keys",
        1,
        "(7, 2026-01-31)",
        id="unique_keys",
    ),
    pytest.param(
        # the newest day is a day late: stale, no row is "too new"
        USAGE_DAILY,
        lambda d: d,
        {"expected_latest": DAY + timedelta(days=1)},
        "usage_date",
        "freshness",
        0,
        "expected newest usage_date 2026-02-01, found 2026-01-31",
        id="freshness-stale",
    ),
    pytest.param(
        # rows dated after the expected day: counted
        USAGE_DAILY,
        lambda d: d,
        {"expected_latest": DAY - timedelta(days=1)},
        "usage_date",
        "freshness",
        3,
        "found 2026-01-31",
        id="freshness-future",
    ),
    pytest.param(
        # 3 rows on the newest day vs 10 the day before: -70% beyond ±20%
        USAGE_DAILY,
        lambda d: {
            k: v + valid_rows(USAGE_DAILY, 10, DAY - timedelta(days=1))[k] for k, v in d.items()
        },
        {"volume_tolerance": 0.2},
        "usage_date",
        "volume",
        7,
        "3 rows on 2026-01-31 vs 10",
        id="volume",
    ),
]


@pytest.mark.parametrize(
    ("spec", "edit", "kwargs", "column", "rule", "count", "detail"), FAILING_CASES
)
def test_rule_fails_with_table_column_rule_and_count(
    spec: TableSpec,
    edit: Callable[[dict], dict],
    kwargs: dict[str, Any],
    column: str,
    rule: str,
    count: int,
    detail: str,
) -> None:
    data = to_table(spec, edit(valid_rows(spec)))
    with pytest.raises(DataContractError) as err:
        enforce(spec, data, **kwargs)
    message = str(err.value)
    assert expected_message(spec.name, column, rule, count) in message
    assert detail in message
    (violation,) = [v for v in err.value.violations if v.rule == rule]
    assert (violation.table, violation.column, violation.count) == (spec.name, column, count)


@pytest.mark.parametrize("spec", list(SOURCE_TABLES.values()), ids=list(SOURCE_TABLES))
def test_valid_table_passes_every_rule(spec: TableSpec) -> None:
    # every source table: valid rows pass, with freshness and volume switched on
    today = valid_rows(spec, 4)
    yesterday = valid_rows(spec, 4, DAY - timedelta(days=1))
    if len(spec.keys) == 1:  # a single key is unique across days too
        yesterday[spec.keys[0]] = [i + 100 for i in yesterday[spec.keys[0]]]
    data = to_table(spec, {k: today[k] + yesterday[k] for k in today})
    report = enforce(spec, data, expected_latest=DAY, volume_tolerance=0.2)
    assert report.passed and report.violations == [] and report.rows == 8
    assert report.whylogs_report and all(r.failed == 0 for r in report.whylogs_report)
    json.dumps(report.to_dict())  # serialisable as is, for the monitoring job


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda t: t, id="arrow"),
        pytest.param(pl.from_arrow, id="polars"),
        pytest.param(lambda t: t.to_pandas(), id="pandas"),
    ],
)
def test_all_frame_kinds_are_checked_alike(convert: Callable[[pa.Table], Any]) -> None:
    # the same bad column gives the same violation from arrow, polars and pandas input
    data = to_table(
        SUBSCRIBERS, _set("monthly_charge", [-1.0, None, 20.0])(valid_rows(SUBSCRIBERS))
    )
    report = check_table(SUBSCRIBERS, convert(data))
    found = {(v.column, v.rule, v.count) for v in report.violations}
    assert found == {("monthly_charge", "not_null", 1), ("monthly_charge", "min", 1)}


def test_nan_counts_as_missing() -> None:
    # NaN is no value: not_null counts it and says so; it is not compared with the bounds
    data = to_table(
        SUBSCRIBERS, _set("monthly_charge", [float("nan"), 1.0, 2.0])(valid_rows(SUBSCRIBERS))
    )
    (violation,) = check_table(SUBSCRIBERS, data).violations
    assert (violation.rule, violation.count, violation.detail) == ("not_null", 1, "1 of them NaN")


def test_missing_columns_fail_clearly_from_pandas() -> None:
    # a frame with only two of the nine columns: one column_present per missing column, no crash
    frame = pd.DataFrame({"subscriber_id": [1, 2], "plan": ["basic", "gold"]})
    report = check_table(SUBSCRIBERS, frame)
    missing = {v.column for v in report.violations if v.rule == "column_present"}
    assert missing == {c.name for c in SUBSCRIBERS.columns} - {"subscriber_id", "plan"}
    assert ("plan", "allowed_values", 1) in {(v.column, v.rule, v.count) for v in report.violations}


def test_several_violations_are_all_reported() -> None:
    # five broken rules in one table: one error lists all five, in column order
    data = valid_rows(SUBSCRIBERS)
    data |= {
        "subscriber_id": [0, 2, 2],  # min (0) and unique (2)
        "plan": ["gold", "basic", None],  # allowed_values and not_null
        "monthly_charge": [1.0, 2.0, 9999.0],  # max
    }
    with pytest.raises(DataContractError) as err:
        enforce(SUBSCRIBERS, to_table(SUBSCRIBERS, data))
    rules = [(v.column, v.rule) for v in err.value.violations]
    assert rules == [
        ("subscriber_id", "min"),
        ("subscriber_id", "unique"),
        ("plan", "not_null"),
        ("plan", "allowed_values"),
        ("monthly_charge", "max"),
    ]
    assert "5 rule(s) broken" in str(err.value)


def test_failing_rules_appear_in_the_whylogs_report() -> None:
    # the report holds whylogs' own results; counts come from its metric summaries
    data = to_table(
        SUBSCRIBERS, _set("region", ["mars", "north", "south"])(valid_rows(SUBSCRIBERS))
    )
    report = check_table(SUBSCRIBERS, data, expected_latest=DAY)
    by_name = {r.name: r for r in report.whylogs_report}
    region = next(r for name, r in by_name.items() if name.startswith("region in allowed values"))
    assert (region.failed, region.summary["not_allowed"]) == (1, 1)
    assert by_name["signup_date newest day is 2026-01-31 (freshness)"].passed == 1
    assert by_name["subscriber_id unique"].summary["metric"] == "pyarrow"
    assert report.profile is not None


@pytest.mark.parametrize(
    ("kwargs", "violations"),
    [
        pytest.param({}, [], id="empty-passes"),  # no rows, nothing to break
        pytest.param(  # no rows but a newest day is expected: stale
            {"expected_latest": DAY}, [("usage_date", "freshness", 0)], id="empty-is-stale"
        ),
    ],
)
def test_empty_table(kwargs: dict[str, Any], violations: list[tuple]) -> None:
    report = check_table(USAGE_DAILY, USAGE_DAILY.arrow_schema.empty_table(), **kwargs)
    assert [(v.column, v.rule, v.count) for v in report.violations] == violations


def test_feature_like_spec_is_checked_generically() -> None:
    # any TableSpec works: a timestamp date column, a nullable float, a boolean
    spec = TableSpec(
        name="features_x",
        grain="one row per subscriber per snapshot",
        keys=("subscriber_id", "event_timestamp"),
        date_column="event_timestamp",
        columns=(
            Column("subscriber_id", pa.int64(), min=1),
            Column("event_timestamp", pa.timestamp("us", tz="UTC")),
            Column("score", pa.float32(), nullable=True, min=0.0, max=1.0),
            Column("flag", pa.bool_()),
        ),
    )
    ts = pd.Timestamp(DAY, tz="UTC")
    data = pa.table(
        {
            "subscriber_id": pa.array([1, 2], pa.int64()),
            "event_timestamp": pa.array([ts, ts], pa.timestamp("us", tz="UTC")),
            "score": pa.array([None, 1.5], pa.float32()),
            "flag": [True, None],
        }
    )
    report = check_table(spec, data, expected_latest=DAY)
    found = {(v.column, v.rule, v.count) for v in report.violations}
    assert found == {("score", "max", 1), ("flag", "not_null", 1)}


def _write_source_dir(root: Path, usage_days: dict[date, int]) -> None:
    """A valid source directory: usage rows per day as given, one row set for the other tables."""
    for spec in SOURCE_TABLES.values():
        if spec is USAGE_DAILY:
            parts = [to_table(spec, valid_rows(spec, n, day)) for day, n in usage_days.items()]
            write_parquet_atomic(pa.concat_tables(parts), table_path(root, spec) / "part-0.parquet")
        else:
            write_parquet_atomic(to_table(spec, valid_rows(spec)), table_path(root, spec))


def test_check_source_dir_checks_newest_day_and_volume(tmp_path: Path) -> None:
    # only the newest usage day is read; its volume is compared with the day before's count
    _write_source_dir(tmp_path, {DAY - timedelta(days=2): 10, DAY - timedelta(days=1): 10, DAY: 5})
    reports = check_source_dir(tmp_path, expected_latest=DAY, volume_tolerance=0.2)
    assert [r.table for r in reports] == list(SOURCE_TABLES)
    usage = next(r for r in reports if r.table == "usage_daily")
    assert usage.rows == 5
    assert [(v.rule, v.count) for v in usage.violations] == [("volume", 5)]
    assert all(r.passed for r in reports if r is not usage)


def test_check_source_dir_freshness_and_days(tmp_path: Path) -> None:
    # two days read; the expected day is a day later than the data
    _write_source_dir(tmp_path, {DAY - timedelta(days=1): 4, DAY: 4})
    reports: list[ContractReport] = check_source_dir(
        tmp_path, expected_latest=DAY + timedelta(days=1), days=2, volume_tolerance=0.2
    )
    usage = next(r for r in reports if r.table == "usage_daily")
    assert usage.rows == 8
    assert [v.rule for v in usage.violations] == ["freshness"]


def test_check_source_dir_missing_table(tmp_path: Path) -> None:
    # a source table that is not there is named
    _write_source_dir(tmp_path, {DAY: 3})
    table_path(tmp_path, SOURCE_TABLES["billing"]).unlink()
    with pytest.raises(SourceDataMissing, match="billing"):
        check_source_dir(tmp_path)


def test_source_dir_reads_parquet_types_back(tmp_path: Path) -> None:
    # what DuckDB/pyarrow read back keeps the declared type families
    _write_source_dir(tmp_path, {DAY: 3})
    written = pq.read_table(table_path(tmp_path, SUBSCRIBERS))
    assert check_table(SUBSCRIBERS, written).passed


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # whylogs' variance of a column with inf
def test_profile_counts_missing_values_and_extremes() -> None:
    # the profile behind the report counts every row: present values, nulls, NaN and inf
    spec = TableSpec(
        name="features_y",
        grain="one row per subscriber",
        keys=("subscriber_id",),
        columns=(
            Column("subscriber_id", pa.int64(), min=1, max=10),
            Column("score", pa.float32(), nullable=True, min=0.0, max=1.0),
            Column("calls", pa.int32(), nullable=True, max=5),
        ),
    )
    data = pa.table(
        {
            "subscriber_id": pa.array([1, 2, 3, 4, 11], pa.int64()),
            "score": pa.array([0.5, None, float("nan"), float("inf"), -0.5], pa.float32()),
            "calls": pa.array([1, None, 7, 2, 3], pa.int32()),
        }
    )
    report = check_table(spec, data)
    found = {(v.column, v.rule, v.count) for v in report.violations}
    assert found == {
        ("subscriber_id", "max", 1),  # 11
        ("score", "min", 1),  # -0.5; NaN and null are not compared
        ("score", "max", 1),  # inf
        ("calls", "max", 1),  # 7
    }
    assert report.profile is not None
    score = report.profile.get_column("score")
    counts = score.get_metric("counts").to_summary_dict()
    assert (counts["n"], counts["null"], counts["nan"], counts["inf"]) == (5, 2, 2, 1)
    distribution = score.get_metric("distribution")
    assert (distribution.min, distribution.max) == (-0.5, float("inf"))
    # an integer column with a null is a float column to pandas, and typed so, as whylogs did
    calls = report.profile.get_column("calls").get_metric("types").to_summary_dict()
    ids = report.profile.get_column("subscriber_id").get_metric("types").to_summary_dict()
    assert (calls["fractional"], calls["integral"]) == (4, 0)
    assert (ids["fractional"], ids["integral"]) == (0, 5)
