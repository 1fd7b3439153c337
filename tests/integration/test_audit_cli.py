"""`churn audit …` as an auditor runs it: read-only SQL, a subscriber's history, verify."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.audit_cli import audit_app
from tasks.audit.views import ReadOnlyViolation
from tasks.core.settings import Settings
from tests.unit.audit.test_prediction_log import DAY, MODEL, make_batch, publish

pytestmark = pytest.mark.integration

runner = CliRunner()


def audit(*args: str):
    return runner.invoke(audit_app, list(args), env={"COLUMNS": "200"})


def churn(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHURN_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "flows", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture
def log(churn_home: Settings) -> Settings:
    publish(churn_home, [make_batch([1, 2, 3], [0.5, 0.05, 0.01])])
    publish(churn_home, [make_batch([1, 2, 3], [0.4, 0.2, 0.01])], version=4, role="shadow")
    publish(churn_home, [make_batch([1, 2], [0.3, 0.02])], day=DAY + timedelta(days=1))
    return churn_home


def test_audit_is_registered_on_churn(tmp_path: Path) -> None:
    result = churn("audit", "--help", home=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("sql", "subscriber", "verify"):
        assert command in result.stdout


def test_sql_prints_a_table(log: Settings) -> None:
    result = audit("sql", "SELECT role, count(*) AS n FROM predictions GROUP BY role ORDER BY role")
    assert result.exit_code == 0, result.output
    assert "champion" in result.output and "5" in result.output
    assert "shadow" in result.output and "3" in result.output


def test_sql_prints_csv(log: Settings) -> None:
    result = audit(
        "sql",
        "SELECT subscriber_id, probability, reasons, score_date FROM predictions "
        "WHERE role = 'champion' ORDER BY score_date, subscriber_id",
        "--format",
        "csv",
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["subscriber_id"], r["probability"], r["score_date"]) for r in rows] == [
        ("1", "0.5", "2026-05-01"),
        ("2", "0.05", "2026-05-01"),
        ("3", "0.01", "2026-05-01"),
        ("1", "0.3", "2026-05-02"),
        ("2", "0.02", "2026-05-02"),
    ]
    assert rows[0]["reasons"] == '["tenure_months", "support_calls_30d"]'


def test_feature_values_print_readably(log: Settings) -> None:
    query = (
        "SELECT features FROM predictions WHERE role = 'champion' "
        "ORDER BY score_date, subscriber_id"
    )
    table = audit("sql", query)
    assert table.exit_code == 0, table.output
    assert "tenure_months=1, monthly_charge=21.5, plan=plus, autopay=False" in table.output
    rows = list(csv.DictReader(io.StringIO(audit("sql", query, "--format", "csv").output)))
    assert json.loads(rows[0]["features"]) == {
        "tenure_months": 1,
        "monthly_charge": 21.5,
        "plan": "plus",
        "autopay": False,
    }
    report = list(csv.DictReader(io.StringIO(audit("subscriber", "2", "--format", "csv").output)))
    assert [json.loads(r["features"])["tenure_months"] for r in report] == [2, 2, 2]


def test_sql_table_shows_a_limited_number_of_rows(log: Settings) -> None:
    result = audit("sql", "SELECT * FROM range(500)", "--limit", "10")
    assert result.exit_code == 0, result.output
    assert "showing 10 of 500 rows" in result.output


def test_refused_write_exits_1(log: Settings) -> None:
    result = audit("sql", f"COPY predictions TO '{log.predictions_dir}/copy.csv'")
    assert result.exit_code == 1
    assert isinstance(result.exception, ReadOnlyViolation)
    assert not (log.predictions_dir / "copy.csv").exists()


def test_refused_write_is_one_error_line(log: Settings) -> None:
    result = churn("audit", "sql", "DROP VIEW predictions", home=log.home)
    assert result.returncode == 1
    assert "error:" in result.stderr and "refused DROP" in result.stderr
    assert "Traceback" not in result.stderr


def test_subscriber_history(log: Settings) -> None:
    result = audit("subscriber", "2")
    assert result.exit_code == 0, result.output
    assert "Subscriber 2" in result.output
    for text in ("2026-05-01", "2026-05-02", "champion", "shadow", "0.05", "0.2", "0.02"):
        assert text in result.output
    csv_result = audit("subscriber", "2", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(csv_result.output)))
    assert [(r["score_date"], r["role"], r["model_version"]) for r in rows] == [
        ("2026-05-01", "champion", "3"),
        ("2026-05-01", "shadow", "4"),
        ("2026-05-02", "champion", "3"),
    ]
    assert rows[0]["prediction_id"] == f"2026-05-01/{MODEL}/v3/champion/2"


def test_unknown_subscriber_says_so(log: Settings) -> None:
    result = audit("subscriber", "999")
    assert result.exit_code == 0
    assert "no predictions logged for subscriber 999" in result.output


def test_commands_work_before_anything_is_logged(churn_home: Settings) -> None:
    assert audit("verify").exit_code == 0
    result = audit("sql", "SELECT count(*) AS n FROM predictions")
    assert result.exit_code == 0 and "0" in result.output
    assert "no predictions logged" in audit("subscriber", "1").output


def test_verify_is_clean_then_reports_tampering(log: Settings) -> None:
    clean = audit("verify")
    assert clean.exit_code == 0, clean.output
    assert "clean: 3 ok, 0 modified, 0 missing, 0 unexpected" in clean.output

    files = sorted(log.predictions_dir.rglob("*.parquet"))
    edited, deleted = files[0], files[1]
    table = pq.read_table(edited)
    probability = table.column("probability").to_pylist()
    probability[0] = 0.99
    pq.write_table(
        table.set_column(7, table.schema.field(7), pa.array(probability)),
        edited,
        compression="zstd",
    )
    deleted.unlink()
    planted = log.predictions_dir / "score_date=2026-05-03" / f"{MODEL}-v3-champion.parquet"
    planted.parent.mkdir()
    pq.write_table(pq.read_table(files[2]), planted)

    result = audit("verify")
    assert result.exit_code == 1
    rel = lambda p: p.relative_to(log.predictions_dir).as_posix()
    output = " ".join(result.output.split())
    assert f"modified {rel(edited)}" in output
    assert f"missing {rel(deleted)}" in output
    assert f"unexpected {rel(planted)}" in output
    assert "1 ok, 1 modified, 1 missing, 1 unexpected" in output


def test_verify_exit_code_through_churn(log: Settings) -> None:
    assert churn("audit", "verify", home=log.home).returncode == 0
    next(log.predictions_dir.rglob("*.parquet")).unlink()
    result = churn("audit", "verify", home=log.home)
    assert result.returncode == 1 and "missing" in result.stdout
