"""The retention team's high-risk file: who is in it, how it reads, and that it is never half written."""

from __future__ import annotations

import codecs
import csv
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.settings import Settings
from tasks.scoring import high_risk as publish
from tasks.scoring.high_risk import (
    HIGH_RISK_COLUMNS,
    high_risk_paths,
    select_high_risk,
    write_high_risk_file,
)

DAY = date(2026, 3, 10)
# The shards' candidates as tasks.scoring.shards.candidate_schema makes them (test_score feeds real ones
# through select_high_risk); spelled out here so this file does not import Feast and MLflow.
CANDIDATE_SCHEMA = pa.schema(
    [
        ("subscriber_id", pa.int64()),
        ("probability", pa.float64()),
        ("risk_tier", pa.string()),
        ("monthly_charge", pa.float64()),
        ("revenue_at_risk", pa.float64()),
        ("reasons", pa.list_(pa.string())),
    ]
)


def candidates(rows: list[tuple]) -> pa.Table:
    """Shard candidates: (subscriber_id, probability, monthly_charge, reasons); revenue = p × charge."""
    return pa.table(
        {
            "subscriber_id": [r[0] for r in rows],
            "probability": [r[1] for r in rows],
            "risk_tier": ["high" if r[1] >= 0.1 else "medium" for r in rows],
            "monthly_charge": [r[2] for r in rows],
            "revenue_at_risk": [r[1] * r[2] for r in rows],
            "reasons": [r[3] for r in rows],
        },
        schema=CANDIDATE_SCHEMA,
    )


CANDIDATES = candidates(
    [
        (101, 0.50, 40.0, ["6 support calls in 30 days", "on the basic plan"]),
        (102, 0.25, 80.0, ["1 support call in 30 days"]),  # ties 101 on revenue, lower p
        (103, 0.90, 95.0, ["a", "b", "c", "d"]),  # four reasons: the file has room for three
        (104, 0.20, 100.0, None),  # no reasons computed
        (105, 0.50, 40.0, []),  # ties 101 on revenue and probability: higher id ranks after
        (106, 0.05, 20.0, ["x"]),
    ]
)


# ----------------------------------------------------------------------------- rows


def test_select_high_risk_keeps_the_top_capacity_ranked_from_one():
    rows = select_high_risk(CANDIDATES, capacity=4, model_version=7, day=DAY)

    assert rows.column_names == list(HIGH_RISK_COLUMNS)
    assert rows.to_pylist() == [
        {
            "rank": 1,
            "subscriber_id": 103,
            "probability": 0.9,
            "risk_tier": "high",
            "monthly_charge": 95.0,
            "revenue_at_risk": 85.5,
            "reason_1": "a",
            "reason_2": "b",
            "reason_3": "c",
            "model_version": 7,
            "score_date": DAY,
        },
        {
            "rank": 2,
            "subscriber_id": 101,
            "probability": 0.5,
            "risk_tier": "high",
            "monthly_charge": 40.0,
            "revenue_at_risk": 20.0,
            "reason_1": "6 support calls in 30 days",
            "reason_2": "on the basic plan",
            "reason_3": "",
            "model_version": 7,
            "score_date": DAY,
        },
        {
            "rank": 3,
            "subscriber_id": 105,
            "probability": 0.5,
            "risk_tier": "high",
            "monthly_charge": 40.0,
            "revenue_at_risk": 20.0,
            "reason_1": "",
            "reason_2": "",
            "reason_3": "",
            "model_version": 7,
            "score_date": DAY,
        },
        {
            "rank": 4,
            "subscriber_id": 102,
            "probability": 0.25,
            "risk_tier": "high",
            "monthly_charge": 80.0,
            "revenue_at_risk": 20.0,
            "reason_1": "1 support call in 30 days",
            "reason_2": "",
            "reason_3": "",
            "model_version": 7,
            "score_date": DAY,
        },
    ]
    assert rows.schema.field("rank").type == pa.int32()
    assert rows.schema.field("model_version").type == pa.int32()
    assert rows.schema.field("score_date").type == pa.date32()


def test_select_high_risk_with_room_for_everyone_keeps_everyone():
    rows = select_high_risk(CANDIDATES, capacity=100, model_version=1, day=DAY)

    assert rows.column("rank").to_pylist() == [1, 2, 3, 4, 5, 6]
    assert rows.column("subscriber_id").to_pylist() == [103, 101, 105, 102, 104, 106]
    assert rows.column("reason_1").to_pylist()[4] == ""  # null reasons: empty cells


def test_select_high_risk_of_no_candidates_is_an_empty_file_with_its_columns():
    rows = select_high_risk(CANDIDATE_SCHEMA.empty_table(), 10, model_version=1, day=DAY)

    assert rows.num_rows == 0
    assert rows.column_names == list(HIGH_RISK_COLUMNS)


# ----------------------------------------------------------------------------- files


def test_high_risk_paths_are_named_by_iso_date(churn_home: Settings):
    csv_path, parquet_path = high_risk_paths(churn_home, DAY)

    assert csv_path == churn_home.retention_dir / "high_risk_2026-03-10.csv"
    assert parquet_path == churn_home.retention_dir / "high_risk_2026-03-10.parquet"


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


WORDY = candidates(
    [
        # words a spreadsheet must show as written: accents, a comma, quotes
        (201, 0.123456, 55.1, ['pays by "invoice", late', "coût élevé", "3 bills"]),
        # tiny numbers never turn into 1e-05
        (202, 0.00004, 0.5, ["joined 3 days ago"]),
    ]
)


def test_csv_has_a_bom_the_header_fixed_decimals_and_iso_dates(churn_home: Settings):
    rows = select_high_risk(WORDY, capacity=10, model_version=12, day=DAY)

    csv_path, parquet_path = write_high_risk_file(churn_home, DAY, rows)

    assert (csv_path, parquet_path) == high_risk_paths(churn_home, DAY)
    raw = csv_path.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8)
    assert not raw[3:].startswith(codecs.BOM_UTF8)
    text = raw.decode("utf-8-sig")
    assert "e-0" not in text and "E-0" not in text
    assert read_csv(csv_path) == [
        list(HIGH_RISK_COLUMNS),
        [
            "1",
            "201",
            "0.1235",
            "high",
            "55.10",
            "6.80",
            'pays by "invoice", late',
            "coût élevé",
            "3 bills",
            "12",
            "2026-03-10",
        ],
        [
            "2",
            "202",
            "0.0000",
            "medium",
            "0.50",
            "0.00",
            "joined 3 days ago",
            "",
            "",
            "12",
            "2026-03-10",
        ],
    ]
    assert leftovers(csv_path.parent) == []


def test_csv_writes_rows_given_unrounded_in_fixed_decimals(churn_home: Settings):
    rows = select_high_risk(WORDY, capacity=10, model_version=12, day=DAY)
    rows = rows.set_column(2, "probability", pa.array([0.00001, 2.5e-07]))
    rows = rows.set_column(5, "revenue_at_risk", pa.array([1e-05, 123456.789]))

    csv_path, _ = write_high_risk_file(churn_home, DAY, rows)

    body = read_csv(csv_path)[1:]
    assert [r[2] for r in body] == ["0.0000", "0.0000"]
    assert [r[5] for r in body] == ["0.00", "123456.79"]


def as_cells(row: dict) -> list[str]:
    """A row of the file as the CSV should spell it: fixed decimals, ISO dates, text as is."""
    decimals = {"probability": 4, "monthly_charge": 2, "revenue_at_risk": 2}
    return [
        f"{v:.{decimals[k]}f}" if k in decimals else v.isoformat() if k == "score_date" else str(v)
        for k, v in row.items()
    ]


def test_parquet_and_csv_hold_the_same_rows(churn_home: Settings):
    rows = select_high_risk(CANDIDATES, capacity=5, model_version=3, day=DAY)

    csv_path, parquet_path = write_high_risk_file(churn_home, DAY, rows)

    stored = pq.read_table(parquet_path)
    assert stored.equals(rows)
    assert stored.column_names == list(HIGH_RISK_COLUMNS)
    assert read_csv(csv_path)[1:] == [as_cells(r) for r in stored.to_pylist()]


def test_an_empty_day_writes_the_header_only(churn_home: Settings):
    rows = select_high_risk(CANDIDATE_SCHEMA.empty_table(), 10, model_version=1, day=DAY)

    csv_path, parquet_path = write_high_risk_file(churn_home, DAY, rows)

    assert read_csv(csv_path) == [list(HIGH_RISK_COLUMNS)]
    assert pq.read_table(parquet_path).num_rows == 0


def test_a_rerun_replaces_both_files(churn_home: Settings):
    first = select_high_risk(CANDIDATES, capacity=5, model_version=3, day=DAY)
    second = select_high_risk(CANDIDATES, capacity=2, model_version=4, day=DAY)
    write_high_risk_file(churn_home, DAY, first)

    csv_path, parquet_path = write_high_risk_file(churn_home, DAY, second)

    assert pq.read_table(parquet_path).equals(second)
    body = read_csv(csv_path)[1:]
    assert [r[1] for r in body] == ["103", "101"]
    assert {r[9] for r in body} == {"4"}
    assert sorted(p.name for p in csv_path.parent.iterdir()) == [csv_path.name, parquet_path.name]


def test_a_failure_while_writing_the_csv_keeps_the_previous_csv(
    churn_home: Settings, monkeypatch: pytest.MonkeyPatch
):
    previous = select_high_risk(CANDIDATES, capacity=5, model_version=3, day=DAY)
    csv_path, _ = write_high_risk_file(churn_home, DAY, previous)
    before = csv_path.read_bytes()
    real_writer = csv.writer

    class DiskFull(OSError):
        pass

    def failing_writer(out, *args, **kwargs):
        """A csv writer that writes the header and one row, then fails."""
        writer = real_writer(out, *args, **kwargs)
        calls = {"n": 0}

        class Failing:
            def writerow(self, row):
                calls["n"] += 1
                if calls["n"] > 2:
                    raise DiskFull("no space left on device")
                return writer.writerow(row)

        return Failing()

    monkeypatch.setattr(publish.csv, "writer", failing_writer)
    rerun = select_high_risk(CANDIDATES, capacity=6, model_version=4, day=DAY)

    with pytest.raises(DiskFull):
        write_high_risk_file(churn_home, DAY, rerun)

    assert csv_path.read_bytes() == before
    assert leftovers(csv_path.parent) == []
