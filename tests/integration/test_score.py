"""Nightly scoring on a real simulated world: real Feast registry, MLflow champion, Prefect, Dask."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.audit.ledger import read_ledger, verify_log
from tasks.core.settings import get_settings, reset_settings
from tasks.data.sources import active_subscribers
from tasks.features.frames import build_scoring_frame
from tasks.scoring.models import NoChampion
from tasks.scoring.nightly import run_scoring
from tasks.training.model_spec import ModelSpec
from tasks.training.registry import load_model
from tasks.training.retrain import retrain
from tasks.training.train import predict_proba

from .conftest import RETRAIN_WORLD_DAYS, WORLD_START, champion_environment

pytestmark = pytest.mark.integration

DAY = WORLD_START + timedelta(days=RETRAIN_WORLD_DAYS - 1)
LOG_VALUES = ["subscriber_id", "probability", "risk_tier", "reasons", "features", "prediction_id"]


@pytest.fixture(scope="module")
def champion_env(retrain_world_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """The shared world with its own MLflow store holding a champion (version 1)."""
    return champion_environment(
        retrain_world_home,
        tmp_path_factory.mktemp("score_mlflow"),
        "score_test_model",
        DAY,
        "test: a champion to score with",
    )


@pytest.fixture
def scoring(champion_env, monkeypatch: pytest.MonkeyPatch):
    """Settings over the champion's world, with no prediction log or high-risk file yet."""
    for name, value in champion_env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    settings = get_settings()
    shutil.rmtree(settings.predictions_dir, ignore_errors=True)
    shutil.rmtree(settings.retention_dir, ignore_errors=True)
    yield settings
    reset_settings()


def _log(settings, role: str = "champion", version: int = 1) -> pa.Table:
    path = (
        settings.predictions_dir
        / f"score_date={DAY}"
        / f"{settings.model_name}-v{version}-{role}.parquet"
    )
    return pq.read_table(path)


def _high_risk_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_nightly_flow_scores_everyone_and_writes_the_file_and_the_log(
    scoring, prefect_server
) -> None:
    from flows.score import score_nightly_flow

    with prefect_server.in_process():
        summary = score_nightly_flow(score_date=DAY)

    in_service = active_subscribers(scoring, DAY).num_rows
    assert summary.subscribers == summary.scored == in_service
    assert summary.not_scored == {}
    assert summary.models == [(1, "champion")]
    assert sum(summary.tiers["champion"].values()) == in_service

    # The retention team's file: capacity rows, ranked by revenue at risk, with reasons in words.
    rows = _high_risk_rows(summary.high_risk_csv)
    assert len(rows) == scoring.retention_capacity == summary.high_risk_rows
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    revenue = [float(r["revenue_at_risk"]) for r in rows]
    assert revenue == sorted(revenue, reverse=True)
    assert all(r["reason_1"] and r["model_version"] == "1" for r in rows)
    assert all(r["score_date"] == DAY.isoformat() for r in rows)
    parquet = pq.read_table(summary.high_risk_parquet)
    assert parquet.column("subscriber_id").to_pylist() == [int(r["subscriber_id"]) for r in rows]

    # The log: one row per subscriber, the champion's probabilities on the bulk frame, computed
    # by the compiled trees on every shard (agreeing with LightGBM to the last bits or so).
    assert summary.predictors == {"champion": {"compiled": summary.shards}}
    log = _log(scoring).sort_by("subscriber_id")
    assert log.num_rows == in_service
    frame = build_scoring_frame(scoring, DAY)
    booster, spec, _ = load_model(scoring, "champion")
    expected = predict_proba((booster, ModelSpec.from_dict(spec)), frame)
    np.testing.assert_allclose(log.column("probability").to_numpy(), expected, rtol=0, atol=1e-12)
    assert set(log.column("risk_tier").to_pylist()) <= {"low", "medium", "high"}
    # Reasons for exactly the subscribers in the file (SHAP once a night, for them).
    explained = {
        sid
        for sid, reasons in zip(
            log.column("subscriber_id").to_pylist(), log.column("reasons").to_pylist(), strict=True
        )
        if reasons is not None
    }
    assert {int(r["subscriber_id"]) for r in rows} == explained
    # The feature values used, as the model saw them: a struct of the model's inputs, in order,
    # with the feature frame's types.
    inputs = ModelSpec.from_dict(spec).features
    assert log.schema.field("features").type == pa.struct(
        [pa.field(name, frame.schema.field(name).type) for name in inputs]
    )
    sample = frame.slice(7, 1).to_pylist()[0]
    logged = log.slice(7, 1).column("features")[0].as_py()
    assert list(logged) == list(inputs)
    for name, value in logged.items():
        assert (
            value == pytest.approx(sample[name])
            if isinstance(value, float)
            else value == sample[name]
        )
    run_ids = set(log.column("flow_run_id").to_pylist())
    assert len(run_ids) == 1 and None not in run_ids
    assert verify_log(scoring).clean


def test_a_rerun_replaces_that_date_and_never_duplicates(scoring) -> None:
    first = run_scoring(scoring, DAY)
    csv_bytes = first.high_risk_csv.read_bytes()
    before = _log(scoring).select(LOG_VALUES)
    second = run_scoring(scoring, DAY)
    assert second.scored == first.scored
    assert _log(scoring).select(LOG_VALUES).equals(before)
    assert second.high_risk_csv.read_bytes() == csv_bytes
    assert [e.rows for e in read_ledger(scoring)] == [first.scored, first.scored]
    report = verify_log(scoring)
    assert report.clean and report.ok == 1


def test_a_crash_mid_run_leaves_the_published_files_and_the_rerun_succeeds(
    scoring, monkeypatch
) -> None:
    import tasks.scoring.nightly
    from tasks.scoring.nightly import in_process

    monkeypatch.setenv("CHURN_SCORE_SHARD_ROWS", "1000")
    reset_settings()
    settings = get_settings()
    run_scoring(settings, DAY)
    log_bytes = next(settings.predictions_dir.glob("score_date=*/*.parquet")).read_bytes()
    csv_path = settings.retention_dir / f"high_risk_{DAY}.csv"
    csv_bytes = csv_path.read_bytes()

    def dies_after_one_shard(ctx, shards):
        results = in_process(ctx, shards)
        yield next(results)
        raise RuntimeError("killed in the middle of the night")

    with pytest.raises(RuntimeError, match="killed"):
        run_scoring(settings, DAY, map_shards=dies_after_one_shard)
    assert next(settings.predictions_dir.glob("score_date=*/*.parquet")).read_bytes() == log_bytes
    assert csv_path.read_bytes() == csv_bytes
    assert verify_log(settings).clean  # no half-written file, no stray temp file

    def file_write_fails(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tasks.scoring.nightly, "write_high_risk_file", file_write_fails)
    with pytest.raises(OSError, match="disk full"):
        run_scoring(settings, DAY)
    assert csv_path.read_bytes() == csv_bytes
    monkeypatch.undo()
    monkeypatch.setenv("CHURN_HOME", str(settings.home))
    rerun = run_scoring(settings, DAY)
    assert rerun.scored == active_subscribers(settings, DAY).num_rows
    assert verify_log(settings).clean
    assert (
        len(pq.read_table(next(settings.predictions_dir.glob("score_date=*/*.parquet"))))
        == rerun.scored
    )


def test_without_a_champion_nothing_is_scored_or_written(scoring, tmp_path) -> None:
    env = {
        **os.environ,
        "CHURN_HOME": str(scoring.home),
        "CHURN_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/empty.db",
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [sys.executable, "-m", "flows", "score", "--date", DAY.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "error:" in result.stderr and "has no champion" in result.stderr
    assert not list(scoring.predictions_dir.glob("**/*.parquet"))
    assert not scoring.retention_dir.exists() or not list(scoring.retention_dir.iterdir())
    with pytest.raises(NoChampion):
        os.environ["CHURN_MLFLOW_TRACKING_URI"] = env["CHURN_MLFLOW_TRACKING_URI"]
        reset_settings()
        try:
            run_scoring(get_settings(), DAY)
        finally:
            os.environ["CHURN_MLFLOW_TRACKING_URI"] = scoring.mlflow_tracking_uri


def test_dask_shards_give_exactly_the_in_process_output(
    scoring, prefect_server, monkeypatch
) -> None:
    from flows.score import score_nightly_flow

    monkeypatch.setenv("CHURN_SCORE_SHARD_ROWS", "1000")
    reset_settings()
    local = run_scoring(get_settings(), DAY)
    assert local.shards == 4
    local_log = _log(scoring).select(LOG_VALUES)
    local_csv = local.high_risk_csv.read_bytes()

    monkeypatch.setenv("CHURN_SCORE_TASK_RUNNER", "dask")
    reset_settings()
    with prefect_server.in_process():
        on_dask = score_nightly_flow(score_date=DAY)
    assert on_dask.shards == 4 and on_dask.scored == local.scored
    assert _log(scoring).select(LOG_VALUES).equals(local_log)
    assert on_dask.high_risk_csv.read_bytes() == local_csv


def test_a_distinct_challenger_is_scored_in_shadow_beside_the_champion(
    scoring, monkeypatch
) -> None:
    """Last in this module: it leaves a challenger in the module's registry."""
    from tasks.audit.views import audit_connection, run_readonly

    run_scoring(scoring, DAY)
    assert not list(scoring.predictions_dir.glob("**/*shadow*.parquet"))  # no challenger yet

    monkeypatch.setenv("CHURN_PROMOTION_MODE", "shadow")
    monkeypatch.setenv("CHURN_GATE_AUC_MARGIN", "-1")  # let an equal model through
    reset_settings()
    settings = get_settings()
    second = retrain(settings, DAY - timedelta(days=7), "test: a challenger in shadow")
    assert second.version == 2 and not second.promoted

    summary = run_scoring(settings, DAY)
    assert summary.models == [(1, "champion"), (2, "shadow")]
    champion, shadow = _log(settings), _log(settings, "shadow", 2)
    assert shadow.num_rows == champion.num_rows == summary.scored
    assert shadow.column("reasons").null_count == shadow.num_rows  # reasons: champion only
    assert set(shadow.column("role").to_pylist()) == {"shadow"}
    # The high-risk file is the champion's.
    assert {r["model_version"] for r in _high_risk_rows(summary.high_risk_csv)} == {"1"}
    disagreement = run_readonly(
        audit_connection(settings), "SELECT * FROM shadow_disagreement"
    ).to_pylist()
    assert len(disagreement) == 1 and disagreement[0]["champion_version"] == 1
