"""Drift incidents: one story per drift episode (onset, at most one update, resolution), its state
file, and the messages a user sees in the outbox.

The rules run on generated sequences of nightly severities; the state and the messages through
the real notifier with no Slack configured (every message is kept in the outbox as ``logged``).
The real slack-sdk clients (threads by bot token, separate messages by webhook) are in
``tests/integration/test_incident_slack.py``.
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tasks.alerting import delivery, incident_alerts, slack
from tasks.alerting.alerts import Alert
from tasks.alerting.delivery import Delivery, send_alert
from tasks.alerting.incident_alerts import message_alert, send_due
from tasks.core.settings import Settings
from tasks.monitoring import incident as incident_module
from tasks.monitoring.drift import Severity
from tasks.monitoring.follow_up import FollowUp, follow_up_day
from tasks.monitoring.incident import (
    DUE,
    Incident,
    Night,
    Retraining,
    incidents_path,
    night_from,
    on_night,
    on_retraining,
    open_incident,
    read_incidents,
    record_night,
    record_retraining,
    retraining_from,
    shift_onset,
)

ONSET = date(2026, 8, 6)
FEATURES = (
    ("charge_change_90d", "alert: PSI 0.612, KS 0.301"),
    ("plan_changes_90d", "alert: PSI 0.331"),
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Defaults (3 quiet nights, 30-day labels, 90-day window), no Slack: messages are logged."""
    return Settings(
        home=tmp_path / "home", slack_webhook_url=None, slack_bot_token=None, slack_channel=None
    )


def night(day: date, level: str, **overrides: Any) -> Night:
    values: dict[str, Any] = {
        "day": day,
        "level": level,
        "reason": f"{level} on {day}",
        "features": FEATURES if level in ("alert", "retrain") else (),
        "model_version": 1,
        "retrain_requested": False,
        "retraining": "none at this severity",
    }
    values.update(overrides)
    return Night(**values)


def drift_night(day: date, *, follow_up: bool = True) -> Night:
    """A retrain night that asks for a retraining (and plans the follow-up of its shift)."""
    return night(
        day,
        "retrain",
        retrain_requested=True,
        retraining=f"requested as of {day}: 0 of 13 training snapshots postdate the shift",
        follow_up_shift=day if follow_up else None,
        follow_up="drift follow-up of ... due ..." if follow_up else None,
    )


def retraining(as_of: date, *, promoted: bool, **overrides: Any) -> Retraining:
    values: dict[str, Any] = {
        "as_of": as_of,
        "reason": f"drift on {as_of} (retrain): charge_change_90d",
        "verdict": "promote" if promoted else "keep_champion",
        "summary": "promote: all 5 gates passed"
        if promoted
        else "keep champion: fairness failed (age_band 0.31 > 0.25)",
        "version": 2 if promoted else None,
        "promoted": promoted,
        "snapshot_days": tuple(as_of - timedelta(days=30 + 7 * i) for i in range(13)),
        "roc_auc": 0.716,
        "champion_roc_auc": 0.715,
    }
    values.update(overrides)
    return Retraining(**values)


def follow_up(settings: Settings, shift: date, *, promoted: bool) -> Retraining:
    due = follow_up_day(settings, shift)
    return retraining(
        due, promoted=promoted, reason=f"drift follow-up of {shift}", follow_up_of=shift
    )


def replay(settings: Settings, levels: list[str], start: date = ONSET) -> list[Incident]:
    """The incidents after the nights ``start``, ``start + 1`` … at ``levels`` (pure rules)."""
    incidents: list[Incident] = []
    for offset, level in enumerate(levels):
        latest = on_night(
            incidents[-1] if incidents else None, night(start + timedelta(offset), level), settings
        )
        if latest is None:
            continue
        if incidents and incidents[-1].onset == latest.onset:
            incidents[-1] = latest
        else:
            incidents.append(latest)
    return incidents


def roles(incident: Incident) -> list[str]:
    return [m.role for m in incident.messages]


def outbox(settings: Settings) -> list[dict[str, Any]]:
    """What a user finds in the outbox: one file per message, oldest first."""
    files = sorted(
        (settings.alerts_dir / "outbox").glob("*.json"), key=lambda p: p.stat().st_mtime_ns
    )
    return [json.loads(p.read_text())["alert"] for p in files]


# ------------------------------------------------------------------------------------ the rules


def test_no_incident_below_alert(settings: Settings) -> None:
    # A baseline world: 60 nights of noise that never alerts.
    rng = random.Random(7)
    assert replay(settings, [rng.choice(["none", "warn"]) for _ in range(60)]) == []


def test_an_episode_is_one_onset_however_long_it_lasts(settings: Settings) -> None:
    # Retrain on the first night, then the same features every night for a week: today's 7 alerts.
    [incident] = replay(settings, ["none", "warn", *["retrain"] * 3, "alert", *["retrain"] * 3])
    assert incident.onset == ONSET + timedelta(days=2)
    assert roles(incident) == ["onset"] and incident.is_open
    assert incident.messages[0].severity == "retrain"


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        # alert, then retrain: a rise above every level told so far is the one update.
        (["alert", "alert", "retrain", "alert", "retrain"], ["onset", "update"]),
        # Falling back and rising again is not a second update.
        (["alert", "retrain", "warn", "alert", "retrain", "retrain"], ["onset", "update"]),
        # Onset at the top level: nothing can rise, nothing to update.
        (["retrain", "alert", "warn", "alert", "retrain"], ["onset"]),
    ],
)
def test_one_update_when_the_severity_rises(
    settings: Settings, levels: list[str], expected: list[str]
) -> None:
    [incident] = replay(settings, levels)
    assert roles(incident) == expected
    if "update" in expected:
        update = incident.messages[1]
        assert update.severity == "retrain" and update.why.startswith("drift rose to retrain on ")


def test_resolved_after_three_consecutive_quiet_nights(settings: Settings) -> None:
    # A warn night breaks the count: 2 quiet, warn, then 3 quiet.
    levels = ["retrain", "alert", "none", "none", "warn", "none", "none", "none", "none"]
    [incident] = replay(settings, levels)
    assert roles(incident) == ["onset", "resolution"]
    assert incident.resolved_on == ONSET + timedelta(days=7)
    assert incident.resolution == "drift stayed below the warning thresholds for 3 nights in a row"
    assert incident.tail_until is None


def test_the_quiet_nights_are_a_setting(tmp_path: Path) -> None:
    patient = Settings(home=tmp_path, incident_quiet_nights_to_resolve=5)
    [incident] = replay(patient, ["alert", *["none"] * 4])
    assert incident.is_open
    [incident] = replay(patient, ["alert", *["none"] * 5])
    assert not incident.is_open


def test_a_new_incident_after_a_resolution(settings: Settings) -> None:
    first, second = replay(
        settings, ["alert", "none", "none", "none", "warn", "retrain", "retrain"]
    )
    assert (roles(first), roles(second)) == (["onset", "resolution"], ["onset"])
    assert second.onset == ONSET + timedelta(days=5)
    assert first.alert_id("onset") != second.alert_id("onset")


def test_a_rerun_of_a_night_changes_nothing(settings: Settings) -> None:
    opened = on_night(None, night(ONSET, "alert"), settings)
    again = on_night(opened, night(ONSET, "retrain"), settings)
    assert again == opened
    quiet = on_night(opened, night(ONSET + timedelta(1), "none"), settings)
    assert on_night(quiet, night(ONSET + timedelta(1), "none"), settings).quiet_nights == 1


def test_the_follow_ups_refusal_is_the_one_update(settings: Settings) -> None:
    opened = on_night(None, drift_night(ONSET), settings)
    incident, linked = on_retraining(opened, follow_up(settings, ONSET, promoted=False), settings)
    assert linked and roles(incident) == ["onset", "update"] and incident.is_open
    update = incident.messages[1]
    assert update.severity == "warn"
    assert update.why.startswith(
        f"Follow-up retraining as of {follow_up_day(settings, ONSET)}: keep champion: fairness failed"
    )


def test_once_the_update_is_spent_later_news_waits_for_the_resolution(settings: Settings) -> None:
    incident = on_night(None, night(ONSET, "alert"), settings)
    incident = on_night(incident, drift_night(ONSET + timedelta(1)), settings)  # rise: the update
    incident, linked = on_retraining(
        incident, follow_up(settings, ONSET + timedelta(1), promoted=False), settings
    )
    assert linked and roles(incident) == ["onset", "update"]
    assert [n.told for n in incident.news] == [False]
    for offset in (2, 3, 4):
        incident = on_night(incident, night(ONSET + timedelta(offset), "none"), settings)
    assert roles(incident) == ["onset", "update", "resolution"]
    alert, told = message_alert(incident, incident.messages[2], settings)
    assert told == [0] and any("fairness failed" in value for _, value in alert.fields)


def test_the_follow_ups_promotion_resolves(settings: Settings) -> None:
    opened = on_night(None, drift_night(ONSET), settings)
    incident, linked = on_retraining(opened, follow_up(settings, ONSET, promoted=True), settings)
    assert linked and roles(incident) == ["onset", "resolution"]
    assert incident.resolved_on == follow_up_day(settings, ONSET)
    assert "version 2 promoted to champion" in incident.resolution
    assert "4 of 13 training snapshots postdate 2026-08-06" in incident.resolution
    assert incident.tail_until == ONSET + timedelta(days=120)
    alert, _ = message_alert(incident, incident.messages[-1], settings)
    assert alert.title == "telecom_churn_model: drift incident of 2026-08-06: resolved"
    assert alert.next_step.endswith("opens a new incident after a quiet night or from 2026-12-04")


def test_the_drift_retraining_of_the_night_does_not_resolve(settings: Settings) -> None:
    # Its labels all predate the shift: promoted or not, it learned the old world.
    opened = on_night(None, drift_night(ONSET), settings)
    incident, linked = on_retraining(opened, retraining(ONSET, promoted=True), settings)
    assert linked and incident.is_open and roles(incident) == ["onset"]
    [news] = incident.news
    assert news.label == f"Drift retraining as of {ONSET}" and not news.told
    assert news.text.startswith(
        "version 2 promoted to champion (holdout ROC-AUC 0.716, champion 0.715)"
    )
    assert news.text.endswith("0 of 13 training snapshots postdate 2026-08-06")


def test_other_retrainings_keep_their_gate_alert_and_resolve_only_by_covering(
    settings: Settings,
) -> None:
    opened = on_night(None, drift_night(ONSET), settings)
    weekly = retraining(ONSET + timedelta(days=3), promoted=True, reason="weekly schedule")
    assert on_retraining(opened, weekly, settings) == (opened, False)
    # A weekly retraining late enough to have learned the new world resolves it (and still
    # sends its own gate alert: it is not the incident's).
    late = retraining(
        follow_up_day(settings, ONSET) + timedelta(days=2), promoted=True, reason="weekly schedule"
    )
    incident, linked = on_retraining(opened, late, settings)
    assert not linked and roles(incident) == ["onset", "resolution"]


def test_a_champion_promoted_by_hand_that_covers_the_shift_resolves_on_the_next_night(
    settings: Settings,
) -> None:
    opened = on_night(None, drift_night(ONSET), settings)
    old = on_night(
        opened,
        night(ONSET + timedelta(1), "retrain", reference_end=ONSET - timedelta(days=1)),
        settings,
    )
    assert old.is_open
    due = follow_up_day(settings, ONSET)
    later = night(
        due + timedelta(1), "alert", model_version=3, reference_end=due - timedelta(days=30)
    )
    resolved = on_night(old, later, settings)
    assert roles(resolved) == ["onset", "resolution"]
    assert resolved.resolution.startswith("the champion, version 3, was trained on snapshots up to")


def test_the_shifts_tail_opens_no_new_incident_until_a_quiet_night(settings: Settings) -> None:
    opened = on_night(None, drift_night(ONSET), settings)
    resolved, _ = on_retraining(opened, follow_up(settings, ONSET, promoted=True), settings)
    day = follow_up_day(settings, ONSET) + timedelta(1)
    # Drift against the new champion (whose reference mixes both worlds): the same shift.
    tail = on_night(resolved, night(day, "retrain"), settings)
    assert tail.onset == ONSET and roles(tail) == ["onset", "resolution"]
    # A drift retraining asked for in the tail belongs to the resolved incident: no gate alert.
    asked = on_night(tail, drift_night(day + timedelta(days=7), follow_up=False), settings)
    assert roles(asked) == ["onset", "resolution"] and asked.onset == ONSET
    recorded, linked = on_retraining(
        asked, retraining(day + timedelta(days=7), promoted=False), settings
    )
    assert linked and roles(recorded) == ["onset", "resolution"]
    assert len(recorded.retrainings) == len(asked.retrainings) + 1
    quiet = on_night(tail, night(day + timedelta(1), "none"), settings)
    assert quiet.tail_until is None
    new = on_night(quiet, night(day + timedelta(2), "alert"), settings)
    assert new.onset == day + timedelta(2) and roles(new) == ["onset"]
    # Without a quiet night, the tail ends a label horizon plus a training window after the onset.
    after = on_night(tail, night(ONSET + timedelta(days=121), "alert"), settings)
    assert after.onset == ONSET + timedelta(days=121)


def test_the_shift_a_drift_night_belongs_to(settings: Settings) -> None:
    # Label maturity is counted from the onset while the incident is open, and in its tail.
    assert shift_onset(settings, ONSET) is None
    record_night(settings, drift_night(ONSET))
    assert shift_onset(settings, ONSET + timedelta(days=14)) == ONSET
    with incident_module.editing_incidents(settings) as incidents:
        incidents[-1], _ = on_retraining(
            incidents[-1], follow_up(settings, ONSET, promoted=True), settings
        )
    assert shift_onset(settings, ONSET + timedelta(days=100)) == ONSET  # the tail
    assert shift_onset(settings, ONSET + timedelta(days=121)) is None  # news again


def test_a_follow_up_after_the_incident_ended_is_recorded_not_told(settings: Settings) -> None:
    incident = on_night(None, drift_night(ONSET), settings)
    for offset in (1, 2, 3):
        incident = on_night(incident, night(ONSET + timedelta(offset), "none"), settings)
    assert not incident.is_open
    after, linked = on_retraining(incident, follow_up(settings, ONSET, promoted=False), settings)
    assert linked and roles(after) == ["onset", "resolution"]
    assert len(after.retrainings) == 1 and after.news == incident.news


# ------------------------------------------------------------------- state file and messages


def test_the_demo_price_rise_leaves_one_message_in_the_outbox(settings: Settings) -> None:
    # make demo: 7 quiet nights, the rise, 6 more drifting nights; the drift retraining runs
    # in-process after the night is recorded and before its message goes out.
    send = partial(send_alert, settings)
    for offset in range(-7, 7):
        day = ONSET + timedelta(offset)
        if day < ONSET:
            record_night(settings, night(day, "none"))
        elif day == ONSET:
            record_night(settings, drift_night(day))
            assert record_retraining(settings, retraining(day, promoted=True))  # no gate alert
        else:
            record_night(
                settings,
                night(day, "retrain" if offset % 2 else "alert", retraining="none new: cooldown"),
            )
        send_due(settings, send)

    [onset] = outbox(settings)
    assert onset["alert_id"] == "drift-incident-2026-08-06-onset" and onset["kind"] == "drift"
    assert onset["title"] == "telecom_churn_model: drift incident of 2026-08-06 (retrain)"
    fields = dict(onset["fields"])
    assert fields["charge_change_90d"] == "alert: PSI 0.612, KS 0.301"
    assert fields["Retraining"].startswith("requested as of 2026-08-06: 0 of 13")
    assert fields[f"Drift retraining as of {ONSET}"].startswith("version 2 promoted to champion")
    assert "Follow-up" in fields

    [incident] = read_incidents(settings)
    assert [(m.role, m.status) for m in incident.messages] == [("onset", "logged")]
    assert incident.is_open and incident.last_night == ONSET + timedelta(6)
    saved = json.loads(incidents_path(settings).read_text())["incidents"][0]
    assert saved["messages"][0]["alert_id"] == "drift-incident-2026-08-06-onset"
    assert Incident.from_dict(saved) == incident


def test_a_price_shock_over_120_nights_is_three_messages_at_most(settings: Settings) -> None:
    # Drift retrainings every 7 nights (the cooldown) learn the old world and are refused; the
    # follow-up is refused, then a later drift retraining learns the new world and is promoted.
    send = partial(send_alert, settings)
    due = follow_up_day(settings, ONSET)
    for offset in range(120):
        day = ONSET + timedelta(offset)
        asks = offset % 7 == 0
        level = "retrain" if offset < 100 else "none"
        record_night(
            settings, drift_night(day) if asks and level == "retrain" else night(day, level)
        )
        if asks and level == "retrain":
            record_retraining(settings, retraining(day, promoted=day >= due + timedelta(days=7)))
        if day == due:
            record_retraining(settings, follow_up(settings, ONSET, promoted=False))
        send_due(settings, send)
    messages = outbox(settings)
    assert [m["alert_id"].rsplit("-", 1)[1] for m in messages] == ["onset", "update", "resolution"]
    assert all(m["reply_to"] == "drift-incident-2026-08-06-onset" for m in messages[1:])
    assert open_incident(settings) is None and len(read_incidents(settings)) == 1


def test_a_crash_mid_write_leaves_the_last_state_readable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_night(settings, drift_night(ONSET))
    before = incidents_path(settings).read_text()

    def crash(fd: int) -> None:
        raise OSError("disk went away mid-write")

    monkeypatch.setattr(incident_module.os, "fsync", crash)
    with pytest.raises(OSError, match="mid-write"):
        record_night(settings, night(ONSET + timedelta(1), "none"))
    assert incidents_path(settings).read_text() == before
    assert [p.name for p in incidents_path(settings).parent.iterdir() if p.suffix == ".tmp"] == []
    [incident] = read_incidents(settings)
    assert incident.quiet_nights == 0 and incident.last_night == ONSET

    monkeypatch.undo()  # the next night carries on from the state that was kept
    record_night(settings, night(ONSET + timedelta(1), "none"))
    assert read_incidents(settings)[0].quiet_nights == 1


def test_a_message_the_notifier_could_not_queue_stays_due(settings: Settings) -> None:
    record_night(settings, drift_night(ONSET))
    sent: list[Alert] = []

    def broken(alert: Alert) -> Delivery:  # what flows.alerting.notify returns when the disk fails
        sent.append(alert)
        return Delivery(alert_id=alert.alert_id, status="failed", reason="OSError")

    send_due(settings, broken)
    assert read_incidents(settings)[0].messages[0].status == DUE
    send_due(settings, partial(send_alert, settings))
    assert read_incidents(settings)[0].messages[0].status == "logged"
    assert [a.alert_id for a in sent] == ["drift-incident-2026-08-06-onset"]
    assert len(outbox(settings)) == 1


class RecordingBot:
    """The bot-token transport's stand-in: every post succeeds with the next ts."""

    name = "bot"

    def __init__(self) -> None:
        self.posts: list[tuple[str, str | None]] = []

    def post(
        self, text: str, blocks: list[dict[str, Any]], thread_ts: str | None = None
    ) -> slack.Attempt:
        self.posts.append((text, thread_ts))
        return slack.Attempt(ok=True, ts=f"1700000000.{len(self.posts):06d}")


@pytest.fixture
def bot(monkeypatch: pytest.MonkeyPatch) -> RecordingBot:
    recording = RecordingBot()
    monkeypatch.setattr(delivery, "open_transport", lambda settings, api_url: recording)
    return recording


def test_a_message_sent_again_after_a_crash_is_posted_once(
    settings: Settings, bot: RecordingBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_night(settings, drift_night(ONSET))

    def killed(*args: Any) -> None:  # the process dies after Slack got the message
        raise OSError("killed before the incident recorded the delivery")

    monkeypatch.setattr(incident_alerts, "write_incidents", killed)
    with pytest.raises(OSError, match="killed"):
        send_due(settings, partial(send_alert, settings))
    monkeypatch.undo()
    assert read_incidents(settings)[0].messages[0].status == DUE
    [again] = send_due(settings, partial(send_alert, settings))
    assert again.status == "duplicate" and len(bot.posts) == 1
    incident = read_incidents(settings)[0]
    assert incident.messages[0].status == "duplicate"
    assert incident.onset_ts == "1700000000.000001"  # from sent.jsonl: the thread still works


def test_update_and_resolution_are_replies_in_the_onsets_thread(
    settings: Settings, bot: RecordingBot
) -> None:
    send = partial(send_alert, settings)
    record_night(settings, night(ONSET, "alert"))
    send_due(settings, send)
    record_night(settings, drift_night(ONSET + timedelta(1)))
    send_due(settings, send)
    for offset in (2, 3, 4):
        record_night(settings, night(ONSET + timedelta(offset), "none"))
    send_due(settings, send)
    onset_ts = "1700000000.000001"
    assert [thread for _, thread in bot.posts] == [None, onset_ts, onset_ts]
    incident = read_incidents(settings)[0]
    assert incident.onset_ts == onset_ts
    assert [(m.role, m.status, m.ts) for m in incident.messages] == [
        ("onset", "sent", onset_ts),
        ("update", "sent", "1700000000.000002"),
        ("resolution", "sent", "1700000000.000003"),
    ]


# ------------------------------------------------------------------- from the flows' results


def test_a_night_from_a_monitoring_result(settings: Settings) -> None:
    rows = [
        {
            "feature": "plan_changes_90d",
            "kind": "categorical",
            "psi": 0.33,
            "statistic": 0.2,
            "level": "alert",
        },
        {
            "feature": "charge_change_90d",
            "kind": "numeric",
            "psi": 0.61,
            "statistic": 0.301,
            "level": "alert",
        },
    ]
    result = SimpleNamespace(
        score_date=ONSET,
        drifted=rows,
        severity=Severity("retrain", ("charge_change_90d", "plan_changes_90d"), "2 features alert"),
        model_version=1,
        retrain_requested=True,
        cooldown_note="",
        reference_end=date(2026, 6, 28),
    )
    planned = FollowUp(
        shift=ONSET, due=follow_up_day(settings, ONSET), status="planned", planned_at="now"
    )
    tonight = night_from(result, label_maturity="0 of 13 snapshots", follow_up=planned)
    assert tonight.features == (
        ("charge_change_90d", "alert: PSI 0.610, KS 0.301"),
        ("plan_changes_90d", "alert: PSI 0.330"),  # categorical: PSI only
    )
    assert tonight.retraining == "requested as of 2026-08-06: 0 of 13 snapshots"
    assert tonight.follow_up.startswith(
        "drift follow-up of 2026-08-06: a retraining as of 2026-09-26"
    )
    assert tonight.follow_up.endswith("runs in the nightly loop when due")
    cooled = night_from(
        SimpleNamespace(
            **{**vars(result), "retrain_requested": False, "cooldown_note": "already requested"}
        )
    )
    assert cooled.retraining == "none new: already requested" and cooled.follow_up is None


def test_a_retraining_from_a_retrain_result(settings: Settings) -> None:
    decision = SimpleNamespace(
        verdict="keep_champion", summary=lambda: "keep champion: fairness failed"
    )
    result = SimpleNamespace(
        as_of=ONSET,
        decision=decision,
        version=None,
        promoted=False,
        challenger=SimpleNamespace(metrics={"roc_auc": 0.70}),
        champion_metrics={"roc_auc": 0.69},
    )
    done = retraining_from(settings, result, f"drift on {ONSET} (retrain): x")
    assert done.drift_day == ONSET and done.verdict == "keep_champion"
    # The whole window, as the drift reference sees it (not only the purged training slice).
    assert len(done.snapshot_days) == 13 and max(done.snapshot_days) == ONSET - timedelta(days=30)
    assert (done.roc_auc, done.champion_roc_auc) == (0.70, 0.69)
    assert retraining_from(settings, result, "weekly schedule").drift_day is None
