"""Prefect flow ``evaluate-performance``: realized performance once the 30-day outcomes are known."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.alerting import alert_on_failure, notify
from flows.common import dated_run_name, run_day
from tasks.alerting.alerts import Alert, flow_run_url
from tasks.alerting.delivery import flush_outbox
from tasks.core.settings import get_settings
from tasks.monitoring.performance import history_dir, read_history, update_history
from tasks.monitoring.performance_findings import (
    champion_reference,
    performance_findings,
    trend_chart,
)


@flow(
    name="evaluate-performance",
    description="Join matured 30-day outcomes to the prediction log: realized AUC, lift and "
    "calibration per model version and role; alert when the champion falls behind.",
    flow_run_name=dated_run_name("performance", "as_of"),
    on_failure=[alert_on_failure],
)
def performance_flow(as_of: date | None = None, recompute: bool = False) -> dict:
    """Evaluate every score date whose outcome is known at ``as_of`` (default: yesterday)."""
    logger = get_run_logger()
    settings = get_settings()
    as_of = as_of or run_day(settings)
    flush_outbox(settings)
    new = update_history(settings, as_of, recompute=recompute)
    history = read_history(settings)
    new_dates = sorted(set(new.column("score_date").to_pylist())) if new.num_rows else []
    reference = champion_reference(settings)
    findings = (
        performance_findings(history, *reference, settings, new_dates=new_dates)
        if reference and new_dates
        else []
    )
    chart = trend_chart(
        history,
        history_dir(settings) / "realized_auc.png",
        holdout_auc={reference[0]: reference[1]} if reference else None,
        tolerance=settings.performance_auc_tolerance,
    )
    run_url = flow_run_url(settings, runtime.flow_run.id)
    for finding in findings:
        notify(
            Alert(
                kind="performance",
                severity="alert",
                title=f"{settings.model_name}: {finding.kind.replace('_', ' ')}",
                summary=finding.message,
                fields=[
                    ("score dates", f"{finding.first_date} .. {finding.last_date}"),
                    ("value", f"{finding.value:.4f}"),
                    ("reference", f"{finding.reference:.4f}"),
                ],
                model_version=str(finding.champion_version),
                score_date=finding.last_date,
                next_step="review the champion; a retraining with fresh labels may be due",
                run_url=run_url,
            )
        )
    logger.info(
        "realized performance at %s: %d new score date(s), %d finding(s)",
        as_of,
        len(new_dates),
        len(findings),
    )
    lines = [
        f"# Realized performance at {as_of}",
        "",
        f"New score dates evaluated: {len(new_dates)}"
        + (f" ({new_dates[0]} .. {new_dates[-1]})" if new_dates else "")
        + f"; history: {history.num_rows} row(s). Trend chart: `{chart}`.",
        "",
        *(f"- **{f.kind}** ({f.scope}): {f.message}" for f in findings),
    ]
    create_markdown_artifact(
        key="realized-performance",
        description=f"Realized performance {as_of}",
        markdown="\n".join(lines) + "\n",
    )
    if new.num_rows:
        columns = [
            "score_date",
            "model_version",
            "role",
            "n",
            "positives",
            "roc_auc",
            "lift_at_k",
            "calibration_error",
        ]
        create_table_artifact(
            key="realized-performance-days",
            table=[{k: str(row[k]) for k in columns} for row in new.select(columns).to_pylist()],
            description="Newly evaluated score dates",
        )
    return {
        "as_of": as_of.isoformat(),
        "new_dates": [d.isoformat() for d in new_dates],
        "findings": [f.to_dict() for f in findings],
        "chart": str(chart),
    }
