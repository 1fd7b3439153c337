"""The MLflow registry on a real SQLite store: candidates, versions, aliases, history, rollback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from tasks.core.errors import ChurnError
from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.training import candidates, mlflow_store, promotions, registry
from tasks.training.mlflow_store import (
    CHALLENGER,
    CHAMPION,
    ModelLoadError,
    ModelNotFound,
    RegistryError,
)

pytestmark = pytest.mark.integration

SPEC = {
    "features": ["tenure_days", "data_gb_30d", "plan"],
    "categorical": {"plan": ["a", "b", "c"]},
}
LINEAGE = {
    "training_window_start": "2026-01-01",
    "data_fingerprint": "sha256:abc",
    "reason": "test",
}
PASSED_GATES = {
    "min_auc": {"name": "min_auc", "passed": True, "value": 0.81, "threshold": 0.7, "detail": "ok"},
    "fairness": True,
}


@pytest.fixture(scope="module")
def store_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite store for the module (migrations take seconds); tests share it."""
    home = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHURN_HOME", str(home))
        reset_settings()
        mlflow_store.init_store(get_settings())
    reset_settings()
    return home


@pytest.fixture
def settings(
    store_home: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """The shared store, with a registered-model name of this test's own (versions from 1)."""
    monkeypatch.setenv("CHURN_HOME", str(store_home))
    monkeypatch.setenv("CHURN_MODEL_NAME", f"churn_{request.node.name}"[:100])
    reset_settings()
    yield get_settings()
    reset_settings()


@pytest.fixture(scope="module")
def model() -> tuple[lgb.Booster, pd.DataFrame]:
    """A tiny deterministic booster on random data with a pandas categorical, and its inputs."""
    rng = np.random.default_rng(7)
    n = 400
    frame = pd.DataFrame(
        {
            "tenure_days": rng.integers(1, 900, n),
            "data_gb_30d": rng.gamma(2.0, 3.0, n),
            "plan": pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["a", "b", "c"]),
        }
    )
    label = (rng.random(n) < 0.2 + 0.3 * (frame["plan"] == "c")).astype(int)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True}
    booster = lgb.train({**params, "seed": 1}, lgb.Dataset(frame, label), num_boost_round=8)
    return booster, frame


def log(settings: Settings, model, *, gates=PASSED_GATES, name: str = "candidate", **kw) -> str:
    booster, frame = model
    return candidates.log_candidate(
        settings,
        booster=booster,
        model_spec=SPEC,
        input_example=frame.head(5),
        params={"learning_rate": 0.05, "num_leaves": 31},
        metrics={"roc_auc": 0.81, "pr_auc": 0.42, "calibration_error": 0.02, "lift": None},
        gate_results=gates,
        tags={"as_of": "2026-05-01"},
        artifacts=kw.get("artifacts"),
        run_name=name,
    )


def register(settings: Settings, model, name: str = "candidate") -> int:
    return registry.register_version(settings, log(settings, model, name=name), LINEAGE)


def aliases(settings: Settings) -> dict[str, int | None]:
    return {
        alias: (info.version if (info := registry.current_alias(settings, alias)) else None)
        for alias in (CHAMPION, CHALLENGER)
    }


def moves(settings: Settings) -> list[tuple[str, int | None, int | None, str]]:
    """This test's model's history as (alias, from, to, action)."""
    return [
        (m.alias, m.from_version, m.to_version, m.action)
        for m in promotions.promotion_history(settings)
        if m.model == settings.model_name
    ]


def test_init_store_once_even_when_raced(churn_home: Settings) -> None:
    # Two first-time initialisations released at the same instant: the lock lets one migrate.
    barrier = threading.Barrier(2)

    def init() -> str:
        barrier.wait()
        return mlflow_store.init_store(churn_home)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [future.result() for future in [pool.submit(init) for _ in range(2)]]
    uri = f"sqlite:///{churn_home.home / 'mlflow' / 'mlflow.db'}"
    assert results == [uri, uri]
    assert mlflow_store.init_store(churn_home) == uri  # and again: idempotent
    assert (churn_home.mlflow_dir / "mlflow.db").is_file()
    experiment = mlflow_store.connect(churn_home).get_experiment_by_name(mlflow_store.EXPERIMENT)
    assert experiment.artifact_location == (churn_home.mlflow_dir / "artifacts").as_uri()


def test_unusable_store_is_a_clear_error(
    churn_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, " * 64)
    monkeypatch.setenv("CHURN_MLFLOW_TRACKING_URI", f"sqlite:///{junk}")
    reset_settings()
    settings = get_settings()
    with pytest.raises(RegistryError, match="unreachable or unusable.*not a database"):
        mlflow_store.init_store(settings)
    with pytest.raises(RegistryError):
        registry.current_alias(settings, CHAMPION)
    assert isinstance(RegistryError("x"), ChurnError)


def test_candidate_run_holds_metrics_gates_model_and_artifacts(
    settings: Settings, model, tmp_path: Path
) -> None:
    card = tmp_path / "card.md"
    card.write_text("# Model card\n")
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "roc.svg").write_text("<svg/>")
    run_id = log(settings, model, artifacts={"model_card.md": card, "plots": plots})

    client = mlflow_store.connect(settings)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == mlflow_store.EXPERIMENT
    assert run.data.params == {"learning_rate": "0.05", "num_leaves": "31"}
    assert run.data.metrics == {"roc_auc": 0.81, "pr_auc": 0.42, "calibration_error": 0.02}
    tags = run.data.tags
    assert tags["as_of"] == "2026-05-01"
    assert tags["gate.min_auc"] == "passed" and tags["gate.fairness"] == "passed"
    assert tags["gate.min_auc.threshold"] == "0.7" and tags["gate.min_auc.detail"] == "ok"
    assert tags["decision"] == "passed" and tags["decision.failed_gates"] == "none"

    listed = {a.path for a in client.list_artifacts(run_id)}
    assert {"model_spec.json", "model_card.md", "plots"} <= listed
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/roc.svg"]
    logged = client.get_logged_model(tags[mlflow_store.MODEL_ID_TAG])
    assert logged.source_run_id == run_id and logged.name == "model"
    model_dir = Path(logged.artifact_location.removeprefix("file://"))
    assert model_dir.is_relative_to(settings.mlflow_dir / "artifacts")
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert f"lightgbm=={lgb.__version__}" in requirements
    assert f"pandas=={pd.__version__}" in requirements
    assert all("==" in line for line in requirements)  # pinned, nothing inferred
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "signature:" in mlmodel and '"name": "plan"' in mlmodel
    assert (model_dir / "input_example.json").is_file()


def test_refused_candidate_stays_a_run_never_a_version(settings: Settings, model) -> None:
    gates = {**PASSED_GATES, "beats_champion_auc": {"passed": False, "value": 0.7}}
    run_id = log(settings, model, gates=gates, name="degraded")
    tags = mlflow_store.connect(settings).get_run(run_id).data.tags
    assert tags["decision"] == "failed" and tags["decision.failed_gates"] == "beats_champion_auc"
    assert tags["gate.beats_champion_auc"] == "failed"
    with pytest.raises(RegistryError, match="decision 'failed'.*beats_champion_auc"):
        registry.register_version(settings, run_id, LINEAGE)
    assert registry.list_versions(settings) == []
    assert moves(settings) == []


def test_register_promote_rollback_story(settings: Settings, model) -> None:
    # First candidate: version 1, challenger, lineage and gate results on the version.
    first = register(settings, model, "first")
    assert first == 1
    assert aliases(settings) == {CHAMPION: None, CHALLENGER: 1}
    info = registry.current_alias(settings, CHALLENGER)
    assert info is not None and info.aliases == (CHALLENGER,)
    assert LINEAGE.items() <= info.tags.items()
    assert info.tags["gate.min_auc"] == "passed" and info.tags["decision"] == "passed"

    promoted = registry.promote(settings, 1, by="alice", reason="first champion")
    assert (promoted.alias, promoted.from_version, promoted.to_version) == (CHAMPION, None, 1)
    assert promoted.by == "alice" and promoted.run_id == info.run_id
    assert aliases(settings) == {CHAMPION: 1, CHALLENGER: None}

    # Second candidate beats it.
    assert register(settings, model, "second") == 2
    registry.promote(settings, 2, by="retrain", reason="beats champion")
    versions = registry.list_versions(settings)
    assert [(v.version, v.aliases) for v in versions] == [(1, ()), (2, (CHAMPION,))]
    assert versions[1].metrics["roc_auc"] == 0.81
    assert versions[1].gates == {"min_auc": "passed", "fairness": "passed"}
    assert versions[1].decision == "passed" and versions[1].created.tzinfo is not None

    # One command restores the previous champion; there is nothing before the first.
    back = registry.rollback(settings, by="bob", reason="complaints")
    assert (back.from_version, back.to_version, back.action) == (2, 1, "rollback")
    assert aliases(settings) == {CHAMPION: 1, CHALLENGER: None}
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(settings, by="bob", reason="again")

    assert moves(settings) == [
        (CHALLENGER, None, 1, "register"),
        (CHAMPION, None, 1, "promote"),
        (CHALLENGER, 1, None, "promote"),
        (CHALLENGER, None, 2, "register"),
        (CHAMPION, 1, 2, "promote"),
        (CHALLENGER, 2, None, "promote"),
        (CHAMPION, 2, 1, "rollback"),
    ]
    history = promotions.promotion_history(settings)
    assert all(m.at.utcoffset() is not None for m in history)
    assert [m.at for m in history] == sorted(m.at for m in history)
    lines = promotions.history_path(settings).read_text().splitlines()
    assert all(json.loads(line)["model"] for line in lines)  # one JSON object per line


def test_failed_alias_moves_leave_alias_and_history_unchanged(
    settings: Settings, model, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(settings, model)
    registry.promote(settings, 1, by="alice", reason="first")
    register(settings, model)
    before = (aliases(settings), promotions.history_path(settings).read_bytes())

    def unchanged() -> bool:
        return (aliases(settings), promotions.history_path(settings).read_bytes()) == before

    with pytest.raises(ModelNotFound, match="no version 99"):
        registry.promote(settings, 99, by="alice", reason="typo")
    assert unchanged()
    with pytest.raises(RegistryError, match="already champion"):
        registry.promote(settings, 1, by="alice", reason="again")
    assert unchanged()
    with pytest.raises(RegistryError, match="reason"):
        registry.promote(settings, 2, by="alice", reason=" ")
    assert unchanged()
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(settings, by="alice", reason="nothing before")
    assert unchanged()

    # The history cannot be written: the alias moves are undone.
    def disk_full(*args, **kwargs) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry, "append_history", disk_full)
    with pytest.raises(RegistryError, match="nothing changed.*No space left"):
        registry.promote(settings, 2, by="alice", reason="promote challenger")
    assert unchanged()
    assert aliases(settings) == {CHAMPION: 1, CHALLENGER: 2}


def test_failed_registration_leaves_nothing_at_an_alias(
    settings: Settings, model, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(settings, model)
    run_id = log(settings, model)

    def broken_disk(*args, **kwargs) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(registry, "append_history", broken_disk)
    with pytest.raises(RegistryError, match="nothing changed"):
        registry.register_version(settings, run_id, LINEAGE)
    assert aliases(settings) == {CHAMPION: None, CHALLENGER: 1}
    assert [v.version for v in registry.list_versions(settings)] == [1]  # half version deleted
    assert moves(settings) == [(CHALLENGER, None, 1, "register")]


def test_load_model_round_trips_predictions(settings: Settings, model) -> None:
    booster, frame = model
    version = register(settings, model)
    registry.promote(settings, version, by="alice", reason="load test")
    for ref in (CHAMPION, version, str(version)):
        loaded, spec, got = registry.load_model(settings, ref)
        assert got == version and spec == SPEC
        assert np.array_equal(loaded.predict(frame), booster.predict(frame))
    with pytest.raises(ModelNotFound, match="alias 'challenger'"):
        registry.load_model(settings, CHALLENGER)
    with pytest.raises(ModelNotFound, match="no version 7"):
        registry.load_model(settings, 7)


def test_model_that_fails_to_load_is_a_clear_error(settings: Settings, model) -> None:
    version = register(settings, model)
    client = mlflow_store.connect(settings)
    run_id = client.get_model_version(settings.model_name, str(version)).run_id
    logged = client.get_logged_model(client.get_run(run_id).data.tags[mlflow_store.MODEL_ID_TAG])
    model_file = Path(logged.artifact_location.removeprefix("file://"))
    (model_file / "model.lgb").write_text("tree\nthis is not a LightGBM model\n")
    with pytest.raises(ModelLoadError, match=f"version {version} .* failed to load"):
        registry.load_model(settings, CHALLENGER)


def test_bad_candidate_input_fails_before_any_run(settings: Settings, model) -> None:
    client = mlflow_store.connect(settings)
    experiment = client.get_experiment_by_name(mlflow_store.EXPERIMENT).experiment_id
    runs_before = len(client.search_runs([experiment]))
    booster, frame = model
    with pytest.raises(ValueError, match="no gate results"):
        log(settings, model, gates={})
    with pytest.raises(ValueError, match="gate 'min_auc'"):
        log(settings, model, gates={"min_auc": 0.8})
    with pytest.raises(ValueError, match="does not exist"):
        log(settings, model, artifacts={"card.md": Path("/nonexistent/card.md")})
    with pytest.raises(ValueError, match="JSON"):
        candidates.log_candidate(
            settings,
            booster=booster,
            model_spec={"as_of": object()},
            input_example=frame.head(2),
            params={},
            metrics={},
            gate_results=PASSED_GATES,
            tags={},
            artifacts=None,
            run_name="bad spec",
        )
    with pytest.raises(ValueError, match="set by log_candidate"):
        candidates.log_candidate(
            settings,
            booster=booster,
            model_spec=SPEC,
            input_example=frame.head(2),
            params={},
            metrics={},
            gate_results=PASSED_GATES,
            tags={"decision": "passed"},
            artifacts=None,
            run_name="sneaky",
        )
    assert len(client.search_runs([experiment])) == runs_before
