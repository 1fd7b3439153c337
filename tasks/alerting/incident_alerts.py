"""What a drift incident says in Slack (its onset, its one update, its resolution), and sending
the messages its rules decided.

A drift episode is told as one story (DESIGN §6); :mod:`tasks.monitoring.incident` decides which
message is due and keeps the state. The builders here turn plain values into
:class:`~tasks.alerting.alerts.Alert` objects, :func:`message_alert` a due message of an incident
into one, and :func:`send_due` hands every due message to the notifier and records the outcome.
Each message's ``alert_id`` is fixed by the incident (its onset date) and its role, so one
re-sent after a crash is recognised by the notifier and posted once; the update and the
resolution answer the onset (``reply_to``): in its thread with a bot token, on their own with a
webhook, always naming the incident by its onset date.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date

from tasks.alerting.alerts import Alert, Severity
from tasks.alerting.delivery import Delivery
from tasks.core.settings import Settings
from tasks.monitoring.incident import (
    DUE,
    ONSET,
    RESOLUTION,
    UPDATE,
    Incident,
    Message,
    editing_incidents,
    incident_alert_id,
    write_incidents,
)

logger = logging.getLogger(__name__)

MAX_FEATURES = 10
"""Drifted features listed in an onset message (most drifted first)."""


def incident_name(model_name: str, onset: date) -> str:
    """How every message names the incident (a webhook's messages share no thread)."""
    return f"{model_name}: drift incident of {onset.isoformat()}"


def onset_alert(
    model_name: str,
    onset: date,
    level: Severity,
    summary: str,
    features: Sequence[tuple[str, str]],
    facts: Sequence[tuple[str, str]],
    *,
    model_version: int | str | None,
    quiet_nights: int,
    run_url: str | None = None,
) -> Alert:
    """The first message of an incident: what drifted and by how much, what retraining was
    started (and, when it ran before this was sent, what it produced), when the follow-up runs.

    Args:
        features: (feature, "alert: PSI 0.412, KS 0.231") rows, most drifted first.
        facts: (label, text) rows: the retraining, its outcome, the follow-up.
        quiet_nights: nights below warn that resolve the incident (for the next step).
    """
    return Alert(
        kind="drift",
        severity=level,
        title=f"{incident_name(model_name, onset)} ({level})",
        summary=summary,
        fields=[*features[:MAX_FEATURES], *facts],
        model_version=None if model_version is None else str(model_version),
        score_date=onset,
        next_step=(
            "one incident, one story: at most one update, then a resolution after "
            f"{quiet_nights} nights below the warning thresholds or once a champion trained on "
            "post-onset labels is promoted; each night's drift table stays in the monitor "
            "flow's artifacts"
        ),
        run_url=run_url,
        alert_id=incident_alert_id(onset, ONSET),
    )


def update_alert(
    model_name: str,
    onset: date,
    day: date,
    severity: Severity,
    headline: str,
    facts: Sequence[tuple[str, str]],
    *,
    model_version: int | str | None = None,
    run_url: str | None = None,
) -> Alert:
    """The incident's one update (severity rose, or the follow-up retraining's outcome): short,
    a reply to the onset."""
    return Alert(
        kind="drift",
        severity=severity,
        title=f"{incident_name(model_name, onset)}: update",
        summary=headline,
        fields=list(facts),
        model_version=None if model_version is None else str(model_version),
        score_date=day,
        next_step="still open: the resolution is the next and last message of this incident",
        run_url=run_url,
        alert_id=incident_alert_id(onset, UPDATE),
        reply_to=incident_alert_id(onset, ONSET),
    )


def resolution_alert(
    model_name: str,
    onset: date,
    day: date,
    why: str,
    facts: Sequence[tuple[str, str]],
    *,
    next_step: str = "closed: drift from here on opens a new incident",
    model_version: int | str | None = None,
    run_url: str | None = None,
) -> Alert:
    """The incident's last message: why it is over, how long it lasted, what happened meanwhile."""
    return Alert(
        kind="drift",
        severity="info",
        title=f"{incident_name(model_name, onset)}: resolved",
        summary=why,
        fields=list(facts),
        model_version=None if model_version is None else str(model_version),
        score_date=day,
        next_step=next_step,
        run_url=run_url,
        alert_id=incident_alert_id(onset, RESOLUTION),
        reply_to=incident_alert_id(onset, ONSET),
    )


# --------------------------------------------------------------------------------------------
# An incident's due messages, rendered and sent


def send_due(settings: Settings, send: Callable[[Alert], Delivery]) -> list[Delivery]:
    """Hand every due message to ``send`` (the notifier), oldest first, recording each outcome.

    The lock is held while sending, so two processes never send the same message; a message
    whose delivery could not even be queued stays due for the next call.
    """
    deliveries = []
    with editing_incidents(settings) as incidents:
        for i in range(len(incidents)):
            for j, message in enumerate(incidents[i].messages):
                if message.status != DUE:
                    continue
                alert, told = message_alert(incidents[i], message, settings)
                delivery = send(alert)
                deliveries.append(delivery)
                if delivery.status == "failed" and delivery.outbox_path is None:
                    logger.error(
                        "incident message %s kept due: %s", alert.alert_id, delivery.reason
                    )
                    continue
                incidents[i] = _sent(incidents[i], j, delivery, told)
                write_incidents(settings, incidents)  # each outcome on disk before the next send
    return deliveries


def _sent(incident: Incident, index: int, delivery: Delivery, told: list[int]) -> Incident:
    messages = list(incident.messages)
    messages[index] = replace(messages[index], status=delivery.status, ts=delivery.ts)
    news = tuple(replace(n, told=True) if k in told else n for k, n in enumerate(incident.news))
    onset_ts = incident.onset_ts
    if messages[index].role == ONSET and delivery.ts:
        onset_ts = delivery.ts
    return replace(incident, messages=tuple(messages), news=news, onset_ts=onset_ts)


def message_alert(
    incident: Incident, message: Message, settings: Settings
) -> tuple[Alert, list[int]]:
    """The alert of ``message`` with every untold news item, and the indices of those items."""
    told = [k for k, n in enumerate(incident.news) if not n.told]
    news = [(incident.news[k].label, incident.news[k].text) for k in told]
    model = settings.model_name
    if message.role == ONSET:
        facts = [("Retraining", incident.retraining), *news]
        if incident.follow_up:
            facts.append(("Follow-up", incident.follow_up))
        alert = onset_alert(
            model,
            incident.onset,
            message.severity,  # type: ignore[arg-type]
            incident.summary,
            incident.features,
            facts,
            model_version=incident.model_version,
            quiet_nights=settings.incident_quiet_nights_to_resolve,
            run_url=incident.run_url,
        )
    elif message.role == UPDATE:
        alert = update_alert(
            model,
            incident.onset,
            message.day,
            message.severity,  # type: ignore[arg-type]
            message.why,
            news,
            run_url=message.run_url,
        )
    else:
        nights = (message.day - incident.onset).days + 1
        facts = [
            ("Lasted", f"{nights} nights, {incident.onset} to {message.day}"),
            ("Peak severity", incident.peak_level),
            *news,
        ]
        if incident.tail_until is not None:
            after = (
                "drift against the new champion, whose reference still mixes both worlds, "
                f"opens a new incident after a quiet night or from {incident.tail_until}"
            )
        else:
            after = "drift from here on opens a new incident"
        alert = resolution_alert(
            model,
            incident.onset,
            message.day,
            message.why,
            facts,
            next_step=f"closed: {after}",
            run_url=message.run_url,
        )
    return alert, told
