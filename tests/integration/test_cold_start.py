"""Cold start (README "Importing your data: a cold start"): a first model from one customer export.

* A telco-style export of 7,000 customers (``examples/telco/make_export.py``, text customer
  ids), imported with the example's mapping, trained with ``churn train --cold-start`` and scored
  with ``churn score``, run as an operator runs them: exit codes, the model card's words, the
  MLflow tags, the high-risk file with reasons in words for the export's own attributes, and
  ``churn serve``'s answer. The same export with cancellation dates instead of the flag.
* The shared simulated world plays a base whose history reaches a full training window only
  later: a cold start on its 30th day, then a scheduled retraining that has too little history
  (the cold-start champion stays, the run does not fail), then one with enough, which trains the
  time-split way and is judged against the cold-start champion.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import random
import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from tasks.core.settings import PROJECT_ROOT, get_settings, reset_settings
from tasks.training.mlflow_store import CHAMPION
from tasks.training.registry import current_alias, list_versions
from tasks.training.retrain import retrain

from .conftest import SMALL_WORLD_GATES, WORLD_START

pytestmark = pytest.mark.integration

EXAMPLE = PROJECT_ROOT / "examples" / "telco"
EXPORT_DAY = date(2026, 11, 30)  # examples/telco/subscribers_mapping.yaml: snapshot_date
CUSTOMERS = 7000
CHURN = [sys.executable, "-m", "flows"]


def _make_export(out: Path, customers: int) -> Path:
    spec = importlib.util.spec_from_file_location("make_export", EXAMPLE / "make_export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_csv(module.make_export(customers, 7), out)
    return out


@pytest.fixture(scope="module")
def telco(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The example run end to end by the CLI: import, build, cold-start training, scoring."""
    root = tmp_path_factory.mktemp("telco")
    export = _make_export(root / "export.csv", CUSTOMERS)
    env = {
        **os.environ,
        "CHURN_HOME": str(root / "home"),
        "CHURN_FEATURE_DEFINITIONS": str(EXAMPLE / "features.yaml"),
        "CHURN_FEATURE_SERVICE": "telco_export_v1",
        "COLUMNS": "200",
    }

    def churn(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CHURN, *args], capture_output=True, text=True, env=env, timeout=600, check=False
        )

    mapping = str(EXAMPLE / "subscribers_mapping.yaml")
    steps = {
        "cold-start": churn("cold-start", str(export), "--mapping", mapping),
        # Training the same export again, as `churn train --cold-start`: the same split and
        # the same model, so the champion is kept.
        "train again": churn("train", "--cold-start"),
    }
    return {"home": root / "home", "env": env, "steps": steps, "export": export}


def test_one_command_imports_trains_and_scores_and_training_again_keeps_the_champion(
    telco: dict,
) -> None:
    for name, result in telco["steps"].items():
        assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    said = " ".join(telco["steps"]["cold-start"].stdout.split())
    assert f"imported {CUSTOMERS:,} customers" in said
    assert "split by subscriber" in said and "promote" in said
    assert f"high_risk_{EXPORT_DAY}.csv" in said
    again = " ".join(telco["steps"]["train again"].stdout.split())
    assert "by subscriber (cold start)" in again
    assert "keep" in again and "champion compared │ 1" in again, again


def test_a_mapping_without_a_churn_column_is_refused_before_anything_is_written(
    telco: dict, tmp_path: Path
) -> None:
    mapping = tmp_path / "no_churn.yaml"
    text = (EXAMPLE / "subscribers_mapping.yaml").read_text()
    mapping.write_text(text.replace("churn: {flag: Churn}", ""))
    home = tmp_path / "home"
    env = {**telco["env"], "CHURN_HOME": str(home)}
    done = subprocess.run(
        [*CHURN, "cold-start", str(telco["export"]), "--mapping", str(mapping)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "needs the export's churn column" in done.stderr
    assert not (home / "source").exists()


def test_the_model_says_it_was_split_by_subscriber(
    telco: dict, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHURN_HOME", str(telco["home"]))
    reset_settings()
    try:
        settings = get_settings()
        champion = current_alias(settings, CHAMPION)
        assert champion is not None and champion.version == 1
        assert champion.tags["split"] == "subscriber" and champion.tags["cold_start"] == "true"
        day = str(EXPORT_DAY - timedelta(days=1))
        assert champion.tags["training_window_start"] == champion.tags["training_window_end"] == day
        assert champion.tags["feature_service"] == "telco_export_v1"
        assert 0.70 <= champion.metrics["roc_auc"] <= 0.95, champion.metrics
        _, card = _champion_and_card(settings, tmp_path)
        assert "split by subscriber, not by time" in card and "weaker guarantee" in card
    finally:
        reset_settings()


def test_the_high_risk_file_ranks_current_customers_with_reasons_in_words(telco: dict) -> None:
    path = telco["home"] / "retention" / f"high_risk_{EXPORT_DAY}.csv"
    with path.open(encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    with telco["export"].open() as handle:
        export = {r["customerID"]: r for r in csv.DictReader(handle)}
    assert rows, "an empty high-risk file"
    # Each customer by the export's own id (text, numbered by the import), right after the number.
    assert list(rows[0])[1:3] == ["subscriber_id", "customer_key"]
    assert len({r["customer_key"] for r in rows}) == len({r["subscriber_id"] for r in rows})
    # Only customers still there on the export's day: who had left is not called.
    assert all(export[r["customer_key"]]["Churn"] == "No" for r in rows)
    said = " ".join(r[f"reason_{i}"] for r in rows for i in (1, 2, 3))
    attribute_words = (
        "internet: fiber optic",
        "tech support: no",
        "online security: no",
        "paperless billing: yes",
    )
    assert any(words in said for words in attribute_words), said[:1000]
    assert "_" not in " ".join(r["reason_1"] for r in rows[:50])  # words, not codes


def test_churn_serve_scores_a_customer_of_the_export(telco: dict, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    from flows.serve import create_app, open_service

    for name in ("CHURN_HOME", "CHURN_FEATURE_DEFINITIONS", "CHURN_FEATURE_SERVICE"):
        monkeypatch.setenv(name, telco["env"][name])
    reset_settings()
    try:
        path = telco["home"] / "retention" / f"high_risk_{EXPORT_DAY}.csv"
        with path.open(encoding="utf-8-sig") as handle:
            first = next(csv.DictReader(handle))
        with TestClient(create_app(open_service(get_settings()))) as http:
            answer = http.post("/predict", json={"subscriber_id": int(first["subscriber_id"])})
            # The CRM asks by the customer's own id; the same customer, the same score.
            by_key = http.post("/predict", json={"customer_key": first["customer_key"]})
            unknown = http.post("/predict", json={"customer_key": "0000-NOONE"})
            both = http.post(
                "/predict", json={"subscriber_id": 1, "customer_key": first["customer_key"]}
            )
        assert answer.status_code == 200, answer.text
        assert abs(answer.json()["probability"] - float(first["probability"])) < 1e-3
        assert by_key.status_code == 200, by_key.text
        assert by_key.json()["subscriber_id"] == int(first["subscriber_id"])
        assert by_key.json()["probability"] == answer.json()["probability"]
        assert unknown.status_code == 404 and "0000-NOONE" in unknown.json()["detail"]
        assert both.status_code == 422 and "exactly one" in both.text
    finally:
        reset_settings()


def test_cancellation_dates_label_everyone_who_left_within_the_horizon(
    telco: dict, monkeypatch, tmp_path: Path
) -> None:
    # The same export with the day each leaver left, spread over the 60 days before it: the
    # cold start learns on the day 30 days before the export, from everyone who left after it.
    with telco["export"].open() as handle:
        rows = list(csv.DictReader(handle))
    spread = random.Random(5)
    for row in rows:
        left = EXPORT_DAY - timedelta(days=spread.randrange(60))
        row["LeftOn"] = left.isoformat() if row["Churn"] == "Yes" else ""
    export = tmp_path / "export_with_dates.csv"
    with export.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    mapping = tmp_path / "mapping.yaml"
    text = (EXAMPLE / "subscribers_mapping.yaml").read_text()
    mapping.write_text(
        text.replace("churn: {flag: Churn}", "churn: {cancel_date: LeftOn}")
        + 'date_format: "%Y-%m-%d"\n'
    )
    labelled = EXPORT_DAY - timedelta(days=30)
    # In service on the labelled day and gone by the export: the positives. Every other
    # leaver is counted, not learned from.
    positives = sum(
        1
        for r in rows
        if r["LeftOn"]
        and date.fromisoformat(r["LeftOn"]) > labelled
        and EXPORT_DAY - timedelta(days=int(int(r["tenure"]) * 30.4375)) <= labelled
    )
    leavers = sum(1 for r in rows if r["LeftOn"])
    home = tmp_path / "home"
    monkeypatch.setenv("CHURN_HOME", str(home))
    done = subprocess.run(
        [*CHURN, "cold-start", str(export), "--mapping", str(mapping)],
        capture_output=True, text=True, env={**telco["env"], "CHURN_HOME": str(home)},
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert positives > 500 and leavers - positives > 500  # both kinds are there
    reset_settings()
    try:
        champion, card = _champion_and_card(get_settings(), tmp_path)
    finally:
        reset_settings()
    assert champion.tags["training_window_start"] == str(labelled)
    assert "who left within the 30 days after that day" in card
    assert f"{leavers - positives:,} of the export's leavers are not training rows" in card
    churned = sum(int(size.replace(",", "")) for size in re.findall(r"\(([\d,]+) churned\)", card))
    assert churned == positives
    # As with the flag: no more than the attributes tell (the sign-up day does not give the
    # day a leaver left away).
    assert 0.70 <= champion.metrics["roc_auc"] <= 0.86, champion.metrics


def _champion_and_card(settings, tmp_path: Path):
    from tasks.training.mlflow_store import connect

    champion = current_alias(settings, CHAMPION)
    assert champion is not None
    card = connect(settings).download_artifacts(champion.run_id, "model_card.md", str(tmp_path))
    return champion, Path(card).read_text()


# ----------------------------------------------------------------------------- takeover


def test_the_time_split_retraining_takes_over_once_the_history_is_there(
    settings_for, prefect_server
) -> None:
    from flows.retrain import retrain_flow

    settings = settings_for(**SMALL_WORLD_GATES)
    early = WORLD_START + timedelta(days=60)
    cold = retrain(settings, early, "cold start", cold_start=True)
    assert cold.promoted and cold.version == 1, cold.decision.summary()
    assert cold.split_days["holdout"] == [str(early - timedelta(days=30))]

    with prefect_server.in_process():
        waiting = retrain_flow(as_of=early + timedelta(days=40), reason="weekly schedule")
        assert waiting is None  # too little history: the run ends without failing
        assert current_alias(settings, CHAMPION).version == 1

        later = retrain_flow(as_of=WORLD_START + timedelta(days=239), reason="weekly schedule")
    assert later is not None and later.champion_version == 1  # judged against the cold start
    assert len(later.split_days["holdout"]) == settings.holdout_snapshots  # by time
    from tasks.training.mlflow_store import connect

    tags = connect(settings).get_run(later.run_id).data.tags
    assert (tags["split"], tags["cold_start"]) == ("time", "false")
    if later.version is not None:  # promoted or not, the run says how it was split
        assert {v.version: v for v in list_versions(settings)}[later.version].tags[
            "split"
        ] == "time"
