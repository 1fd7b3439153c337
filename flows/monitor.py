"""Prefect flow ``monitor``: a scored day's drift against the champion's reference, the alert, and
the event that lets the retrain deployment react (DESIGN §1, §5)."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from flows.alerting import alert_on_failure, notify
from flows.common import dated_run_name, run_day
from tasks.alerting.alerts import Alert, flow_run_url
from tasks.alerting.delivery import flush_outbox
from tasks.core.settings import Settings, get_settings
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
    "training window, severity, report, Slack alert; asks for retraining on strong drift.",
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
    if result.retrain_requested:
        emit_event(
            event=DRIFT_EVENT,
            resource=model_resource(settings),
            payload={
                "score_date": day.isoformat(),
                "model_version": result.model_version,
                "severity": result.severity.level,
                "features": drifted_features_text(result),
            },
        )
        logger.warning("drift on %s: %s; retraining requested", day, result.severity.reason)
    if result.severity.level in ("alert", "retrain"):
        notify(_drift_alert(settings, result, run_url))
    _artifacts(result)
    if result.retrain_requested and retrain_on_drift:
        from flows.retrain import retrain_flow

        retrain_flow(
            as_of=day,
            reason=f"drift on {day} ({result.severity.level}): {drifted_features_text(result)}",
        )
    return result


def _next_step(result: MonitorResult) -> str:
    if result.retrain_requested:
        return "retraining triggered (event churn.drift.detected)"
    if result.severity.retrain:
        return f"no new retraining: {result.cooldown_note}"
    return "watching: no retraining at this severity"


def _drift_alert(settings: Settings, result: MonitorResult, run_url: str | None) -> Alert:
    rows = sorted(result.drifted, key=lambda r: -r["psi"])
    fields = [
        (
            r["feature"],
            f"{r['level']}: PSI {r['psi']:.3f}"
            + (
                f", KS {r['statistic']:.3f}"
                if r["kind"] != "categorical" and r["statistic"] is not None
                else ""
            ),
        )
        for r in rows[:10]
    ]
    return Alert(
        kind="drift",
        severity=result.severity.level,
        title=f"{settings.model_name}: input drift on {result.score_date} ({result.severity.level})",
        summary=result.severity.reason,
        fields=fields,
        model_version=str(result.model_version),
        score_date=result.score_date,
        next_step=_next_step(result),
        run_url=run_url,
    )


def _artifacts(result: MonitorResult) -> None:
    lines = [
        f"# Monitoring {result.score_date}: {result.severity.level}",
        "",
        result.severity.reason,
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
