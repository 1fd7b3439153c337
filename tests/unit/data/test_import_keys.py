"""Customers' own ids (``customer_key``): numbered at import, refused when empty, repeated or
unknown, and given back in the high-risk file."""

from __future__ import annotations

import csv
import json
import re
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.errors import ChurnError, DataContractError, ImportMappingError
from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import BILLING, SUBSCRIBERS, USAGE_DAILY
from tasks.core.settings import Settings
from tasks.data.customer_keys import CUSTOMER_KEYS, customer_keys_path, subscriber_of
from tasks.data.importer import import_file
from tasks.scoring.high_risk import (
    HIGH_RISK_COLUMNS,
    select_high_risk,
    with_customer_keys,
    write_high_risk_file,
)
from tests.unit.data.export_data import (
    CHURN_FLAG,
    SNAPSHOT,
    export_row,
    snapshot_files,
    write_export,
    write_mapping,
)

KEYED = "customer_key: customerID\n"
ID_MAPPED = "  customerID: subscriber_id\n"


def keyed_mapping(path: Path, *extra: str, snapshot: date = SNAPSHOT) -> Path:
    """The export's subscribers mapping with the customer id as a key, not as subscriber_id."""
    write_mapping(path, *extra, snapshot=snapshot)
    text = path.read_text()
    assert ID_MAPPED in text
    path.write_text(KEYED + text.replace(ID_MAPPED, ""))
    return path


def import_export(source: Path, *customers: str, snapshot: date = SNAPSHOT, extra: str = ""):
    """Import an export of ``customers`` (their ids as the file spells them), keyed."""
    work = source.parent / f"in-{snapshot}"
    work.mkdir(parents=True, exist_ok=True)
    export = write_export(work / "export.csv", *(export_row(c) for c in customers))
    mapping = keyed_mapping(work / "mapping.yaml", CHURN_FLAG, extra, snapshot=snapshot)
    return import_file(export, mapping, source)


def stored_keys(source: Path) -> dict[str, int]:
    rows = pq.read_table(customer_keys_path(source)).to_pylist()
    return {r["customer_key"]: r["subscriber_id"] for r in rows}


def subscriber_ids(source: Path) -> list[int]:
    return pq.read_table(table_path(source, SUBSCRIBERS))["subscriber_id"].to_pylist()


# --------------------------------------------------------------------------------------------
# Numbering
# --------------------------------------------------------------------------------------------


def test_keys_are_numbered_in_the_order_the_file_first_lists_them(tmp_path: Path) -> None:
    # text ids as a real export spells them, one with blanks around it (trimmed)
    customers = ("7590-VHVEG", "5575-GNVDE", " 3668-QPYBK ")
    summary = import_export(tmp_path / "a" / "source", *customers)

    source = tmp_path / "a" / "source"
    assert stored_keys(source) == {"7590-VHVEG": 1, "5575-GNVDE": 2, "3668-QPYBK": 3}
    stored = pq.read_table(customer_keys_path(source))
    assert stored.schema.equals(CUSTOMER_KEYS.arrow_schema)
    assert stored["subscriber_id"].to_pylist() == [1, 2, 3]  # sorted by number
    assert subscriber_ids(source) == [1, 2, 3]
    assert customer_keys_path(source) in summary.written
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    assert manifest["tables"]["customer_keys"] == {"rows": 3, "source": "import"}

    # the same file into another source: the same numbers, the same bytes
    import_export(tmp_path / "b" / "source", *customers)
    again = tmp_path / "b" / "source"
    for path in (customer_keys_path, lambda root: table_path(root, SUBSCRIBERS)):
        assert path(again).read_bytes() == path(source).read_bytes()


def test_a_later_export_keeps_known_numbers_and_numbers_new_keys_after_them(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    import_export(source, "7590-VHVEG", "5575-GNVDE")
    later = SNAPSHOT + timedelta(days=30)

    summary = import_export(source, "NEW-0001", "5575-GNVDE", "7590-VHVEG", snapshot=later)

    assert stored_keys(source) == {"7590-VHVEG": 1, "5575-GNVDE": 2, "NEW-0001": 3}
    assert subscriber_ids(source) == [1, 2, 3]
    assert summary.rows == 3
    # an export of known customers only adds no keys: the table is not rewritten
    before = customer_keys_path(source).read_bytes()
    summary = import_export(source, "5575-GNVDE", snapshot=later + timedelta(days=1))
    assert customer_keys_path(source) not in summary.written
    assert customer_keys_path(source).read_bytes() == before


def test_new_keys_never_take_the_number_of_a_subscriber_imported_by_number(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    work = tmp_path / "numeric"
    work.mkdir()
    export = write_export(work / "export.csv", export_row("7"), export_row("40"))
    import_file(export, write_mapping(work / "mapping.yaml"), source)

    import_export(source, "7590-VHVEG", snapshot=SNAPSHOT + timedelta(days=1))

    assert stored_keys(source) == {"7590-VHVEG": 41}
    assert subscriber_ids(source) == [7, 40, 41]


# --------------------------------------------------------------------------------------------
# Refused
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        # the customer id given both ways
        pytest.param(KEYED, "customer_key: customerID and columns: {customerID: subscriber_id}",
                     id="column"),
        pytest.param("customer_key: ''\n", "customer_key must name the file column", id="empty"),
    ],
)  # fmt: skip
def test_customer_key_and_a_subscriber_id_column_are_refused(
    tmp_path: Path, extra: str, named: str
) -> None:
    export = write_export(tmp_path / "export.csv", export_row("7590-VHVEG"))
    mapping = write_mapping(tmp_path / "mapping.yaml", extra)  # still maps customerID

    with pytest.raises(ImportMappingError, match=re.escape(named)):
        import_file(export, mapping, tmp_path / "source")
    assert not (tmp_path / "source").exists()


def test_customer_key_and_a_constant_subscriber_id_are_refused(tmp_path: Path) -> None:
    mapping = tmp_path / "billing.yaml"
    mapping.write_text(
        "table: billing\ncustomer_key: customerID\nconstants: {subscriber_id: 1}\n"
        "columns: {bill_date: bill_date, due_date: due_date, amount: amount, days_late: days_late}\n"
    )
    bills = billing_csv(tmp_path / "bills.csv", "7590-VHVEG")
    with pytest.raises(ImportMappingError, match="constants.subscriber_id both fill"):
        import_file(bills, mapping, tmp_path / "source")


def test_repeated_keys_are_refused_against_the_key_column_with_the_keys(tmp_path: Path) -> None:
    source = tmp_path / "source"
    with pytest.raises(DataContractError) as err:
        import_export(source, "7590-VHVEG", "5575-GNVDE", "7590-VHVEG", " 5575-GNVDE")

    found = [(v.table, v.column, v.rule, v.count) for v in err.value.violations]
    # once, against the file column: not again as subscriber_id's (or the cancellations') unique
    assert found == [("subscribers", "customerID", "unique", 2)]
    assert "'5575-GNVDE', '7590-VHVEG'" in err.value.violations[0].detail
    assert "subscribers.customerID: unique failed for 2 rows" in str(err.value)
    assert not source.exists()


def test_an_empty_key_is_a_not_null_violation_of_the_key_column(tmp_path: Path) -> None:
    source = tmp_path / "source"
    with pytest.raises(DataContractError) as err:
        import_export(source, "7590-VHVEG", "", "   ")

    found = [(v.table, v.column, v.rule, v.count) for v in err.value.violations]
    assert found == [("subscribers", "customerID", "not_null", 2)]
    assert not source.exists()


def billing_csv(path: Path, *customers: str) -> Path:
    lines = ["customerID,bill_date,due_date,amount,days_late"]
    lines += [f"{c},2026-01-{i + 1:02d},2026-01-20,35.0,0" for i, c in enumerate(customers)]
    path.write_text("\n".join(lines) + "\n")
    return path


def usage_csv(path: Path, *customers: str) -> Path:
    lines = ["customerID,day,gb,minutes,dropped"]
    lines += [f"{c},2026-01-{i + 1:02d},1.5,20,0" for i, c in enumerate(customers)]
    path.write_text("\n".join(lines) + "\n")
    return path


EVENT_MAPPINGS = {
    BILLING.name: (
        billing_csv,
        "columns: {bill_date: bill_date, due_date: due_date, amount: amount, days_late: days_late}",
    ),
    USAGE_DAILY.name: (
        usage_csv,
        "columns: {day: usage_date, gb: data_gb, minutes: voice_minutes, dropped: dropped_calls}",
    ),
}


def import_events(source: Path, table: str, *customers: str):
    write, columns = EVENT_MAPPINGS[table]
    work = source.parent / table
    work.mkdir(exist_ok=True)
    mapping = work / "mapping.yaml"
    mapping.write_text(f"table: {table}\ncustomer_key: customerID\n{columns}\n")
    return import_file(write(work / "events.csv", *customers), mapping, source)


@pytest.mark.parametrize("table", list(EVENT_MAPPINGS))
def test_events_of_unknown_customers_are_refused_and_nothing_is_written(
    tmp_path: Path, table: str
) -> None:
    source = tmp_path / "source"
    import_export(source, "7590-VHVEG")
    before = snapshot_files(source)

    with pytest.raises(DataContractError) as err:
        # two rows of one customer no subscribers import has numbered, one row of another
        import_events(source, table, "7590-VHVEG", "0000-NOONE", "0000-NOONE", "9999-GHOST")

    found = [(v.table, v.column, v.rule, v.count) for v in err.value.violations]
    assert found == [(table, "customerID", "known_key", 3)]
    detail = err.value.violations[0].detail
    assert "2 customer_key(s) not in customer_keys" in detail
    assert "'0000-NOONE', '9999-GHOST'" in detail
    assert snapshot_files(source) == before


def test_events_of_known_customers_carry_their_numbers(tmp_path: Path) -> None:
    source = tmp_path / "source"
    import_export(source, "7590-VHVEG", "5575-GNVDE")
    keys_before = customer_keys_path(source).read_bytes()

    summary = import_events(source, BILLING.name, "5575-GNVDE", "7590-VHVEG", "5575-GNVDE")

    bills = pq.read_table(table_path(source, BILLING))
    assert sorted(bills["subscriber_id"].to_pylist()) == [1, 2, 2]
    assert customer_keys_path(source) not in summary.written  # no import but subscribers numbers
    assert customer_keys_path(source).read_bytes() == keys_before


def test_a_source_numbered_by_key_refuses_a_subscriber_id_column(tmp_path: Path) -> None:
    source = tmp_path / "source"
    import_export(source, "7590-VHVEG")
    before = snapshot_files(source)
    export = write_export(tmp_path / "numeric.csv", export_row("1"))
    mapping = write_mapping(tmp_path / "numeric.yaml", snapshot=SNAPSHOT + timedelta(days=1))

    with pytest.raises(ImportMappingError, match="map the file's customer id with customer_key"):
        import_file(export, mapping, source)
    assert snapshot_files(source) == before


# --------------------------------------------------------------------------------------------
# The high-risk file gives the key back
# --------------------------------------------------------------------------------------------

DAY = date(2026, 3, 10)
CANDIDATES = pa.table(
    {
        "subscriber_id": pa.array([1, 2, 3], pa.int64()),
        "probability": [0.9, 0.2, 0.5],
        "risk_tier": ["high", "medium", "high"],
        "monthly_charge": [50.0, 50.0, 50.0],
        "revenue_at_risk": [45.0, 10.0, 25.0],
        "reasons": pa.array([["a"], [], ["b"]], pa.list_(pa.string())),
    }
)


def high_risk_header(settings: Settings) -> tuple[list[str], list[list[str]]]:
    rows = select_high_risk(CANDIDATES, capacity=2, model_version=1, day=DAY)
    csv_path, parquet_path = write_high_risk_file(
        settings, DAY, with_customer_keys(rows, settings.source_dir)
    )
    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        header, *body = list(csv.reader(handle))
    assert pq.read_table(parquet_path).column_names == header
    return header, body


def test_the_high_risk_file_carries_the_customer_key_after_the_subscriber_id(
    churn_home: Settings,
) -> None:
    # subscriber 3 has no key (imported by number before the keys): an empty cell
    keys = pa.table({"customer_key": ["7590-VHVEG", "5575-GNVDE"], "subscriber_id": [1, 2]})
    churn_home.source_dir.mkdir(parents=True)
    pq.write_table(keys.cast(CUSTOMER_KEYS.arrow_schema), customer_keys_path(churn_home.source_dir))

    header, body = high_risk_header(churn_home)

    expected = list(HIGH_RISK_COLUMNS)
    expected.insert(expected.index("subscriber_id") + 1, "customer_key")
    assert header == expected
    assert [(r[1], r[2]) for r in body] == [("1", "7590-VHVEG"), ("3", "")]


def test_without_a_keys_table_the_high_risk_file_is_as_before(churn_home: Settings) -> None:
    header, body = high_risk_header(churn_home)

    assert header == list(HIGH_RISK_COLUMNS)
    assert [r[1] for r in body] == ["1", "3"]


# --------------------------------------------------------------------------------------------
# Asking about a customer by their own id
# --------------------------------------------------------------------------------------------


def test_a_customer_is_found_by_their_own_id_or_by_number(tmp_path: Path) -> None:
    # `churn audit subscriber 7590-VHVEG`: the id the team knows, first; a number otherwise
    source = tmp_path / "source"
    import_export(source, "7590-VHVEG", "5575-GNVDE")
    assert subscriber_of(source, "5575-GNVDE") == 2
    assert subscriber_of(source, " 7590-VHVEG ") == 1
    assert subscriber_of(source, "2") == 2
    with pytest.raises(
        ChurnError, match=r"'0000-NOONE' is not a subscriber_id .* nor a customer_key"
    ):
        subscriber_of(source, "0000-NOONE")
    unkeyed = tmp_path / "unkeyed"
    unkeyed.mkdir()
    assert subscriber_of(unkeyed, "42") == 42
    with pytest.raises(
        ChurnError, match=r"'7590-VHVEG' is not a subscriber_id \(a whole number\)$"
    ):
        subscriber_of(unkeyed, "7590-VHVEG")
