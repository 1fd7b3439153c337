"""Adding a feature, end to end (README "Add a feature"): a model on ``churn_model_v3`` trains and
scores, and a champion trained on ``churn_model_v2`` still scores after v3 exists.

The shared world's feature tables were built from the SQL with ``dropped_call_rate_30d`` in
``subscriber_usage_30d``; each model has its own MLflow store, as two deployments would.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.scoring.nightly import ScoreSummary, run_scoring
from tasks.training.mlflow_store import CHAMPION
from tasks.training.registry import list_versions, load_model

from .conftest import RETRAIN_WORLD_DAYS, WORLD_START, champion_environment

pytestmark = pytest.mark.integration

DAY = WORLD_START + timedelta(days=RETRAIN_WORLD_DAYS - 1)
V2, V3 = "churn_model_v2", "churn_model_v3"
NEW = "dropped_call_rate_30d"


@pytest.fixture
def world_home(retrain_world_home: Path) -> Iterator[Path]:
    """The shared world; the prediction log and high-risk files this test writes go afterwards."""
    yield retrain_world_home
    for folder in ("predictions", "retention"):
        shutil.rmtree(retrain_world_home / folder, ignore_errors=True)


def scored(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, ScoreSummary, pa.Table]:
    """One night's scoring of ``DAY`` under ``env``: settings, summary and the champion's log."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    settings = get_settings()
    summary = run_scoring(settings, DAY)
    log = pq.read_table(
        settings.predictions_dir
        / f"score_date={DAY}"
        / f"{settings.model_name}-v1-champion.parquet"
    )
    return settings, summary, log


def logged_features(log: pa.Table) -> list[str]:
    return [field.name for field in log.schema.field("features").type]


def test_a_model_on_v3_trains_and_scores_and_a_v2_champion_still_scores(
    world_home: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    v2 = champion_environment(
        world_home, tmp_path_factory.mktemp("v2_mlflow"), "add_feature_v2", DAY, "test: on v2"
    ) | {"CHURN_FEATURE_SERVICE": V2}
    with monkeypatch.context() as patch:
        patch.setenv("CHURN_FEATURE_SERVICE", V3)  # training reads the configured service
        v3 = champion_environment(
            world_home, tmp_path_factory.mktemp("v3_mlflow"), "add_feature_v3", DAY, "test: on v3"
        ) | {"CHURN_FEATURE_SERVICE": V3}

    settings, summary, log = scored(v3, monkeypatch)
    _, spec, _ = load_model(settings, CHAMPION)
    tags = list_versions(settings)[0].tags
    assert NEW in spec["features"] and len(spec["features"]) == 32
    assert (tags["feature_service"], tags["feature_service_version"]) == (V3, "3")
    assert summary.scored == summary.subscribers > 0, summary.not_scored
    assert pc.unique(log.column("feature_service")).to_pylist() == [V3]
    assert NEW in logged_features(log)
    rates = pc.struct_field(log.column("features"), NEW)
    assert rates.null_count < len(rates) / 2  # the value the model read, for most subscribers

    # The v2 champion, after v3 exists and the table it reads has gained a column: its own 31
    # columns, scored as before.
    settings, summary, log = scored(v2, monkeypatch)
    _, spec, _ = load_model(settings, CHAMPION)
    assert NEW not in spec["features"] and len(spec["features"]) == 31
    assert summary.scored == summary.subscribers > 0, summary.not_scored
    assert pc.unique(log.column("feature_service")).to_pylist() == [V2]
    assert NEW not in logged_features(log) and len(logged_features(log)) == 31
