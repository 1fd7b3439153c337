"""The retraining job on a real simulated world, real Feast and a real MLflow store (SQLite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from tasks.core.settings import get_settings, reset_settings
from tasks.data.sim_population import WorldSpec
from tasks.training.mlflow_store import CHAMPION
from tasks.training.promotions import promotion_history
from tasks.training.registry import current_alias, list_versions
from tasks.training.retrain import retrain

from .conftest import RETRAIN_WORLD_DAYS, SMALL_WORLD_GATES, WORLD_START, make_world

pytestmark = pytest.mark.integration

DAYS = RETRAIN_WORLD_DAYS
AS_OF = WORLD_START + timedelta(days=DAYS - 1)


def test_refused_candidate_stays_a_run_never_a_version(settings_for) -> None:
    settings = settings_for(CHURN_GATE_MIN_AUC="0.99")  # a floor no model here can reach
    result = retrain(settings, AS_OF, "test: unreachable floor")
    assert result.decision.verdict == "refuse"
    assert [g.name for g in result.decision.failed][:1] == ["min_auc"]
    assert result.version is None and not result.promoted
    assert list_versions(settings) == []
    assert current_alias(settings, CHAMPION) is None
    assert promotion_history(settings) == []
    # Nothing compiled for a refused model (other tests' models share the world's cache).
    assert list(settings.compiled_models_dir.glob(f"{settings.model_name}-*")) == []
    import mlflow

    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(result.run_id)
    assert run.data.tags["decision"] == "failed" and run.data.tags["gate.min_auc"] == "failed"
    assert run.data.metrics["roc_auc"] == pytest.approx(result.challenger.metrics["roc_auc"])


def test_first_model_becomes_champion_and_an_equal_one_is_refused(settings_for) -> None:
    settings = settings_for(**SMALL_WORLD_GATES)
    first = retrain(settings, AS_OF, "test: first")
    assert first.decision.passed and first.version == 1 and first.promoted
    assert current_alias(settings, CHAMPION).version == 1
    # Compiled for nightly scoring as it was registered: the first night finds it ready.
    assert "compile for scoring" in first.timings
    assert len(list(settings.compiled_models_dir.glob(f"{settings.model_name}-v1-*.bin"))) == 1
    assert first.best_auc is not None and first.best_auc > first.challenger.metrics["roc_auc"] > 0.6

    # Same data, same seed: the same model, so it cannot beat the champion by the margin.
    second = retrain(settings, AS_OF, "test: again")
    assert second.challenger.metrics == first.challenger.metrics
    assert second.champion_version == 1 and second.champion_metrics["roc_auc"] == pytest.approx(
        first.challenger.metrics["roc_auc"]
    )
    assert second.decision.verdict == "keep_champion"
    assert [g.name for g in second.decision.failed] == ["beats_champion_auc"]
    assert second.version is None
    assert [v.version for v in list_versions(settings)] == [1]
    moves = [(p.action, p.alias, p.to_version) for p in promotion_history(settings)]
    assert moves[0] == ("register", "challenger", 1) and ("promote", "champion", 1) in moves

    # The CLI shows it, and refuses a rollback with nothing to roll back to.
    env = {**os.environ, "COLUMNS": "200"}
    listed = subprocess.run(
        [sys.executable, "-m", "flows", "model", "list"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "champion" in listed.stdout
    rollback = subprocess.run(
        [sys.executable, "-m", "flows", "model", "rollback", "--reason", "test"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert rollback.returncode == 1 and "error:" in rollback.stderr
    assert current_alias(settings, CHAMPION).version == 1


def test_a_model_trained_on_degraded_labels_is_refused_and_logged(
    settings_for, monkeypatch
) -> None:
    import numpy as np
    import pyarrow as pa

    import tasks.training.retrain as retrain_module
    from tasks.features.frames import LABEL

    settings = settings_for(**SMALL_WORLD_GATES)
    first = retrain(settings, AS_OF, "test: baseline champion")
    assert first.promoted

    real_frame = retrain_module.build_training_frame

    def degraded(*args, **kwargs):
        # Scramble the training labels (not the holdout's): the model learns noise.
        frame = real_frame(*args, **kwargs)
        days = frame.column("snapshot_date").to_pylist()
        newest = sorted(set(days))[-settings.holdout_snapshots :]
        labels = frame.column(LABEL).to_numpy().copy()
        train_rows = np.array([d not in newest for d in days])
        rng = np.random.default_rng(0)
        labels[train_rows] = rng.permutation(labels[train_rows])
        return frame.set_column(frame.column_names.index(LABEL), LABEL, pa.array(labels, pa.int8()))

    monkeypatch.setattr(retrain_module, "build_training_frame", degraded)
    worse = retrain(settings, AS_OF, "test: degraded labels")
    assert worse.challenger.metrics["roc_auc"] < first.challenger.metrics["roc_auc"] - 0.02
    assert not worse.decision.passed and worse.version is None
    assert "beats_champion_auc" in [g.name for g in worse.decision.failed]
    assert current_alias(settings, CHAMPION).version == 1
    import mlflow

    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(worse.run_id)
    assert run.data.tags["gate.beats_champion_auc"] == "failed"
    artifacts = {
        a.path
        for a in mlflow.MlflowClient(settings.mlflow_tracking_uri).list_artifacts(worse.run_id)
    }
    assert {"model_card.md", "plots", "gates.json", "fairness_by_group.csv"} <= artifacts


def test_after_concept_drift_a_new_model_beats_the_stale_champion_and_rollback_restores_it(
    tmp_path_factory, monkeypatch
) -> None:
    from tasks.training.registry import rollback

    # support_decline from day 200: support tickets start to weigh 2.5x in the hazard.
    home = tmp_path_factory.mktemp("drift_world")
    spec = WorldSpec(
        subscribers=5000,
        days=300,
        start=WORLD_START,
        seed=7,
        scenario="support_decline",
        scenario_start=WORLD_START + timedelta(days=200),
    )
    make_world(home, spec)
    monkeypatch.setenv("CHURN_HOME", str(home))
    monkeypatch.setenv("CHURN_MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    for name, value in SMALL_WORLD_GATES.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    settings = get_settings()

    before = retrain(settings, WORLD_START + timedelta(days=209), "test: before the drift")
    assert before.promoted and before.version == 1
    after = retrain(settings, WORLD_START + timedelta(days=299), "test: after the drift")
    # Measured on the same post-drift holdout, the stale champion has fallen behind.
    assert after.champion_version == 1
    assert (
        after.challenger.metrics["roc_auc"]
        > after.champion_metrics["roc_auc"] + settings.gate_auc_margin
    )
    assert after.promoted and after.version == 2
    assert current_alias(settings, CHAMPION).version == 2

    moved = rollback(settings, by="on-call", reason="test: roll back")
    assert (moved.from_version, moved.to_version) == (2, 1)
    assert current_alias(settings, CHAMPION).version == 1
    champion_moves = [
        (p.action, p.from_version, p.to_version)
        for p in promotion_history(settings)
        if p.alias == CHAMPION
    ]
    assert champion_moves == [("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1)]
    reset_settings()


def _paused_run_for(version: int, api_env: dict[str, str], timeout_s: float = 240) -> str:
    """Wait until a retrain run pauses for ``version``; its id (asked of the real server)."""
    import time

    script = (
        "import sys\n"
        "from prefect.client.orchestration import get_client\n"
        "from tasks.training.approval import pause_key\n"
        "with get_client(sync_client=True) as c:\n"
        "    runs = c.read_flow_runs()\n"
        f"key = pause_key({version})\n"
        "ids = [str(r.id) for r in runs if r.state and r.state.is_paused()"
        " and r.state.state_details.pause_key == key]\n"
        "print(ids[0] if ids else '')\n"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env={**os.environ, **api_env},
            check=True,
        ).stdout.strip()
        if found:
            return found
        time.sleep(2)
    raise AssertionError(f"no retrain run paused for version {version} within {timeout_s} s")


def test_approval_mode_pauses_until_a_person_approves_from_the_cli(
    settings_for, prefect_server
) -> None:
    """`churn train` pauses on the real Prefect server; `churn model approve` resumes it."""
    settings = settings_for(
        **SMALL_WORLD_GATES,
        CHURN_PROMOTION_MODE="approval",
        CHURN_APPROVAL_TIMEOUT_HOURS="0.1",
    )
    env = {**os.environ, **prefect_server.env(), "COLUMNS": "200"}
    churn = [sys.executable, "-m", "flows"]
    training = subprocess.Popen(
        [*churn, "train", "--as-of", AS_OF.isoformat(), "--reason", "test: approval"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_id = _paused_run_for(1, prefect_server.env())
        # Waiting: registered as challenger, nothing promoted yet.
        assert current_alias(settings, CHAMPION) is None
        assert current_alias(settings, "challenger").version == 1
        approved = subprocess.run(
            [*churn, "model", "approve", "1", "--by", "alice", "--comment", "fair and better"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert approved.returncode == 0, approved.stderr
        assert run_id in approved.stdout
        out, err = training.communicate(timeout=180)
    finally:
        if training.poll() is None:
            training.kill()
    assert training.returncode == 0, err
    assert "approved and promoted to champion by alice: fair and better" in out
    assert current_alias(settings, CHAMPION).version == 1
    assert current_alias(settings, "challenger") is None
    moves = promotion_history(settings)
    assert [(m.alias, m.action, m.to_version, m.by) for m in moves] == [
        ("challenger", "register", 1, "register_version"),
        ("champion", "approve", 1, "alice"),
        ("challenger", "approve", None, "alice"),
    ]
    assert moves[1].reason == "approved by alice: fair and better"
    tags = list_versions(settings)[0].tags
    assert tags["approval.by"] == "alice" and tags["approval.decision"] == "approved"


def test_approval_rejected_or_never_given_leaves_the_champion_alone(
    settings_for, prefect_server
) -> None:
    from flows.retrain import ApprovalTimeout, retrain_flow
    from tasks.training.approval import apply_approval
    from tasks.training.mlflow_store import RegistryError

    settings = settings_for(**SMALL_WORLD_GATES)
    first = retrain(settings, AS_OF, "test: first champion")
    assert first.promoted
    settings = settings_for(
        **SMALL_WORLD_GATES,
        CHURN_PROMOTION_MODE="approval",
        CHURN_APPROVAL_TIMEOUT_HOURS="0.0006",  # about 2 s
        CHURN_GATE_AUC_MARGIN="-1",  # let an equal model through to the person
    )
    # Nobody answers: the run fails saying so, the candidate stays challenger, champion untouched.
    with (
        prefect_server.in_process(),
        pytest.raises(ApprovalTimeout, match="no decision on version 2 within 0.0006 h"),
    ):
        retrain_flow(as_of=AS_OF, reason="test: unanswered")
    assert current_alias(settings, CHAMPION).version == 1
    assert current_alias(settings, "challenger").version == 2
    # Rejected later from the terminal (no waiting run): the challenger alias comes off.
    outcome = apply_approval(settings, 2, approve=False, approver="bob", comment="too risky")
    assert not outcome.approved and outcome.move.action == "reject"
    assert current_alias(settings, "challenger") is None
    assert current_alias(settings, CHAMPION).version == 1
    with pytest.raises(RegistryError, match="not waiting for approval"):
        apply_approval(settings, 2, approve=True, approver="bob", comment="changed my mind")
    with pytest.raises(RegistryError, match="approver"):
        apply_approval(settings, 1, approve=True, approver=" ", comment="")
    assert [m.action for m in promotion_history(settings)] == [
        "register",
        "promote",
        "promote",
        "register",
        "reject",
    ]


def _gate_alerts(settings, before: set[str] = frozenset()) -> list[dict]:
    """The gate alerts the outbox gained since ``before`` (its file names then): no Slack
    destination is configured in tests, and the world (and its outbox) is shared by the module."""
    files = [p for p in (settings.alerts_dir / "outbox").glob("*.json") if p.name not in before]
    alerts = [json.loads(p.read_text())["alert"] for p in files]
    return [a for a in alerts if a["kind"] == "gate"]


def _outbox(settings) -> set[str]:
    return {p.name for p in (settings.alerts_dir / "outbox").glob("*.json")}


def test_a_routine_keep_sends_no_alert_and_a_weak_candidate_does(
    settings_for, prefect_server
) -> None:
    """A scheduled candidate that is merely no better than the champion is the usual outcome of a
    stable week: no message. One that fails a floor says something about the data: an alert."""
    from flows.retrain import retrain_flow

    settings = settings_for(**SMALL_WORLD_GATES)
    assert retrain(settings, AS_OF, "test: first champion").promoted
    before = _outbox(settings)
    with prefect_server.in_process():
        kept = retrain_flow(as_of=AS_OF, reason="weekly schedule")
    assert kept.decision.routine_keep
    assert _gate_alerts(settings, before) == []

    settings = settings_for(**{**SMALL_WORLD_GATES, "CHURN_GATE_MIN_AUC": "0.99"})
    with prefect_server.in_process():
        weak = retrain_flow(as_of=AS_OF, reason="weekly schedule")
    assert weak.decision.verdict == "keep_champion" and not weak.decision.routine_keep
    [alert] = _gate_alerts(settings, before)
    assert alert["title"] == "Retraining: candidate refused, champion kept"
    assert "✗ min_auc" in [field[0] for field in alert["fields"]], alert["fields"]
