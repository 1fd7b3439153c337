"""Churn from a subscribers export, and a single export as a whole source."""

from __future__ import annotations

import json
import logging
import re
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.core.errors import DataContractError, ImportMappingError
from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import BILLING, CANCELLATIONS, SOURCE_TABLES, USAGE_DAILY
from tasks.core.settings import Settings
from tasks.core.sql import connect
from tasks.data.contracts import check_source_dir
from tasks.data.importer import import_file
from tasks.data.sources import active_subscribers, check_sources, register_sources
from tests.unit.data.export_data import (
    ATTRIBUTES,
    CHURN_FLAG,
    SNAPSHOT,
    export_row,
    snapshot_files,
    write_export,
    write_mapping,
)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "import"
CHURN_DATE = 'churn: {cancel_date: LeftOn, reason: competitor}\ndate_format: "%Y-%m-%d"\n'


def _import(source: Path, rows: list[str], *extra: str, snapshot: date = SNAPSHOT):
    work = source.parent
    work.mkdir(parents=True, exist_ok=True)
    export = write_export(work / "export.csv", *rows)
    return import_file(
        export, write_mapping(work / "mapping.yaml", *extra, snapshot=snapshot), source
    )


def _cancellations(source: Path) -> list[dict]:
    return pq.read_table(table_path(source, CANCELLATIONS)).to_pylist()


def test_churn_flag_gives_cancellations_on_the_snapshot_day(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # every yes-like flag (any case, trimmed) is a cancellation on snapshot_date, reason "other"
    rows = [
        export_row("1", churn="No"),
        export_row("2", churn="Yes"),
        export_row("3", churn=" y "),
        export_row("4", churn="TRUE"),
        export_row("5", churn="0"),
        export_row("6", churn="f"),
    ]
    with caplog.at_level(logging.WARNING, logger="tasks.data.import_read"):
        summary = _import(tmp_path / "source", rows, CHURN_FLAG)
    assert (summary.rows, summary.churned) == (6, 3)
    table = pq.read_table(table_path(tmp_path / "source", CANCELLATIONS))
    assert table.schema.equals(CANCELLATIONS.arrow_schema)
    assert table.to_pylist() == [
        {"subscriber_id": i, "cancel_date": SNAPSHOT, "reason": "other"} for i in (2, 3, 4)
    ]
    assert "Churn" not in caplog.text  # the column the mapping declares is not warned about


def test_a_recorded_earlier_cancellation_is_kept_and_new_ones_are_added(tmp_path: Path) -> None:
    # 1003 left on 2026-01-20 (a cancellations import); the export still flags them: moving the
    # date to the export's day would put them back in service for eleven days.
    source = tmp_path / "source"
    import_file(
        FIXTURES / "cancellations.csv", FIXTURES / "cancellations_mapping.yaml", source
    )  # subscriber 1003, 2026-01-20, competitor
    rows = [export_row("1003", churn="Yes", tenure="12"), export_row("7", churn="Yes")]
    _import(source, rows, "churn: {flag: Churn, reason: price}\n")
    assert _cancellations(source) == [
        {"subscriber_id": 7, "cancel_date": SNAPSHOT, "reason": "price"},
        {"subscriber_id": 1003, "cancel_date": date(2026, 1, 20), "reason": "competitor"},
    ]


def test_exports_go_in_in_order_and_a_former_customer_keeps_the_day_they_left(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    january = [export_row("1", churn="Yes"), export_row("2"), export_row("3")]
    _import(source, january, CHURN_FLAG)
    later = SNAPSHOT + timedelta(days=28)
    february = [export_row("1", churn="Yes"), export_row("2", churn="Yes"), export_row("3")]
    export = write_export(tmp_path / "february.csv", *february)
    import_file(
        export, write_mapping(tmp_path / "february.yaml", CHURN_FLAG, snapshot=later), source
    )
    assert _cancellations(source) == [
        {"subscriber_id": 1, "cancel_date": SNAPSHOT, "reason": "other"},  # not moved
        {"subscriber_id": 2, "cancel_date": later, "reason": "other"},
    ]
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    # A source of exports alone keeps every day since the first one's eve.
    assert (manifest["start"], manifest["end"]) == (
        str(SNAPSHOT - timedelta(days=1)),
        str(later),
    )
    before = snapshot_files(source)
    older = write_mapping(
        tmp_path / "older.yaml", CHURN_FLAG, snapshot=SNAPSHOT - timedelta(days=1)
    )
    with pytest.raises(ImportMappingError, match="before the newest export already imported"):
        import_file(write_export(tmp_path / "older.csv", *january), older, source)
    assert snapshot_files(source) == before


def test_churn_cancel_date_column(tmp_path: Path) -> None:
    # the given day; empty = still a customer
    rows = [
        export_row("1", left_on="2026-01-15"),
        export_row("2"),
        export_row("3", left_on=SNAPSHOT.isoformat()),
    ]
    summary = _import(tmp_path / "source", rows, CHURN_DATE)
    assert summary.churned == 2
    assert _cancellations(tmp_path / "source") == [
        {"subscriber_id": 1, "cancel_date": date(2026, 1, 15), "reason": "competitor"},
        {"subscriber_id": 3, "cancel_date": SNAPSHOT, "reason": "competitor"},
    ]


def test_churn_cancel_date_after_the_snapshot_is_refused(tmp_path: Path) -> None:
    rows = [
        export_row("1", left_on="2026-02-01"),
        export_row("2", left_on="2026-03-01"),
        export_row("4", left_on="someday"),
        export_row("5", left_on="2026-01-10"),
    ]
    with pytest.raises(DataContractError) as err:
        _import(tmp_path / "source", rows, CHURN_DATE)
    found = [(v.table, v.column, v.rule, v.count) for v in err.value.violations]
    assert found == [
        ("cancellations", "cancel_date", "type", 1),
        ("cancellations", "cancel_date", "max", 2),
    ]
    message = str(err.value)
    assert "after snapshot_date 2026-01-31" in message and "1: 2026-02-01" in message
    assert not (tmp_path / "source").exists()


def test_cancellation_dates_label_the_day_a_horizon_before_the_export(
    churn_home: Settings,
) -> None:
    # The labelled day is SNAPSHOT - 30: who left within the 30 days up to the export are its
    # positives, on their own days.
    source = churn_home.source_dir
    labelled = SNAPSHOT - timedelta(days=30)
    rows = [
        export_row("1", tenure="12"),
        export_row("2", tenure="12", left_on="2026-01-21"),  # left 10 days before the export
        export_row("3", tenure="12", left_on="2025-12-15"),  # left before the labelled day
        export_row("4", tenure="0", left_on="2026-01-31"),  # signed up and left in the window
        export_row("5", tenure="1", left_on="2025-12-20"),  # a month's tenure, 42 days ago
    ]
    summary = _import(source, rows, CHURN_DATE, ATTRIBUTES)
    assert summary.churned == 4
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    assert manifest["snapshot_export"]["churn"] == "cancel_date"
    assert manifest["snapshot_export"]["labelled_day"] == labelled.isoformat()
    assert manifest["labelled_from"] == labelled.isoformat()
    assert (manifest["start"], manifest["end"]) == (labelled.isoformat(), "2026-01-31")

    subscribers = pq.read_table(table_path(source, SOURCE_TABLES["subscribers"])).to_pylist()
    signup = {r["subscriber_id"]: r["signup_date"] for r in subscribers}
    # A leaver looks like a stayer with the same tenure: the day they left must not show in
    # the sign-up day, or a model learns the label from it.
    assert signup[1] == signup[2] == signup[3] == SNAPSHOT - timedelta(days=int(12 * 30.4375))
    assert signup[4] == SNAPSHOT
    assert signup[5] == date(2025, 12, 20)  # not after the day they left
    in_service = active_subscribers(churn_home, labelled)["subscriber_id"].to_pylist()
    assert in_service == [1, 2]  # 3 and 5 had left, 4 had not signed up yet


def test_a_horizon_of_seven_days_labels_a_week_before_the_export(tmp_path: Path) -> None:
    source = tmp_path / "source"
    export = write_export(tmp_path / "export.csv", export_row("1", left_on="2026-01-29"))
    mapping = write_mapping(tmp_path / "mapping.yaml", CHURN_DATE)
    import_file(export, mapping, source, label_horizon_days=7)
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    assert manifest["start"] == manifest["snapshot_export"]["labelled_day"] == "2026-01-24"


def test_flag_that_is_not_yes_no_is_refused(tmp_path: Path) -> None:
    # the file column is named, with the count and examples
    rows = [
        export_row("1", churn="maybe"),
        export_row("2", churn="2"),
        export_row("3", churn="maybe"),
        export_row("4", churn=""),
        export_row("5", churn="Yes"),
    ]
    with pytest.raises(DataContractError) as err:
        _import(tmp_path / "source", rows, CHURN_FLAG)
    (violation,) = err.value.violations
    assert (violation.table, violation.column, violation.rule, violation.count) == (
        "subscribers",
        "Churn",
        "yes_no",
        4,
    )
    assert "'maybe', '2'" in violation.detail and "<empty>" in violation.detail
    assert not (tmp_path / "source").exists()


def test_duplicate_ids_and_negative_tenure_are_refused_once(tmp_path: Path) -> None:
    # reported against subscribers only: not again as cancellations/attributes key violations
    rows = [
        export_row("1", churn="Yes"),
        export_row("1", churn="Yes"),
        export_row("2", tenure="-1"),
    ]
    with pytest.raises(DataContractError) as err:
        _import(tmp_path / "source", rows, CHURN_FLAG, ATTRIBUTES)
    found = [(v.table, v.column, v.rule, v.count) for v in err.value.violations]
    assert found == [
        ("subscribers", "subscriber_id", "unique", 1),
        ("subscribers", "signup_date", "min", 1),
    ]
    assert not (tmp_path / "source").exists()


@pytest.mark.parametrize(
    ("mapping", "named"),
    [
        # neither flag nor cancel_date, or both
        pytest.param("churn: {reason: other}\n", "exactly one of flag or cancel_date", id="none"),
        pytest.param(
            "churn: {flag: Churn, cancel_date: LeftOn}\n", "exactly one of flag", id="both"
        ),
        pytest.param("churn: {flag: Churn, why: x}\n", "churn: unknown key(s) why", id="key"),
        pytest.param("churn: {flag: Churn, reason: bored}\n", "churn.reason 'bored'", id="reason"),
        pytest.param("churn: {flag: Exited}\n", "churn.flag: column 'Exited'", id="column"),
        pytest.param("churn: Churn\n", "churn must look like", id="shape"),
    ],
)
def test_bad_churn_entry(tmp_path: Path, mapping: str, named: str) -> None:
    with pytest.raises(ImportMappingError, match=re.escape(named)):
        _import(tmp_path / "source", [export_row("1")], mapping)
    assert not (tmp_path / "source").exists()


@pytest.mark.parametrize("key, entry", [("churn", CHURN_FLAG), ("attributes", ATTRIBUTES)])
def test_an_export_key_needs_a_subscribers_snapshot(tmp_path: Path, key: str, entry: str) -> None:
    """`churn:` and `attributes:` describe a subscribers export observed on one day: another
    table, or no snapshot_date, is refused, saying why, before anything is written."""
    export = write_export(tmp_path / "export.csv", export_row("1"))
    other = tmp_path / "other.yaml"
    other.write_text("table: cancellations\ncolumns: {customerID: subscriber_id}\n" + entry)
    with pytest.raises(
        ImportMappingError, match=f"'{key}' is only allowed with table: subscribers"
    ):
        import_file(export, other, tmp_path / "source")
    no_snapshot = tmp_path / "no_snapshot.yaml"
    no_snapshot.write_text(
        "table: subscribers\n"
        "columns: {customerID: subscriber_id, MonthlyCharges: monthly_charge}\n"
        "constants: {signup_date: 2025-01-01, plan: basic, contract_type: one_year,\n"
        "            payment_method: card, region: unspecified, age_band: unspecified,\n"
        "            gender: unspecified}\n" + entry
    )
    with pytest.raises(ImportMappingError, match=f"'{key}' needs snapshot_date"):
        import_file(export, no_snapshot, tmp_path / "source")
    assert not (tmp_path / "source").exists()


# --------------------------------------------------------------------------------------------
# A single export is a whole source
# --------------------------------------------------------------------------------------------


def test_single_export_is_a_whole_source(churn_home: Settings) -> None:
    # the other tables are created empty; the feature build's reads and the contracts accept it
    source = churn_home.source_dir
    rows = [
        export_row("1", churn="No"),
        export_row("2", churn="Yes"),
        export_row("3", churn="No", tenure="0"),  # signed up on the snapshot day
    ]
    summary = _import(source, rows, CHURN_FLAG, ATTRIBUTES)
    for spec in SOURCE_TABLES.values():
        path = table_path(source, spec)
        table = pq.read_table(path / "part-empty.parquet" if spec.partitioned else path)
        assert table.schema.equals(spec.arrow_schema), spec.name
    assert table_path(source, USAGE_DAILY) / "part-empty.parquet" in summary.written

    manifest = json.loads((source / MANIFEST_NAME).read_text())
    assert manifest["snapshot_export"] == {
        "snapshot_date": "2026-01-31",
        "subscribers": 3,
        "churned": 1,
        "file": "export.csv",
        "churn": "flag",
        "labelled_day": "2026-01-30",
    }
    assert (manifest["start"], manifest["end"]) == ("2026-01-30", "2026-01-31")
    assert manifest["tables"]["billing"]["rows"] == 0
    assert manifest["tables"]["usage_daily"]["rows"] == 0

    con = connect()
    register_sources(con, source)
    assert con.sql("SELECT count(*) FROM usage_daily").fetchall() == [(0,)]
    reports = check_sources(churn_home)
    assert [r.table for r in reports] == list(SOURCE_TABLES)
    # in service the day before: everyone who had signed up; on the day: who had not left
    day_before = active_subscribers(churn_home, SNAPSHOT - timedelta(days=1))
    assert day_before["subscriber_id"].to_pylist() == [1, 2]
    assert active_subscribers(churn_home, SNAPSHOT)["subscriber_id"].to_pylist() == [1, 3]


def test_empty_usage_is_fresh_enough_only_for_an_export(churn_home: Settings) -> None:
    # the narrow exception: an entirely empty usage_daily, in a source that is a snapshot export
    source = churn_home.source_dir
    _import(source, [export_row("1", churn="Yes")], CHURN_FLAG)
    strict = check_source_dir(source, expected_latest=SNAPSHOT, specs=[USAGE_DAILY])
    assert [v.rule for r in strict for v in r.violations] == ["freshness"]
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    del manifest["snapshot_export"]
    (source / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataContractError, match="usage_daily.usage_date: freshness"):
        check_sources(churn_home)


def test_export_never_touches_existing_tables(tmp_path: Path) -> None:
    # usage and billing imported before: kept byte for byte, and usage's days win
    source = tmp_path / "source"
    import_file(FIXTURES / "usage.csv", FIXTURES / "usage_mapping.yaml", source)
    billing = table_path(source, BILLING)
    billing_rows = BILLING.arrow_schema.empty_table()
    pq.write_table(billing_rows, billing)
    before = snapshot_files(source)
    _import(source, [export_row("1001", churn="Yes")], CHURN_FLAG)
    after = snapshot_files(source)
    kept = [name for name in before if name != MANIFEST_NAME]
    assert all(after[name] == before[name] for name in kept)
    assert not (table_path(source, USAGE_DAILY) / "part-empty.parquet").exists()
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    assert (manifest["start"], manifest["end"]) == ("2026-01-30", "2026-01-31")  # usage's range
    assert "billing" not in manifest["tables"]  # not written by this import, not restated
