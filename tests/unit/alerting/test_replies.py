"""Replies: a drift incident's update and resolution answer its onset (``reply_to``).

With a bot token a reply is posted in the onset's thread (the ``ts`` recorded in ``sent.jsonl``);
an onset still waiting in the outbox is delivered first so the two arrive in order; by webhook
(no ts) a reply stands on its own and names the incident. Recording transports here; the real
slack-sdk clients are in ``tests/integration/test_incident_slack.py``.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tasks.alerting import delivery, slack
from tasks.alerting.alerts import Alert
from tasks.alerting.delivery import flush_outbox, send_alert
from tasks.alerting.incident_alerts import onset_alert, resolution_alert, update_alert
from tasks.core.settings import Settings
from tasks.monitoring.incident import incident_alert_id

ONSET = date(2026, 8, 6)
SERVER_ERROR = slack.Attempt(ok=False, retryable=True, reason="HTTP 503: unavailable")


class Recording:
    """A transport that answers from a script, then with success (and a ts, as a bot)."""

    def __init__(self, name: str, *outcomes: slack.Attempt):
        self.name = name
        self.outcomes = list(outcomes)
        self.posts: list[tuple[str, str | None]] = []

    def post(
        self, text: str, blocks: list[dict[str, Any]], thread_ts: str | None = None
    ) -> slack.Attempt:
        self.posts.append((text, thread_ts))
        if self.outcomes:
            return self.outcomes.pop(0)
        ts = f"1700000000.{len(self.posts):06d}" if self.name == "bot" else None
        return slack.Attempt(ok=True, ts=ts)


def use(monkeypatch: pytest.MonkeyPatch, transport: Recording) -> Recording:
    monkeypatch.setattr(delivery, "open_transport", lambda settings, api_url: transport)
    return transport


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        slack_webhook_url=None,
        slack_bot_token=None,
        slack_channel=None,
        alert_max_attempts=1,
        alert_backoff_seconds=0.0,
    )


def onset() -> Alert:
    return onset_alert(
        "telecom_churn_model",
        ONSET,
        "retrain",
        "2 features alert: charge_change_90d, plan_changes_90d",
        [("charge_change_90d", "alert: PSI 0.612, KS 0.301")],
        [("Retraining", "requested as of 2026-08-06")],
        model_version=1,
        quiet_nights=3,
    )


def update() -> Alert:
    return update_alert(
        "telecom_churn_model",
        ONSET,
        date(2026, 9, 26),
        "warn",
        "follow-up retraining as of 2026-09-26: keep champion: fairness failed",
        [],
    )


def sent_lines(settings: Settings) -> list[dict[str, Any]]:
    path = settings.alerts_dir / "sent.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_incident_messages_have_fixed_ids_and_name_the_incident() -> None:
    resolution = resolution_alert("telecom_churn_model", ONSET, date(2026, 8, 20), "quiet", [])
    assert onset().alert_id == "drift-incident-2026-08-06-onset"
    assert (update().alert_id, resolution.alert_id) == (
        "drift-incident-2026-08-06-update",
        "drift-incident-2026-08-06-resolution",
    )
    assert update().reply_to == resolution.reply_to == onset().alert_id
    assert onset().reply_to is None
    for alert in (onset(), update(), resolution):
        assert alert.title.startswith("telecom_churn_model: drift incident of 2026-08-06")
    with pytest.raises(ValueError, match="role 'nightly'"):
        incident_alert_id(ONSET, "nightly")


def test_reply_to_round_trips_and_is_checked() -> None:
    assert Alert.from_dict(update().to_dict()) == update()
    with pytest.raises(ValueError, match="not an alert id"):
        Alert(kind="drift", severity="info", title="t", summary="s", reply_to="no spaces allowed")


def test_a_bot_reply_joins_the_thread_of_the_message_it_answers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = use(monkeypatch, Recording("bot"))
    first = send_alert(settings, onset())
    reply = send_alert(settings, update())
    assert (first.ts, reply.ts) == ("1700000000.000001", "1700000000.000002")
    assert [thread for _, thread in bot.posts] == [None, "1700000000.000001"]
    assert [(line.get("ts"), line.get("thread_ts")) for line in sent_lines(settings)] == [
        ("1700000000.000001", None),
        ("1700000000.000002", "1700000000.000001"),
    ]
    # A duplicate says which message it was, so its thread can still be found.
    assert send_alert(settings, onset()).ts == "1700000000.000001"


def test_an_onset_waiting_in_the_outbox_goes_first_and_the_reply_joins_its_thread(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = use(monkeypatch, Recording("bot", SERVER_ERROR))
    assert send_alert(settings, onset()).status == "queued"
    reply = send_alert(settings, update())
    assert reply.status == "sent"
    # The retry of the onset, then the reply in its thread: in order, in one thread.
    assert [thread for _, thread in bot.posts] == [None, None, "1700000000.000002"]
    assert [line["alert_id"] for line in sent_lines(settings)] == [
        onset().alert_id,
        update().alert_id,
    ]
    assert flush_outbox(settings) == [] and not list((settings.alerts_dir / "outbox").glob("*"))


def test_a_reply_whose_onset_cannot_be_delivered_stands_on_its_own(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = use(monkeypatch, Recording("bot", SERVER_ERROR, SERVER_ERROR))
    assert send_alert(settings, onset()).status == "queued"
    reply = send_alert(settings, update())
    assert reply.status == "sent" and bot.posts[-1][1] is None
    assert "drift incident of 2026-08-06" in bot.posts[-1][0]  # it names the incident
    [later] = flush_outbox(settings)
    assert later.alert_id == onset().alert_id and later.status == "sent"


def test_by_webhook_a_reply_is_a_message_of_its_own(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = use(monkeypatch, Recording("webhook"))
    send_alert(settings, onset())
    send_alert(settings, update())
    assert [thread for _, thread in hook.posts] == [None, None]
    assert all("ts" not in line for line in sent_lines(settings))
