"""Import of a user's own data: mapping, casting, contract, atomic upsert/part files, manifest."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.errors import DataContractError, ImportMappingError
from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import SUBSCRIBERS, USAGE_DAILY
from tasks.importer import ImportFileError, import_file, load_mapping

FIXTURES = Path(__file__).parents[1] / "fixtures" / "import"
SUBSCRIBERS_CSV = FIXTURES / "subscribers.csv"
SUBSCRIBERS_MAPPING = FIXTURES / "subscribers_mapping.yaml"
USAGE_CSV = FIXTURES / "usage.csv"
USAGE_MAPPING = FIXTURES / "usage_mapping.yaml"
HEADER = SUBSCRIBERS_CSV.read_text().splitlines()[0]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative name → bytes)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def write_csv(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_good_csv_round_trips_with_the_spec_schema(tmp_path: Path) -> None:
    # the Telco-style fixture: value maps, trimmed cells, an ignored extra column
    summary = import_file(SUBSCRIBERS_CSV, SUBSCRIBERS_MAPPING, tmp_path)
    target = table_path(tmp_path, SUBSCRIBERS)
    assert (summary.table, summary.rows) == ("subscribers", 5)
    assert summary.written == [target, tmp_path / MANIFEST_NAME]

    table = pq.read_table(target)
    assert table.schema.equals(SUBSCRIBERS.arrow_schema)
    assert table["subscriber_id"].to_pylist() == [1001, 1002, 1003, 1004, 1005]  # sorted by key
    first, last = table.slice(0, 1).to_pylist()[0], table.slice(4, 1).to_pylist()[0]
    assert first == {
        "subscriber_id": 1001,
        "signup_date": date(2025, 3, 14),
        "plan": "basic",
        "contract_type": "month_to_month",
        "payment_method": "autopay",
        "monthly_charge": 35.0,
        "region": "north",
        "age_band": "25-34",
        "gender": "female",
    }
    assert last["signup_date"] == date(2024, 12, 31)  # " 2024-12-31 " was trimmed

    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["source"] == "import"
    assert manifest["tables"]["subscribers"] == {
        "rows": 5,
        "date_column": "signup_date",
        "first_date": "2024-12-31",
        "last_date": "2026-01-05",
        "source": "import",
    }
    assert [i["file"] for i in manifest["imports"]] == ["subscribers.csv"]


def test_bad_file_is_rejected_with_every_violation_and_writes_nothing(tmp_path: Path) -> None:
    # an existing import stays byte for byte; the bad file's four problems come in one error
    import_file(SUBSCRIBERS_CSV, SUBSCRIBERS_MAPPING, tmp_path)
    before = snapshot(tmp_path)
    bad = write_csv(
        tmp_path.parent / "bad.csv",
        "2001,2025-01-01,Gold,One year,Credit card,10,North,25-34,Male,No",  # bad category
        ",2025-01-01,Basic,One year,Credit card,10,North,25-34,Male,No",  # null id
        "2003,someday,Basic,One year,Credit card,10,North,25-34,Male,No",  # unparseable date
        "2004,2025-01-01,Basic,One year,Credit card,-5,North,25-34,Male,No",  # negative charge
        "2005,2025-01-01,Gold,One year,Credit card,10,North,25-34,Male,No",  # bad category again
    )
    with pytest.raises(DataContractError) as err:
        import_file(bad, SUBSCRIBERS_MAPPING, tmp_path)

    found = [(v.column, v.rule, v.count) for v in err.value.violations]
    assert found == [
        ("subscriber_id", "not_null", 1),
        ("signup_date", "type", 1),  # reported once: not also as not_null
        ("plan", "allowed_values", 2),
        ("monthly_charge", "min", 1),
    ]
    message = str(err.value)
    assert (
        "subscribers.signup_date: type failed for 1 rows (cannot read as date: e.g. 'someday')"
        in message
    )
    assert "subscribers.plan: allowed_values failed for 2 rows (e.g. 'Gold')" in message
    assert snapshot(tmp_path) == before


def test_single_file_table_is_upserted_by_key(tmp_path: Path) -> None:
    # existing keys replaced, new keys appended, nothing duplicated
    import_file(SUBSCRIBERS_CSV, SUBSCRIBERS_MAPPING, tmp_path)
    update = write_csv(
        tmp_path.parent / "update.csv",
        "1002,2025-06-01,Basic,One year,Credit card,40,South,45-54,Male,No",  # changed
        "1006,2026-01-20,Standard,Two year,Mailed check,55,East,35-44,Female,No",  # new
    )
    summary = import_file(update, SUBSCRIBERS_MAPPING, tmp_path)
    table = pq.read_table(table_path(tmp_path, SUBSCRIBERS))
    assert summary.rows == 2
    assert table["subscriber_id"].to_pylist() == [1001, 1002, 1003, 1004, 1005, 1006]
    row = table.filter(pa.compute.equal(table["subscriber_id"], 1002)).to_pylist()[0]
    assert (row["plan"], row["monthly_charge"]) == ("basic", 40.0)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["tables"]["subscribers"]["rows"] == 6
    assert manifest["tables"]["subscribers"]["last_date"] == "2026-01-20"


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


def test_parquet_input_with_constants_and_snapshot_date(tmp_path: Path) -> None:
    # typed Parquet columns, a constant column and a snapshot date filling signup_date
    source = tmp_path.parent / "subs.parquet"
    pq.write_table(
        pa.table(
            {
                "id": pa.array([3.0, 1.0], pa.float64()),  # integral floats cast to int64
                "tier": ["premium", "basic"],
                "fee": pa.array([75, 35], pa.int32()),  # ints cast to float64
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
    )
    import_file(source, mapping, tmp_path)
    table = pq.read_table(table_path(tmp_path, SUBSCRIBERS))
    assert table["subscriber_id"].to_pylist() == [1, 3]
    assert set(table["signup_date"].to_pylist()) == {date(2026, 1, 31)}
    assert table["monthly_charge"].to_pylist() == [35.0, 75.0]
    assert set(table["region"].to_pylist()) == {"west"}


def test_cast_failures_count_rows(tmp_path: Path) -> None:
    # fractional ids and text in a number column: type violations with row counts
    bad = write_csv(
        tmp_path / "bad.csv",
        "1.5,2025-01-01,Basic,One year,Credit card,10,North,25-34,Male,No",
        "2,2025-01-01,Basic,One year,Credit card,ten,North,25-34,Male,No",
        "3,2025-01-01,Basic,One year,Credit card,eleven,North,25-34,Male,No",
    )
    with pytest.raises(DataContractError) as err:
        import_file(bad, SUBSCRIBERS_MAPPING, tmp_path / "source")
    found = [(v.column, v.rule, v.count) for v in err.value.violations]
    assert found == [("subscriber_id", "type", 1), ("monthly_charge", "type", 2)]
    assert not (tmp_path / "source").exists()


MAPPING_BASE = (
    "table: subscribers\n"
    "columns: {customerID: subscriber_id, SignupDate: signup_date, PlanName: plan,\n"
    "          Contract: contract_type, PaymentMethod: payment_method,\n"
    "          MonthlyCharges: monthly_charge, Region: region, AgeBand: age_band, gender: gender}\n"
)


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
        # snapshot_date while signup_date is already mapped
        pytest.param(MAPPING_BASE + "snapshot_date: 2026-01-31\n", "signup_date", id="snapshot"),
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


def test_yes_no_value_keys_stay_strings(tmp_path: Path) -> None:
    # YAML 1.1 would read Yes/No as booleans, which never match a CSV cell; they stay text
    mapping = tmp_path / "mapping.yaml"
    text = SUBSCRIBERS_MAPPING.read_text()
    mapping.write_text(text.replace("gender: {Female", "gender: {Yes: female, No: male, Female"))
    loaded = load_mapping(mapping)
    assert list(loaded.values["gender"])[:2] == ["Yes", "No"]
    assert loaded.values["payment_method"]["Electronic check"] == "autopay"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("data.xlsx", b"x", id="unsupported-type"),  # not CSV or Parquet
        pytest.param("empty.csv", HEADER.encode() + b"\n", id="no-rows"),  # a header only
    ],
)
def test_unusable_input_file(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportFileError):
        import_file(path, SUBSCRIBERS_MAPPING, tmp_path / "source")
