"""Drift incidents: one drift episode is one story in Slack, not one message a night (DESIGN §6).

A night at ``alert`` or ``retrain`` with no incident open opens one, named by its onset date.
While it is open nothing else is sent about drift (each night's drift table stays in the monitor
flow's artifacts). Its messages (written and sent by :mod:`tasks.alerting.incident_alerts`):

onset
    the drifted features with their effect sizes, the retraining asked for (with its gate outcome
    when it finished before the message went out, as in-process), when the follow-up runs.
update, at most one
    the severity rising above every level told so far (``alert`` → ``retrain``), or the
    follow-up's outcome when it does not end the incident. Later news waits for the resolution.
resolution
    after ``incident_quiet_nights_to_resolve`` nights in a row below ``warn``, or once a champion
    whose reference covers the shift is promoted: trained on or after the follow-up day
    (:func:`~tasks.monitoring.follow_up.follow_up_day`), its holdout and validation snapshots all
    postdate the onset. Seen by the retraining that promoted it or by the next night (by hand).

A retraining linked to the open incident (a drift retraining it asked for, by the ``drift on
<date>`` its reason starts with, or its follow-up, by ``follow_up_of``) sends no gate alert: its
outcome is the incident's news. Others (weekly, manual) alert as before, and resolve the incident
when their promotion covers the shift; a candidate waiting for approval always alerts.
After a promotion resolved an incident, the new champion's reference still mixes both worlds:
drift against it opens no new incident until a quiet night, or until the onset is a label horizon
plus a training window behind (every reference is post-shift by then).

State: ``$CHURN_HOME/monitoring/incidents.json``, every incident oldest first, written whole to a
temp file and renamed, under ``incidents.lock``: a crash mid-write leaves the last version. A
message is recorded ``due`` before the notifier gets it and its status after; one re-sent after a
crash is recognised by the notifier (fixed ids per incident and role) and not posted twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.files import atomic_path, file_lock
from tasks.core.settings import Settings
from tasks.features.frames import training_snapshot_days
from tasks.monitoring.follow_up import follow_up_day

if TYPE_CHECKING:
    from tasks.monitoring.follow_up import FollowUp
    from tasks.monitoring.monitor import MonitorResult
    from tasks.training.retrain import RetrainResult

logger = logging.getLogger(__name__)

OPEN, RESOLVED = "open", "resolved"
ONSET, UPDATE, RESOLUTION = "onset", "update", "resolution"
ROLES: tuple[str, ...] = (ONSET, UPDATE, RESOLUTION)
DUE = "due"
"""A message decided and not yet handed to the notifier."""
LEVEL_RANK = {"none": 0, "warn": 1, "alert": 2, "retrain": 3}
OPENING_LEVELS = ("alert", "retrain")
QUIET = "none"
"""Below the warning thresholds: the nights that count towards resolution."""
_DRIFT_REASON = re.compile(r"^drift on (\d{4}-\d{2}-\d{2})\b")


def incident_alert_id(onset: date, role: str) -> str:
    """The id of one message of the incident that began on ``onset``: stable across reruns."""
    if role not in ROLES:
        raise ValueError(f"incident message role {role!r} is not one of {ROLES}")
    return f"drift-incident-{onset.isoformat()}-{role}"


# --------------------------------------------------------------------------------------------
# What the rules look at


@dataclass(frozen=True)
class Night:
    """One monitored night as the incident rules see it."""

    day: date
    level: str
    reason: str
    features: tuple[tuple[str, str], ...] = ()
    """(feature, "alert: PSI 0.412, KS 0.231"), most drifted first."""
    model_version: int | None = None
    retrain_requested: bool = False
    retraining: str = ""
    """What the night did about retraining, in words (requested with its label maturity, or why not)."""
    follow_up_shift: date | None = None
    follow_up: str | None = None
    """The follow-up retraining in words, when one is planned."""
    reference_end: date | None = None
    """Newest snapshot day of the champion's training window (its drift reference)."""
    run_url: str | None = None


@dataclass(frozen=True)
class Retraining:
    """One retraining's outcome as the incident rules see it."""

    as_of: date
    reason: str
    verdict: str
    summary: str
    """The gate decision in one line (``GateDecision.summary()``)."""
    version: int | None = None
    promoted: bool = False
    awaiting_approval: bool = False
    follow_up_of: date | None = None
    snapshot_days: tuple[date, ...] = ()
    roc_auc: float | None = None
    champion_roc_auc: float | None = None
    run_url: str | None = None

    @property
    def drift_day(self) -> date | None:
        """The night whose drift asked for this retraining (from its reason), if any."""
        found = _DRIFT_REASON.match(self.reason)
        return date.fromisoformat(found.group(1)) if found else None


@dataclass(frozen=True)
class News:
    """Something that happened during an incident; ``told`` once a message carried it."""

    day: date
    label: str
    text: str
    told: bool = False


@dataclass(frozen=True)
class Message:
    """One of the incident's messages: decided on ``day`` because of ``why``."""

    role: str
    day: date
    why: str
    severity: str
    status: str = DUE
    """``due``, then the notifier's status (sent, queued, failed, logged, duplicate)."""
    ts: str | None = None
    run_url: str | None = None
    """The flow run that decided it (the monitoring night, or the retraining)."""


@dataclass(frozen=True)
class Incident:
    """A drift episode, from its onset to its resolution, and what was said about it."""

    onset: date
    status: str
    onset_level: str
    peak_level: str
    summary: str
    features: tuple[tuple[str, str], ...]
    model_version: int | None
    retraining: str
    last_night: date
    last_level: str
    follow_up: str | None = None
    follow_up_shift: date | None = None
    run_url: str | None = None
    quiet_nights: int = 0
    retraining_days: tuple[date, ...] = ()
    """Nights whose drift asked for a retraining during the incident (its drift retrainings)."""
    news: tuple[News, ...] = ()
    retrainings: tuple[dict[str, Any], ...] = ()
    messages: tuple[Message, ...] = ()
    onset_ts: str | None = None
    """Slack's ts of the onset message (bot token): the thread of the update and resolution."""
    resolved_on: date | None = None
    resolution: str | None = None
    tail_until: date | None = None
    """Resolved by a promotion: no new incident before this day unless a night is quiet first."""

    @property
    def is_open(self) -> bool:
        return self.status == OPEN

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (dates as ISO text); each message also names its alert id."""
        raw = _plain(self)
        for message in raw["messages"]:
            message["alert_id"] = self.alert_id(message["role"])
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Incident:
        """The inverse of :meth:`to_dict`."""
        values = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
        for name in _DATES & values.keys():
            values[name] = _day(values[name])
        values["features"] = tuple((str(a), str(b)) for a, b in values.get("features", ()))
        values["retraining_days"] = tuple(_day(d) for d in values.get("retraining_days", ()))
        values["retrainings"] = tuple(values.get("retrainings", ()))
        values["news"] = tuple(News(**{**n, "day": _day(n["day"])}) for n in values.get("news", ()))
        values["messages"] = tuple(
            Message(**{k: v for k, v in m.items() if k != "alert_id"} | {"day": _day(m["day"])})
            for m in values.get("messages", ())
        )
        return cls(**values)

    def alert_id(self, role: str) -> str:
        return incident_alert_id(self.onset, role)


_DATES = frozenset({"onset", "last_night", "follow_up_shift", "resolved_on", "tail_until"})


def _plain(value: Any) -> Any:
    """``value`` as JSON: dataclasses as dicts, dates as ISO text, tuples as lists."""
    if isinstance(value, date):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


def _day(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


# --------------------------------------------------------------------------------------------
# The rules: plain functions of (incident, what happened, settings)


def covers_shift(settings: Settings, as_of: date, onset: date) -> bool:
    """Whether a model trained at ``as_of`` learned the world after ``onset``: its holdout and
    validation snapshots all lie on or after it (as the follow-up retraining's do)."""
    return as_of >= follow_up_day(settings, onset)


def on_night(latest: Incident | None, night: Night, settings: Settings) -> Incident | None:
    """The latest incident after ``night``: followed, resolved, or a new one opened (None: none).

    A night on or before the latest incident's last night was decided already (a rerun or a
    backfill) and changes nothing.
    """
    if latest is not None and night.day <= latest.last_night:
        return latest
    if latest is not None and latest.is_open:
        return _follow(latest, night, settings)
    if latest is not None and latest.tail_until is not None:
        if night.level == QUIET or night.day > latest.tail_until:
            latest = replace(latest, tail_until=None)  # the tail is over: drift is news again
        elif night.level in OPENING_LEVELS:
            # The resolved shift's tail, against a reference of both worlds: a drift retraining
            # it asks for is the same shift's, told by no message of its own.
            if night.retrain_requested:
                latest = replace(latest, retraining_days=(*latest.retraining_days, night.day))
            return latest
    if night.level not in OPENING_LEVELS:
        return latest
    return _open(night)


def on_retraining(
    incident: Incident, retraining: Retraining, settings: Settings
) -> tuple[Incident, bool]:
    """``incident`` after ``retraining`` finished, and whether the retraining belongs to it (then
    it sends no gate alert of its own)."""
    linked = _belongs(incident, retraining)
    if not incident.is_open:
        # A follow-up after the incident was over: recorded with it, not told (the story ended).
        return (_record(incident, retraining), True) if linked else (incident, False)
    covers = retraining.promoted and covers_shift(settings, retraining.as_of, incident.onset)
    if not (linked or covers):
        return incident, False
    incident = _record(incident, retraining)
    outcome = _outcome(retraining, incident.onset)
    if covers:
        why = (
            f"{_label(retraining)}: {outcome}; its holdout and validation snapshots all "
            "postdate the onset, so its reference covers the shift"
        )
        resolved = _resolve(
            incident, retraining.as_of, why, settings, by_promotion=True, run_url=retraining.run_url
        )
        return resolved, linked
    if retraining.follow_up_of is not None:
        severity = "info" if retraining.version is not None else "warn"
        headline = f"{_label(retraining)}: {outcome}"
        return _say(
            incident, UPDATE, retraining.as_of, headline, severity, retraining.run_url
        ), True
    # A drift retraining: told by the next message (the onset, when it has not gone out yet).
    return _note(incident, retraining.as_of, _label(retraining), outcome), True


def _open(night: Night) -> Incident:
    incident = Incident(
        onset=night.day,
        status=OPEN,
        onset_level=night.level,
        peak_level=night.level,
        summary=night.reason,
        features=night.features,
        model_version=night.model_version,
        retraining=night.retraining,
        follow_up=night.follow_up,
        follow_up_shift=night.follow_up_shift,
        run_url=night.run_url,
        last_night=night.day,
        last_level=night.level,
        retraining_days=(night.day,) if night.retrain_requested else (),
    )
    return _say(incident, ONSET, night.day, night.reason, night.level, night.run_url)


def _follow(incident: Incident, night: Night, settings: Settings) -> Incident:
    incident = replace(incident, last_night=night.day, last_level=night.level)
    if night.retrain_requested:
        incident = replace(incident, retraining_days=(*incident.retraining_days, night.day))
    if night.follow_up_shift is not None and incident.follow_up_shift is None:
        incident = replace(
            incident, follow_up_shift=night.follow_up_shift, follow_up=night.follow_up
        )
    if night.reference_end is not None:
        trained_as_of = night.reference_end + timedelta(days=settings.label_horizon_days)
        if covers_shift(settings, trained_as_of, incident.onset):
            why = (
                f"the champion, version {night.model_version}, was trained on snapshots up to "
                f"{night.reference_end}: its holdout and validation snapshots postdate the "
                "onset, so its reference covers the shift"
            )
            return _resolve(
                incident, night.day, why, settings, by_promotion=True, run_url=night.run_url
            )
    if night.level == QUIET:
        quiet = incident.quiet_nights + 1
        incident = replace(incident, quiet_nights=quiet)
        if quiet >= settings.incident_quiet_nights_to_resolve:
            why = f"drift stayed below the warning thresholds for {quiet} nights in a row"
            return _resolve(
                incident, night.day, why, settings, by_promotion=False, run_url=night.run_url
            )
        return incident
    incident = replace(incident, quiet_nights=0)
    if LEVEL_RANK.get(night.level, 0) > LEVEL_RANK.get(incident.peak_level, 0):
        incident = replace(incident, peak_level=night.level)
        headline = f"drift rose to {night.level} on {night.day}: {night.reason}"
        if night.retrain_requested:
            headline += f"; {night.retraining}"
        return _say(incident, UPDATE, night.day, headline, night.level, night.run_url)
    return incident


def _resolve(
    incident: Incident,
    day: date,
    why: str,
    settings: Settings,
    *,
    by_promotion: bool,
    run_url: str | None,
) -> Incident:
    tail = None
    if by_promotion:
        tail = incident.onset + timedelta(
            days=settings.label_horizon_days + settings.training_window_days
        )
    resolved = replace(incident, status=RESOLVED, resolved_on=day, resolution=why, tail_until=tail)
    return _say(resolved, RESOLUTION, day, why, "info", run_url)


def _update_spent(incident: Incident) -> bool:
    return any(m.role == UPDATE for m in incident.messages)


def _say(
    incident: Incident, role: str, day: date, why: str, severity: str, run_url: str | None
) -> Incident:
    """Add a message; a second update is not sent: its news waits for the resolution."""
    if role == UPDATE and _update_spent(incident):
        return _note(incident, day, str(day), why)
    message = Message(role, day, why, severity, run_url=run_url)
    return replace(incident, messages=(*incident.messages, message))


def _belongs(incident: Incident, retraining: Retraining) -> bool:
    if retraining.follow_up_of is not None:
        return retraining.follow_up_of == incident.follow_up_shift
    return retraining.drift_day is not None and retraining.drift_day in incident.retraining_days


def _label(retraining: Retraining) -> str:
    if retraining.follow_up_of is not None:
        return f"Follow-up retraining as of {retraining.as_of}"
    if retraining.drift_day is not None:
        return f"Drift retraining as of {retraining.as_of}"
    return f"Retraining as of {retraining.as_of} ({retraining.reason})"


def _outcome(retraining: Retraining, onset: date) -> str:
    """The retraining's outcome in words, with how many of its snapshots postdate the onset."""
    if retraining.promoted:
        what = f"version {retraining.version} promoted to champion"
    elif retraining.awaiting_approval:
        what = f"version {retraining.version} waits for approval"
    elif retraining.version is not None:
        what = f"version {retraining.version} registered as challenger (scored in shadow)"
    else:
        what = retraining.summary
    if retraining.roc_auc is not None:
        what += f" (holdout ROC-AUC {retraining.roc_auc:.3f}"
        if retraining.champion_roc_auc is not None:
            what += f", champion {retraining.champion_roc_auc:.3f}"
        what += ")"
    if retraining.snapshot_days:
        after = sum(1 for d in retraining.snapshot_days if d >= onset)
        what += f"; {after} of {len(retraining.snapshot_days)} training snapshots postdate {onset}"
    return what


def _note(incident: Incident, day: date, label: str, text: str) -> Incident:
    """Keep news for the incident's next message."""
    return replace(incident, news=(*incident.news, News(day, label, text)))


def _record(incident: Incident, retraining: Retraining) -> Incident:
    record = {
        "as_of": retraining.as_of.isoformat(),
        "reason": retraining.reason,
        "version": retraining.version,
        "verdict": retraining.verdict,
        "promoted": retraining.promoted,
        "follow_up_of": _iso(retraining.follow_up_of),
    }
    return replace(incident, retrainings=(*incident.retrainings, record))


# --------------------------------------------------------------------------------------------
# From the flows' results


def night_from(
    result: MonitorResult,
    *,
    label_maturity: str = "",
    follow_up: FollowUp | None = None,
    follow_up_scheduled: bool = False,
    run_url: str | None = None,
) -> Night:
    """The night of ``result`` (with the retraining it asked for and its follow-up, if any)."""
    rows = sorted(result.drifted, key=lambda r: -r["psi"])
    features = tuple((r["feature"], _effect(r)) for r in rows)
    if result.retrain_requested:
        retraining = f"requested as of {result.score_date}"
        if label_maturity:
            retraining += f": {label_maturity}"
    elif result.severity.retrain:
        retraining = f"none new: {result.cooldown_note}"
    else:
        retraining = "none at this severity (retraining is asked for at retrain)"
    follow_up_text = None
    if follow_up is not None:
        follow_up_text = (
            f"{follow_up.reason}: a retraining as of {follow_up.due}, the first night whose "
            "holdout and validation labels all postdate the shift; "
            + (
                "a Prefect flow run of retrain-on-drift waits for it"
                if follow_up_scheduled
                else "runs in the nightly loop when due"
            )
        )
    return Night(
        day=result.score_date,
        level=result.severity.level,
        reason=result.severity.reason,
        features=features,
        model_version=result.model_version,
        retrain_requested=result.retrain_requested,
        retraining=retraining,
        follow_up_shift=follow_up.shift if follow_up is not None else None,
        follow_up=follow_up_text,
        reference_end=result.reference_end,
        run_url=run_url,
    )


def _effect(row: dict[str, Any]) -> str:
    text = f"{row['level']}: PSI {row['psi']:.3f}"
    if row["kind"] != "categorical" and row["statistic"] is not None:
        text += f", KS {row['statistic']:.3f}"
    return text


def retraining_from(
    settings: Settings,
    result: RetrainResult,
    reason: str,
    *,
    follow_up_of: date | None = None,
    awaiting_approval: bool = False,
    run_url: str | None = None,
) -> Retraining:
    """The outcome of ``result`` (a retraining with ``reason``) for the incident rules.

    Its snapshot days are its window's (those its drift reference is built from), not only
    those left to the training slice after the purge before validation.
    """
    return Retraining(
        as_of=result.as_of,
        reason=reason,
        verdict=result.decision.verdict,
        summary=result.decision.summary(),
        version=result.version,
        promoted=result.promoted,
        awaiting_approval=awaiting_approval,
        follow_up_of=follow_up_of,
        snapshot_days=tuple(training_snapshot_days(settings, result.as_of)),
        roc_auc=result.challenger.metrics.get("roc_auc"),
        champion_roc_auc=(result.champion_metrics or {}).get("roc_auc"),
        run_url=run_url,
    )


# --------------------------------------------------------------------------------------------
# The state file


def incidents_path(settings: Settings) -> Path:
    return settings.monitoring_dir / "incidents.json"


def read_incidents(settings: Settings) -> list[Incident]:
    """Every incident recorded, oldest onset first (at most one open, the last)."""
    try:
        raw = json.loads(incidents_path(settings).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return [Incident.from_dict(item) for item in raw.get("incidents", ())]


def shift_onset(settings: Settings, day: date) -> date | None:
    """The onset of the shift drift on ``day`` belongs to: the open incident's, or a resolved
    one's while ``day`` is in its tail; None when drift on ``day`` would be news."""
    incidents = read_incidents(settings)
    if not incidents:
        return None
    latest = incidents[-1]
    if latest.is_open or (latest.tail_until is not None and day <= latest.tail_until):
        return latest.onset
    return None


def open_incident(settings: Settings) -> Incident | None:
    """The incident open now, if any."""
    latest = read_incidents(settings)[-1:]
    return latest[0] if latest and latest[0].is_open else None


def write_incidents(settings: Settings, incidents: list[Incident]) -> None:
    """Replace the state file with ``incidents`` (temp file, fsync, rename)."""
    text = json.dumps({"incidents": [i.to_dict() for i in incidents]}, indent=2) + "\n"
    with atomic_path(incidents_path(settings)) as tmp, tmp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())  # on disk before the rename makes it the state


@contextmanager
def editing_incidents(settings: Settings) -> Iterator[list[Incident]]:
    """The incidents to change in place, written back (atomically) if the block succeeds."""
    path = incidents_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        incidents = read_incidents(settings)
        before = [i.to_dict() for i in incidents]
        yield incidents
        if [i.to_dict() for i in incidents] != before:
            write_incidents(settings, incidents)


def _put(incidents: list[Incident], incident: Incident) -> None:
    for i, known in enumerate(incidents):
        if known.onset == incident.onset:
            incidents[i] = incident
            return
    incidents.append(incident)


def record_night(settings: Settings, night: Night) -> Incident | None:
    """Apply ``night`` to the incidents on disk; the latest incident after it (None: none yet)."""
    with editing_incidents(settings) as incidents:
        latest = on_night(incidents[-1] if incidents else None, night, settings)
        if latest is not None:
            _put(incidents, latest)
    return latest


def record_retraining(settings: Settings, retraining: Retraining) -> bool:
    """Apply a finished retraining to the incident it belongs to or resolves; whether it belongs
    to one (then its gate outcome is the incident's to tell)."""
    with editing_incidents(settings) as incidents:
        for incident in reversed(incidents):  # the open one first, then the latest linked
            changed, linked = on_retraining(incident, retraining, settings)
            if changed != incident:
                _put(incidents, changed)
            if linked or changed != incident:
                return linked
    return False
