"""A drift incident through the real slack-sdk clients, against the local receiver of
``test_slack.py``: with a bot token the update and resolution are replies in the onset's thread
(``thread_ts`` = the ts chat.postMessage returned for the onset); with a webhook they are
separate, short messages naming the incident; an onset Slack did not take is delivered before
its reply, which still joins its thread."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tasks.alerting.delivery import send_alert
from tasks.alerting.incident_alerts import send_due
from tasks.core.settings import Settings
from tasks.monitoring.incident import Night, read_incidents, record_night

from .test_slack import (
    WEBHOOK_PATH,
    Receiver,
    api_url,
    bot_settings,
    webhook_settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """The receiver of ``test_slack.py``, straight to 127.0.0.1 (no proxy)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with Receiver() as running:
        yield running


ONSET = date(2026, 8, 6)
ONSET_TS = "1754438400.000100"


def night(day: date, level: str, *, asks: bool = False) -> Night:
    return Night(
        day=day,
        level=level,
        reason=f"2 features alert: charge_change_90d, plan_changes_90d ({level})",
        features=(("charge_change_90d", "alert: PSI 0.612, KS 0.301"),) if level != "none" else (),
        model_version=1,
        retrain_requested=asks,
        retraining="requested as of the night" if asks else "none at this severity",
    )


def episode(settings: Settings, receiver: Receiver) -> None:
    """Alert, rise to retrain (the update), three quiet nights (the resolution): each night's
    messages sent as the monitor flow sends them."""
    send = partial(send_alert, settings, slack_api_url=api_url(receiver))
    nights = [night(ONSET, "alert"), night(ONSET + timedelta(1), "retrain", asks=True)]
    nights += [night(ONSET + timedelta(d), "none") for d in (2, 3, 4)]
    for tonight in nights:
        record_night(settings, tonight)
        send_due(settings, send)


def answer(ts: str) -> tuple[int, dict[str, str], str]:
    body = {"ok": True, "channel": "C0FAKE", "ts": ts}
    return 200, {"Content-Type": "application/json"}, json.dumps(body)


def test_with_a_bot_token_update_and_resolution_reply_in_the_onsets_thread(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = bot_settings(tmp_path, receiver)
    receiver.reply(answer(ONSET_TS))
    episode(settings, receiver)

    posts = [r.body for r in receiver.requests]
    assert [r.path for r in receiver.requests] == ["/api/chat.postMessage"] * 3
    onset, update, resolution = posts
    assert "thread_ts" not in onset
    assert update["thread_ts"] == resolution["thread_ts"] == ONSET_TS
    assert "drift incident of 2026-08-06 (alert)" in onset["text"]
    assert "drift rose to retrain" in update["text"]
    assert "below the warning thresholds for 3 nights" in resolution["text"]

    [incident] = read_incidents(settings)
    assert incident.onset_ts == ONSET_TS and not incident.is_open
    assert [(m.role, m.status) for m in incident.messages] == [
        ("onset", "sent"),
        ("update", "sent"),
        ("resolution", "sent"),
    ]
    sent = [
        json.loads(line) for line in (settings.alerts_dir / "sent.jsonl").read_text().splitlines()
    ]
    assert [line.get("thread_ts") for line in sent] == [None, ONSET_TS, ONSET_TS]
    assert not list((settings.alerts_dir / "outbox").glob("*.json"))


def test_with_a_webhook_they_are_separate_short_messages_naming_the_incident(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = webhook_settings(tmp_path, receiver)
    episode(settings, receiver)

    assert [r.path for r in receiver.requests] == [WEBHOOK_PATH] * 3
    onset, update, resolution = (r.body for r in receiver.requests)
    assert all("thread_ts" not in body for body in (onset, update, resolution))
    for body in (update, resolution):
        assert "drift incident of 2026-08-06" in body["text"]
        # Short: a headline and a few facts, not the onset's feature table again.
        assert len(body["text"]) < 600 and "charge_change_90d (" not in body["text"]
    assert "charge_change_90d" in onset["text"] and "charge_change_90d" not in resolution["text"]
    assert read_incidents(settings)[0].onset_ts is None  # a webhook returns no ts


def test_an_onset_slack_did_not_take_is_delivered_before_its_reply(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = bot_settings(tmp_path, receiver, alert_max_attempts=2)
    send = partial(send_alert, settings, slack_api_url=api_url(receiver))
    receiver.reply((503, {}, "unavailable"), (503, {}, "unavailable"))
    record_night(settings, night(ONSET, "alert"))
    [queued] = send_due(settings, send)
    assert queued.status == "queued"
    [incident] = read_incidents(settings)
    assert incident.messages[0].status == "queued" and incident.onset_ts is None

    # The next night rises: the update goes out; the queued onset is delivered first.
    receiver.reply(answer(ONSET_TS))
    record_night(settings, night(ONSET + timedelta(1), "retrain", asks=True))
    [update] = send_due(settings, send)
    assert update.status == "sent"
    bodies: list[dict[str, Any]] = [r.body for r in receiver.requests]
    assert len(bodies) == 4  # two refused onset attempts, the onset, the reply
    assert "(alert)" in bodies[2]["text"] and "thread_ts" not in bodies[2]
    assert bodies[3]["thread_ts"] == ONSET_TS and "update" in bodies[3]["text"]
    assert not list((settings.alerts_dir / "outbox").glob("*.json"))
