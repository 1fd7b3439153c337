"""Monitoring on simulated worlds with real Prefect flow runs, a real MLflow store and the real
slack-sdk webhook client posting to a local receiver: a price shock opens a drift incident the
night it starts, names the shifted features, asks for retraining once, the retraining runs, and
Slack gets one message for it all."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tasks.core.settings import get_settings, reset_settings
from tasks.data.sim_population import WorldSpec

from .conftest import SMALL_WORLD_GATES, WORLD_START, make_world
from .test_slack import Receiver

pytestmark = pytest.mark.integration

DAYS = 222
TRAIN_DAY = WORLD_START + timedelta(days=212)  # the first day with 210 days of history behind it
SHOCK = WORLD_START + timedelta(days=216)
# A 2,500-subscriber world: the small-world gates, a little looser still.
GATES = {
    **SMALL_WORLD_GATES,
    "CHURN_GATE_MIN_AUC": "0.55",
    "CHURN_GATE_MAX_CALIBRATION_ERROR": "0.2",
}


@pytest.fixture(scope="module")
def shock_home(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("price_shock_world")
    make_world(
        home,
        WorldSpec(
            subscribers=2500,
            days=DAYS,
            start=WORLD_START,
            seed=5,
            scenario="price_shock",
            scenario_start=SHOCK,
        ),
    )
    return home


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with Receiver() as running:
        yield running


def test_a_price_shock_is_alerted_the_night_it_starts_and_triggers_one_retraining(
    shock_home, prefect_server, receiver, monkeypatch
) -> None:
    from flows.monitor import monitor_flow
    from flows.score import score_nightly_flow
    from tasks.monitoring.incident import read_incidents
    from tasks.monitoring.monitor import read_triggers
    from tasks.training.registry import list_versions
    from tasks.training.retrain import retrain

    for name, value in {
        "CHURN_HOME": str(shock_home),
        "CHURN_MLFLOW_TRACKING_URI": f"sqlite:///{shock_home}/mlflow-test.db",
        "CHURN_SLACK_WEBHOOK_URL": f"{receiver.base_url}/services/T000/B000/secret-part",
        "CHURN_PREFECT_UI_URL": "http://127.0.0.1:4200",
        **GATES,
    }.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    settings = get_settings()
    first = retrain(settings, TRAIN_DAY, "test: champion before the shock")
    assert first.promoted

    nights = {}
    with prefect_server.in_process():
        for night in (SHOCK - timedelta(days=1), SHOCK, SHOCK + timedelta(days=1)):
            score_nightly_flow(score_date=night)
            nights[night] = monitor_flow(score_date=night, retrain_on_drift=True)

    before, shock, after = nights.values()
    assert before.severity.level in ("none", "warn")
    # The night of the shock: retraining asked for, naming the charge features.
    assert shock.severity.level == "retrain"
    assert {"charge_change_90d", "plan_changes_90d"} <= set(shock.severity.features)
    assert shock.retrain_requested and shock.report.html.is_file()
    # The next night still drifts, but the cooldown holds: no second retraining.
    assert after.severity.level == "retrain" and not after.retrain_requested
    assert "already requested" in after.cooldown_note
    assert [t["score_date"] for t in read_triggers(settings)] == [SHOCK.isoformat()]

    # The drift retraining ran, with its reason, and the gates judged it (a run either way).
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    reasons = [r.data.tags.get("reason", "") for r in runs]
    assert any(
        reason.startswith(f"drift on {SHOCK} (retrain): charge_change_90d") for reason in reasons
    ), reasons
    assert len(list_versions(settings)) >= 1

    # Slack got one drift incident, not a message a night: the onset, with the features and
    # their PSI/KS, the drift retraining's outcome (no gate alert of its own) and the follow-up.
    assert len(receiver.requests) == 1, [r.body["text"][:80] for r in receiver.requests]
    onset = receiver.requests[0].body
    text = onset["text"]
    assert f"drift incident of {SHOCK} (retrain)" in text
    assert "charge_change_90d" in text and "PSI" in text
    assert f"Drift retraining as of {SHOCK}:" in text and "training snapshots postdate" in text
    assert f"drift follow-up of {SHOCK}" in text
    blocks = json.dumps(onset["blocks"])
    assert "charge_change_90d" in blocks and "http://127.0.0.1:4200/runs/flow-run/" in blocks
    assert "subscriber_id" not in blocks and "secret-part" not in json.dumps(onset)
    [incident] = read_incidents(settings)
    assert incident.onset == SHOCK and incident.is_open and incident.last_night == after.score_date
    assert [(m.role, m.status) for m in incident.messages] == [("onset", "sent")]
