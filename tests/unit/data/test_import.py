"""Import of a user's own data: mapping, casting, contract, atomic upsert/part files, manifest."""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.errors import DataContractError, ImportFileError, ImportMappingError
from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import CANCELLATIONS, SUBSCRIBERS, USAGE_DAILY
from tasks.data.contracts import check_source_dir
from tasks.data.import_mapping import load_mapping
from tasks.data.importer import import_file

FIXTURES = Path(__file__).parents[2] / "fixtures" / "import"
SUBSCRIBERS_CSV = FIXTURES / "subscribers.csv"
SUBSCRIBERS_MAPPING = FIXTURES / "subscribers_mapping.yaml"
CANCELLATIONS_CSV = FIXTURES / "cancellations.csv"
CANCELLATIONS_MAPPING = FIXTURES / "cancellations_mapping.yaml"
USAGE_CSV = FIXTURES / "usage.csv"
USAGE_MAPPING = FIXTURES / "usage_mapping.yaml"
HEADER = SUBSCRIBERS_CSV.read_text().splitlines()[0]
SNAPSHOT = date(2026, 1, 31)  # the fixture mapping's snapshot_date


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative name → bytes)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def write_csv(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def row(customer: str = "2001", tenure: str = "12", plan: str = "Basic", charge: str = "10") -> str:
    """One line of the Telco-style subscribers CSV."""
    return f"{customer},Male,0,No,{tenure},{plan},North,25-34,One year,Mailed check,{charge},,No"


def test_good_csv_round_trips_with_the_spec_schema(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the Telco-style fixture: tenure in months, value maps, trimmed cells, ignored extra columns
    with caplog.at_level(logging.WARNING, logger="tasks.data.import_read"):
        summary = import_file(SUBSCRIBERS_CSV, SUBSCRIBERS_MAPPING, tmp_path)
    target = table_path(tmp_path, SUBSCRIBERS)
    assert (summary.table, summary.rows) == ("subscribers", 5)
    assert summary.written == [target, tmp_path / MANIFEST_NAME]

    table = pq.read_table(target)
    assert table.schema.equals(SUBSCRIBERS.arrow_schema)
    assert table["subscriber_id"].to_pylist() == [1001, 1002, 1003, 1004, 1005]  # sorted by key
    assert table.slice(0, 1).to_pylist()[0] == {
        "subscriber_id": 1001,
        "signup_date": date(2025, 4, 2),  # 2026-01-31 - 10 months (304.375 days, rounded down)
        "plan": "basic",
        "contract_type": "month_to_month",
        "payment_method": "card",
        "monthly_charge": 35.0,
        "region": "north",
        "age_band": "25-34",
        "gender": "female",
    }
    # signup_date = snapshot - tenure: 7, 2, 0 and " 13 " (trimmed) months
    assert table["signup_date"].to_pylist()[1:] == [
        date(2025, 7, 2),
        date(2025, 12, 2),
        SNAPSHOT,  # tenure 0: signed up on the snapshot day, in service on it
        date(2025, 1, 1),
    ]
    assert all(d <= SNAPSHOT for d in table["signup_date"].to_pylist())

    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["source"] == "import"
    assert manifest["tables"]["subscribers"] == {
        "rows": 5,
        "date_column": "signup_date",
        "first_date": "2025-01-01",
        "last_date": "2026-01-31",
        "source": "import",
    }
    assert [(i["file"], i["snapshot_date"]) for i in manifest["imports"]] == [
        ("subscribers.csv", "2026-01-31")
    ]
    # the Churn column is not imported, and the user is told where churn goes
    assert "Churn" in caplog.text and "cancellations" in caplog.text


def test_churn_is_imported_as_cancellation_rows(tmp_path: Path) -> None:
    # the fixture's churned subscriber, as a row of the cancellations table
    import_file(SUBSCRIBERS_CSV, SUBSCRIBERS_MAPPING, tmp_path)
    summary = import_file(CANCELLATIONS_CSV, CANCELLATIONS_MAPPING, tmp_path)
    assert (summary.table, summary.rows) == ("cancellations", 1)
    table = pq.read_table(table_path(tmp_path, CANCELLATIONS))
    assert table.schema.equals(CANCELLATIONS.arrow_schema)
    assert table.to_pylist() == [
        {"subscriber_id": 1003, "cancel_date": date(2026, 1, 20), "reason": "competitor"}
    ]


def test_event_table_may_be_imported_empty(tmp_path: Path) -> None:
    # a header-only file for an event table writes an empty table with the exact schema
    empty = write_csv(tmp_path / "no_cancellations.csv", header="customerID,CancelDate,Reason")
    summary = import_file(empty, CANCELLATIONS_MAPPING, tmp_path / "source")
    assert summary.rows == 0
    table = pq.read_table(table_path(tmp_path / "source", CANCELLATIONS))
    assert table.num_rows == 0 and table.schema.equals(CANCELLATIONS.arrow_schema)
    manifest = json.loads((tmp_path / "source" / MANIFEST_NAME).read_text())
    assert manifest["tables"]["cancellations"]["rows"] == 0


def test_bad_file_is_rejected_with_every_violation_and_writes_nothing(tmp_path: Path) -> None:
    # an existing import stays byte for byte; the bad file's problems come in one error
    import_file(SUBSCRIBERS_CSV, SUBSCRIBERS_MAPPING, tmp_path)
    before = snapshot(tmp_path)
    bad = write_csv(
        tmp_path.parent / "bad.csv",
        row("2001", plan="Gold"),  # bad category
        row(""),  # null id
        row("2003", tenure="long"),  # tenure that is not a number
        row("2004", charge="-5"),  # negative charge
        row("2005", plan="Gold"),  # bad category again
        row("2006", tenure="-3"),  # negative tenure
    )
    with pytest.raises(DataContractError) as err:
        import_file(bad, SUBSCRIBERS_MAPPING, tmp_path)

    found = [(v.column, v.rule, v.count) for v in err.value.violations]
    assert found == [
        ("subscriber_id", "not_null", 1),
        ("signup_date", "type", 1),  # reported once: not also as not_null
        ("signup_date", "min", 1),
        ("plan", "allowed_values", 2),
        ("monthly_charge", "min", 1),
    ]
    message = str(err.value)
    assert (
        "subscribers.signup_date: type failed for 1 rows "
        "(cannot read tenure column 'tenure' as a number: e.g. 'long')"
    ) in message
    assert "subscribers.signup_date: min failed for 1 rows (tenure column 'tenure' is negative" in (
        message
    )
    assert "subscribers.plan: allowed_values failed for 2 rows (e.g. 'Gold')" in message
    assert snapshot(tmp_path) == before


def test_single_file_table_is_upserted_by_key(tmp_path: Path) -> None:
    # existing keys replaced, new keys appended, nothing duplicated
    import_file(SUBSCRIBERS_CSV, SUBSCRIBERS_MAPPING, tmp_path)
    update = write_csv(
        tmp_path.parent / "update.csv",
        row("1002", tenure="7", charge="40"),  # changed
        row("1006", tenure="1", plan="Standard", charge="55"),  # new
    )
    summary = import_file(update, SUBSCRIBERS_MAPPING, tmp_path)
    table = pq.read_table(table_path(tmp_path, SUBSCRIBERS))
    assert summary.rows == 2
    assert table["subscriber_id"].to_pylist() == [1001, 1002, 1003, 1004, 1005, 1006]
    row_1002 = table.filter(pa.compute.equal(table["subscriber_id"], 1002)).to_pylist()[0]
    assert (row_1002["plan"], row_1002["monthly_charge"]) == ("basic", 40.0)
    assert table["signup_date"].to_pylist()[-1] == date(2026, 1, 1)  # 1 month before snapshot
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["tables"]["subscribers"]["rows"] == 6


def test_reimporting_a_partitioned_file_replaces_its_part(tmp_path: Path) -> None:
    # usage history (two days, d/m/Y dates): one part file named after the input's hash
    import_file(USAGE_CSV, USAGE_MAPPING, tmp_path)
    import_file(USAGE_CSV, USAGE_MAPPING, tmp_path)
    parts = sorted(table_path(tmp_path, USAGE_DAILY).glob("*.parquet"))
    assert len(parts) == 1 and parts[0].name.startswith("part-import-")
    table = pq.read_table(parts[0])
    assert table.num_rows == 5
    assert table.schema.equals(USAGE_DAILY.arrow_schema)
    assert table.select(["subscriber_id", "usage_date"]).to_pylist()[:2] == [
        {"subscriber_id": 1001, "usage_date": date(2026, 1, 30)},
        {"subscriber_id": 1001, "usage_date": date(2026, 1, 31)},
    ]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert (manifest["start"], manifest["end"]) == ("2026-01-30", "2026-01-31")
    assert len(manifest["imports"]) == 1  # the same file is recorded once


def test_rows_already_in_other_parts_are_refused(tmp_path: Path) -> None:
    # a different file carrying a (subscriber, day) that another part holds: unique_keys
    import_file(USAGE_CSV, USAGE_MAPPING, tmp_path)
    before = snapshot(tmp_path)
    overlap = tmp_path.parent / "more_usage.csv"
    overlap.write_text(
        "account,day,gb_used,call_minutes,dropped\n"
        "1001,31/01/2026,9.0,1.0,0\n"  # already imported
        "1009,31/01/2026,1.0,1.0,0\n"
    )
    with pytest.raises(DataContractError) as err:
        import_file(overlap, USAGE_MAPPING, tmp_path)
    assert "usage_daily.subscriber_id,usage_date: unique_keys failed for 1 rows" in str(err.value)
    assert snapshot(tmp_path) == before


def test_paths_with_a_quote_reach_duckdb_intact(tmp_path: Path) -> None:
    # the source directory's path is bound as a parameter, never pasted into SQL text
    source = tmp_path / "o'brien's data"
    import_file(USAGE_CSV, USAGE_MAPPING, source)
    overlap = tmp_path / "more_usage.csv"
    overlap.write_text("account,day,gb_used,call_minutes,dropped\n1001,31/01/2026,9.0,1.0,0\n")
    with pytest.raises(DataContractError, match="unique_keys failed for 1 rows"):
        import_file(overlap, USAGE_MAPPING, source)
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    assert manifest["tables"]["usage_daily"]["rows"] == 5
    (report,) = check_source_dir(source, specs=[USAGE_DAILY], volume_tolerance=10.0)
    assert report.passed, report.violations


def test_manifest_keeps_keys_written_by_other_code(tmp_path: Path) -> None:
    # a simulator manifest: its keys survive, the directory becomes "mixed"
    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps({"source": "simulator", "seed": 7, "tables": {"billing": {"rows": 3}}})
    )
    import_file(SUBSCRIBERS_CSV, SUBSCRIBERS_MAPPING, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert (manifest["source"], manifest["seed"]) == ("mixed", 7)
    assert manifest["tables"]["billing"] == {"rows": 3}
    assert manifest["tables"]["subscribers"]["rows"] == 5


def test_parquet_input_with_constants_and_tenure_in_days(tmp_path: Path) -> None:
    # typed Parquet columns, constant columns, signup_date from a tenure in days
    source = tmp_path.parent / "subs.parquet"
    pq.write_table(
        pa.table(
            {
                "id": pa.array([3.0, 1.0], pa.float64()),  # integral floats cast to int64
                "tier": ["premium", "basic"],
                "fee": pa.array([75, 35], pa.int32()),  # ints cast to float64
                "days_active": pa.array([0.0, 400.9]),  # fractions of a day rounded down
            }
        ),
        source,
    )
    mapping = tmp_path.parent / "subs.yaml"
    mapping.write_text(
        "table: subscribers\n"
        "columns: {id: subscriber_id, tier: plan, fee: monthly_charge}\n"
        "constants: {contract_type: one_year, payment_method: card, region: west,\n"
        "            age_band: 35-44, gender: unspecified}\n"
        "snapshot_date: 2026-01-31\n"
        "tenure: {column: days_active, unit: days}\n"
    )
    import_file(source, mapping, tmp_path)
    table = pq.read_table(table_path(tmp_path, SUBSCRIBERS))
    assert table["subscriber_id"].to_pylist() == [1, 3]
    assert table["signup_date"].to_pylist() == [date(2024, 12, 27), SNAPSHOT]  # - 400, - 0 days
    assert table["monthly_charge"].to_pylist() == [35.0, 75.0]
    assert set(table["region"].to_pylist()) == {"west"}


def test_snapshot_date_fills_the_date_of_a_daily_table(tmp_path: Path) -> None:
    # one day's usage export without a date column: the rows were observed on snapshot_date
    usage = tmp_path / "usage_today.csv"
    usage.write_text("account,gb_used,call_minutes,dropped\n1001,1.5,10,0\n1002,0.5,3,1\n")
    mapping = tmp_path / "usage.yaml"
    mapping.write_text(
        "table: usage_daily\n"
        "columns: {account: subscriber_id, gb_used: data_gb, call_minutes: voice_minutes,\n"
        "          dropped: dropped_calls}\n"
        "snapshot_date: 2026-01-31\n"
    )
    import_file(usage, mapping, tmp_path / "source")
    (part,) = table_path(tmp_path / "source", USAGE_DAILY).glob("*.parquet")
    assert set(pq.read_table(part)["usage_date"].to_pylist()) == {SNAPSHOT}


def test_cast_failures_count_rows(tmp_path: Path) -> None:
    # fractional ids and text in a number column: type violations with row counts
    bad = write_csv(
        tmp_path / "bad.csv",
        row("1.5"),
        row("2", charge="ten"),
        row("3", charge="eleven"),
    )
    with pytest.raises(DataContractError) as err:
        import_file(bad, SUBSCRIBERS_MAPPING, tmp_path / "source")
    found = [(v.column, v.rule, v.count) for v in err.value.violations]
    assert found == [("subscriber_id", "type", 1), ("monthly_charge", "type", 2)]
    assert not (tmp_path / "source").exists()


COLUMNS = (
    "columns: {customerID: subscriber_id, PlanName: plan,\n"
    "          Contract: contract_type, PaymentMethod: payment_method,\n"
    "          MonthlyCharges: monthly_charge, Region: region, AgeBand: age_band, gender: gender}\n"
)
SNAPSHOT_LINE = "snapshot_date: 2026-01-31\n"
TENURE_LINE = "tenure: {column: tenure, unit: months}\n"
MAPPING_BASE = "table: subscribers\n" + COLUMNS + SNAPSHOT_LINE + TENURE_LINE


@pytest.mark.parametrize(
    ("text", "named"),
    [
        # a target table that is not a source table
        pytest.param(MAPPING_BASE.replace("subscribers", "customers", 1), "customers", id="table"),
        # a target column the table does not have
        pytest.param(MAPPING_BASE.replace("gender: gender", "gender: sex"), "sex", id="column"),
        # a required column left unfilled
        pytest.param(MAPPING_BASE.replace(", gender: gender", ""), "gender", id="unfilled"),
        # a file column the CSV does not have
        pytest.param(MAPPING_BASE.replace("customerID", "CustomerId"), "CustomerId", id="source"),
        # a typo in a top-level key
        pytest.param(MAPPING_BASE + "constant: {}\n", "constant", id="unknown-key"),
        # a constant that is not a number for a number column
        pytest.param(
            MAPPING_BASE.replace(", MonthlyCharges: monthly_charge", "")
            + "constants: {monthly_charge: cheap}\n",
            "monthly_charge",
            id="constant",
        ),
        # a value map for a column not read from the file
        pytest.param(
            MAPPING_BASE.replace(" Region: region,", "")
            + "constants: {region: north}\nvalues: {region: {North: north}}\n",
            "region is not filled from a file column",
            id="values",
        ),
        # a snapshot is an observation day: alone it does not fill signup_date
        pytest.param(
            MAPPING_BASE.replace(TENURE_LINE, ""),
            "snapshot_date does not fill subscribers.signup_date",
            id="snapshot-without-tenure",
        ),
        # snapshot_date while signup_date is already mapped
        pytest.param(
            MAPPING_BASE.replace(TENURE_LINE, "").replace(
                "PlanName", "SignupDate: signup_date, PlanName"
            ),
            "signup_date",
            id="snapshot-and-signup",
        ),
        # tenure needs the day it is counted back from
        pytest.param(
            MAPPING_BASE.replace(SNAPSHOT_LINE, ""), "tenure needs snapshot_date", id="no-snapshot"
        ),
        # tenure and a mapped signup_date both fill it
        pytest.param(
            MAPPING_BASE.replace("PlanName", "Partner: signup_date, PlanName"),
            "signup_date is already filled",
            id="tenure-and-signup",
        ),
        # an unknown tenure unit
        pytest.param(
            MAPPING_BASE.replace("unit: months", "unit: years"), "tenure.unit 'years'", id="unit"
        ),
        # a tenure entry without its unit
        pytest.param(
            MAPPING_BASE.replace(", unit: months", ""), "tenure must look like", id="tenure-shape"
        ),
        # a tenure column the CSV does not have
        pytest.param(
            MAPPING_BASE.replace("column: tenure", "column: Tenure"), "Tenure", id="tenure-source"
        ),
        # tenure for a table without a signup date
        pytest.param(
            "table: cancellations\ncolumns: {customerID: subscriber_id, Churn: reason}\n"
            + SNAPSHOT_LINE
            + TENURE_LINE,
            "tenure derives subscribers.signup_date only",
            id="tenure-table",
        ),
        # not YAML at all
        pytest.param("table: [subscribers\n", "not valid YAML", id="yaml"),
    ],
)
def test_bad_mapping_raises_naming_the_problem(tmp_path: Path, text: str, named: str) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(text)
    with pytest.raises(ImportMappingError, match=named):
        import_file(SUBSCRIBERS_CSV, mapping, tmp_path / "source")
    assert not (tmp_path / "source").exists()


def test_missing_signup_date_names_both_ways_to_provide_it(tmp_path: Path) -> None:
    # neither mapped nor derivable: the message says how to map it or derive it from tenure
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("table: subscribers\n" + COLUMNS)
    with pytest.raises(ImportMappingError) as err:
        import_file(SUBSCRIBERS_CSV, mapping, tmp_path / "source")
    message = str(err.value)
    assert "subscribers.signup_date is not filled" in message
    assert "map a file column to signup_date" in message
    assert "tenure: {column: FILE_COLUMN, unit: months} plus snapshot_date" in message
    assert not (tmp_path / "source").exists()


def test_yes_no_value_keys_stay_strings(tmp_path: Path) -> None:
    # YAML 1.1 would read Yes/No as booleans, which never match a CSV cell; they stay text
    mapping = tmp_path / "mapping.yaml"
    text = SUBSCRIBERS_MAPPING.read_text()
    mapping.write_text(text.replace("gender: {Female", "gender: {Yes: female, No: male, Female"))
    loaded = load_mapping(mapping)
    assert list(loaded.values["gender"])[:2] == ["Yes", "No"]
    assert loaded.values["payment_method"]["Electronic check"] == "card"
    assert loaded.tenure is not None and (loaded.tenure.column, loaded.tenure.unit) == (
        "tenure",
        "months",
    )


def _truncated_parquet() -> bytes:
    import io

    buffer = io.BytesIO()
    pq.write_table(pa.table({"customerID": [1, 2, 3]}), buffer)
    data = buffer.getvalue()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        # not CSV or Parquet
        pytest.param("data.xlsx", b"x", "unsupported file type", id="unsupported-type"),
        # a header only, for a table that needs rows
        pytest.param("empty.csv", HEADER.encode() + b"\n", "has no data rows", id="no-rows"),
        # nothing at all
        pytest.param("blank.csv", b"", "is empty", id="blank"),
        # bytes that are not Parquet behind a .parquet name
        pytest.param(
            "corrupt.parquet", b"customerID,tenure\n1,2\n", "not a readable Parquet", id="corrupt"
        ),
        # a Parquet file cut short
        pytest.param(
            "truncated.parquet", _truncated_parquet(), "not a readable Parquet", id="truncated"
        ),
        # a row with more fields than the header: the CSV cannot be parsed
        pytest.param(
            "ragged.csv",
            (HEADER + "\n" + row("2001") + ",extra,fields\n").encode(),
            "cannot be read as CSV",
            id="ragged-csv",
        ),
        # bytes that are not UTF-8 text in the body
        pytest.param(
            "binary.csv",
            HEADER.encode() + b"\n" + row("2001").encode().replace(b"Male", b"\xff\xfe"),
            "not a readable CSV file",
            id="binary-csv",
        ),
        # not UTF-8 from the first byte
        pytest.param(
            "header.csv", b"\xff\xfe\x00\x81garbage", "not a readable CSV file", id="binary-header"
        ),
    ],
)
def test_unusable_input_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=message) as err:
        import_file(path, SUBSCRIBERS_MAPPING, tmp_path / "source")
    assert name in str(err.value)  # the message names the file
    assert not (tmp_path / "source").exists()
