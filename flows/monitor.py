"""Prefect flow ``monitor``: a scored day's drift against the champion's reference, the drift
incident it opens, follows or resolves (one story in Slack, not a message a night), and the event
that lets the retrain deployment react (DESIGN §1, §5, §6)."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from flows.alerting import alert_on_failure, notify
from flows.common import dated_run_name, run_day
from flows.follow_up import run_due_follow_ups, schedule_follow_up
from tasks.alerting.alerts import flow_run_url
from tasks.alerting.delivery import flush_outbox
from tasks.alerting.incident_alerts import send_due
from tasks.core.settings import Settings, get_settings
from tasks.monitoring.follow_up import SCHEDULED, label_maturity, plan_follow_up
from tasks.monitoring.incident import Incident, night_from, record_night, shift_onset
from tasks.monitoring.monitor import MonitorResult, drifted_features_text, monitor_day

DRIFT_EVENT = "churn.drift.detected"


def model_resource(settings: Settings) -> dict[str, str]:
    """The Prefect event resource the retrain deployment's trigger matches."""
    return {
        "prefect.resource.id": f"churn.model.{settings.model_name}",
        "prefect.resource.name": settings.model_name,
    }


@flow(
    name="monitor",
    description="whylogs profiles, data contracts, KS/PSI drift against the champion's "
    "training window, severity, report, the drift incident's Slack messages; asks for "
    "retraining on strong drift.",
    flow_run_name=dated_run_name("monitor", "score_date"),
    on_failure=[alert_on_failure],
)
def monitor_flow(score_date: date | None = None, retrain_on_drift: bool = False) -> MonitorResult:
    """Monitor ``score_date`` (default: yesterday). ``retrain_on_drift`` runs the retrain flow
    here when the day asks for it (for use without a Prefect server's deployment trigger)."""
    logger = get_run_logger()
    settings = get_settings()
    day = score_date or run_day(settings)
    for delivery in flush_outbox(settings):
        logger.info("outbox: alert %s %s", delivery.alert_id, delivery.status)
    result = monitor_day(settings, day)
    run_url = flow_run_url(settings, runtime.flow_run.id)
    reason, maturity_text, follow_up, scheduled = "", "", None, False
    if result.retrain_requested:
        # The shift began no later than the incident this night belongs to (open, or in the
        # tail of one resolved by a promotion): its labels are counted from that onset.
        shift = shift_onset(settings, day) or day
        follow_up_text = "no follow-up (CHURN_DRIFT_FOLLOW_UP is off)"
        if settings.drift_follow_up:
            follow_up, planned = plan_follow_up(settings, shift)
            if planned:
                scheduled = schedule_follow_up(settings, follow_up) is not None
            else:
                scheduled = follow_up.status == SCHEDULED
            shift, follow_up_text = follow_up.shift, follow_up.text()
        maturity = label_maturity(settings, day, shift)
        maturity_text = maturity.text()
        reason = (
            f"drift on {day} ({result.severity.level}): {drifted_features_text(result)}; "
            f"{maturity.text()}; {follow_up_text}"
        )
        emit_event(
            event=DRIFT_EVENT,
            resource=model_resource(settings),
            payload={
                "score_date": day.isoformat(),
                "model_version": result.model_version,
                "severity": result.severity.level,
                "features": drifted_features_text(result),
                "label_maturity": maturity.text(),
                "follow_up": follow_up_text,
            },
        )
        logger.warning("drift on %s: %s; retraining requested", day, result.severity.reason)
    # The night opens, follows or resolves the drift incident; what to say is decided there.
    night = night_from(
        result,
        label_maturity=maturity_text,
        follow_up=follow_up,
        follow_up_scheduled=scheduled,
        run_url=run_url,
    )
    incident = record_night(settings, night)
    _artifacts(result, incident)
    try:
        if retrain_on_drift:
            # No deployment trigger in-process: the drift retraining and any follow-up due run
            # here, before the night's incident message goes out, so the onset can say what the
            # retraining produced (its outcome is the incident's, not a gate alert of its own).
            from flows.retrain import retrain_flow

            if result.retrain_requested:
                retrain_flow(as_of=day, reason=reason)
            for due in run_due_follow_ups(settings, day):
                logger.info("ran %s (as of %s)", due.reason, due.due)
    finally:
        send_due(settings, notify)
    return result


def _incident_line(incident: Incident | None) -> str:
    if incident is None:
        return "No drift incident so far."
    if incident.is_open:
        return (
            f"Drift incident of {incident.onset} open (peak {incident.peak_level}); "
            f"Slack messages so far: {', '.join(m.role for m in incident.messages)}."
        )
    return f"No drift incident open; the last, of {incident.onset}, resolved on {incident.resolved_on}."


def _next_step(result: MonitorResult) -> str:
    if result.retrain_requested:
        return "retraining triggered (event churn.drift.detected)"
    if result.severity.retrain:
        return f"no new retraining: {result.cooldown_note}"
    return "watching: no retraining at this severity"


def _artifacts(result: MonitorResult, incident: Incident | None) -> None:
    lines = [
        f"# Monitoring {result.score_date}: {result.severity.level}",
        "",
        result.severity.reason,
        "",
        _incident_line(incident),
        "",
        (
            f"Champion version {result.model_version}; {result.monitored:,} of "
            f"{result.subscribers:,} subscribers in service monitored. "
            f"Next: {_next_step(result)}."
        ),
        "",
        f"Report: `{result.report.html}`. Profiles: "
        + ", ".join(f"`{p}`" for p in result.profiles.values())
        + ".",
        "",
        "Data contracts: "
        + (
            "all passed"
            if result.contracts_passed()
            else "; ".join(
                f"{c['table']}: {len(c['violations'])} violation(s)"
                for c in result.contracts
                if not c["passed"]
            )
        )
        + f" ({len(result.contracts)} table(s)).",
    ]
    create_markdown_artifact(
        key="drift-summary",
        description=f"Drift {result.score_date}",
        markdown="\n".join(lines) + "\n",
    )
    columns = ("feature", "kind", "test", "psi", "statistic", "p_value", "level")
    create_table_artifact(
        key="drift-table",
        description=f"Drift per feature {result.score_date} (decisions on PSI/KS; p-values reported)",
        table=[
            {c: (f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])) for c in columns}
            for row in result.drift.to_pylist()
        ],
    )
