"""`churn backtest` as an operator runs it: a small world, three policies replayed through the
flows, the files it leaves, a rerun that reuses finished replays, and a start without history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from .conftest import SMALL_WORLD_GATES

pytestmark = pytest.mark.integration

CHURN = [sys.executable, "-m", "flows"]
NIGHTS = [date(2026, 7, 31) + timedelta(days=i) for i in range(5)]  # Fri .. Tue: one Saturday


def _backtest(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHURN_HOME": str(home), "COLUMNS": "250", **SMALL_WORLD_GATES}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [*CHURN, "backtest", "--subscribers", "1500", "--seed", "3", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


def test_policies_replayed_night_by_night_leave_their_table_chart_and_homes(tmp_path: Path):
    out = tmp_path / "bt"
    args = ("--nights-before", "2", "--nights-after", "3", "--out", str(out))
    policies = ("none", "weekly", "deployed")
    result = _backtest(tmp_path / "home", *args, *(x for p in policies for x in ("--policy", p)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (
        "backtest price_shock: 1,500 subscribers, nights 2026-07-31 .. 2026-08-04" in result.stdout
    )
    assert "shift 2026-08-02" in result.stdout

    realized = pd.read_csv(out / "realized_price_shock.csv")
    # Every night's outcome has matured (the world runs 30 days past the last night).
    assert sorted(realized["policy"].unique()) == sorted(policies)
    for policy in policies:
        mine = realized[realized["policy"] == policy]
        assert mine["score_date"].tolist() == [d.isoformat() for d in NIGHTS]
        assert mine["precision_at_k"].between(0, 1).all() and mine["roc_auc"].between(0, 1).all()
    # The first champion is shared by construction: before any retraining, identical scores.
    first = realized[realized["score_date"] == "2026-07-31"].set_index("policy")
    assert first["roc_auc"].nunique() == 1 and first["precision_at_k"].nunique() == 1

    runs = {r["policy"]: r for r in json.loads((out / "policies_price_shock.json").read_text())}
    assert runs["none"]["retrainings"] == 0
    assert [r["as_of"] for r in runs["weekly"]["retrain_log"]] == ["2026-08-01"]
    assert runs["weekly"]["retrain_log"][0]["reason"] == "weekly schedule"
    # The deployed default runs the same schedule beside the drift trigger.
    assert "weekly schedule" in [r["reason"] for r in runs["deployed"]["retrain_log"]]
    assert all(r["cpu_seconds"] > 0 for r in runs.values())

    table = (out / "summary_price_shock.md").read_text()
    assert "| incidents (most messages) |" in table
    for policy in policies:
        assert f"| {policy} |" in table
    assert (out / "precision_at_k_price_shock.png").read_bytes()[:4] == b"\x89PNG"

    homes = out / "price_shock"
    for policy in policies:
        partitions = sorted(p.name for p in (homes / policy / "predictions").glob("score_date=*"))
        assert partitions == [f"score_date={d}" for d in NIGHTS]
        assert (homes / policy / "source").resolve() == (homes / "world" / "source").resolve()
    # Only the monitoring policy looked at drift.
    assert (homes / "deployed" / "monitoring" / "drift").is_dir()
    assert not (homes / "none" / "monitoring" / "drift").exists()

    # A rerun keeps the finished replays of the same world and replays nothing.
    again = _backtest(tmp_path / "home", *args, "--policy", "none", "--reuse")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "policy none: reusing the replay" in again.stdout
    assert pd.read_csv(out / "realized_price_shock.csv")["policy"].unique().tolist() == ["none"]


def test_a_start_without_enough_history_names_the_day_to_start_from(tmp_path: Path):
    out = tmp_path / "bt"
    result = _backtest(tmp_path / "home", "--start", "2026-03-01", "--out", str(out))
    assert result.returncode == 1
    assert "start from 2026-07-31 instead" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
