"""Prefect flow: retrain the churn model at ``as_of`` and let the gates decide (DESIGN §6).

With ``promotion_mode = approval`` a candidate that passed every gate is registered as
``challenger`` and the flow pauses for a person: the Prefect UI shows a form (approve, name,
comment) on the paused run; ``churn model approve VERSION`` fills the same form from a terminal.
No answer within ``approval_timeout_hours`` leaves the candidate as challenger (scored in shadow)
and the run fails with :class:`ApprovalTimeout` saying so: Prefect fails a pause that timed out
(its orchestration refuses any other end), and an unanswered approval is worth a red run in the
UI anyway. Promoting the candidate later is ``churn model promote``.
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from flows.alerting import alert_on_failure, notify
from flows.common import dated_run_name, one_at_a_time, run_day
from tasks.alerting.alerts import flow_run_url, gate_alert
from tasks.alerting.incident_alerts import send_due
from tasks.core.errors import ChurnError, InsufficientHistory
from tasks.core.settings import get_settings
from tasks.monitoring.follow_up import finish_follow_up
from tasks.monitoring.incident import record_retraining, retraining_from
from tasks.training.approval import ApprovalOutcome, apply_approval, pause_key
from tasks.training.cold_start import COLD_START_TAG
from tasks.training.mlflow_store import CHAMPION
from tasks.training.registry import current_alias
from tasks.training.retrain import RetrainResult, retrain


class ApprovalTimeout(ChurnError):
    """Nobody approved or rejected the waiting challenger in time; it stays challenger."""


class ApprovalDecision(RunInput):
    """The form a person fills in to approve or reject a challenger."""

    approve: bool = Field(description="Promote this challenger to champion?")
    approver: str = Field(min_length=1, description="Your name (recorded with the decision).")
    comment: str = Field(default="", description="Why (recorded in the promotion history).")


@flow(
    name="retrain",
    description="Training frame → LightGBM → holdout metrics → fairness → champion/challenger → MLflow.",
    flow_run_name=dated_run_name("retrain", "as_of"),
    on_failure=[alert_on_failure],
)
def retrain_flow(
    as_of: date | None = None,
    reason: str = "scheduled",
    wait_for_approval: bool = True,
    follow_up_of: date | None = None,
    cold_start: bool = False,
) -> RetrainResult | None:
    """Retrain at ``as_of`` (default: the day before the run's scheduled time); in approval mode
    wait for a person unless ``wait_for_approval`` is off. ``follow_up_of``: this is the drift
    follow-up of that day's incident (its outcome is recorded with the follow-up).
    ``cold_start``: a first model from one labelled snapshot, split by subscriber
    (``tasks/training/cold_start.py``; ``as_of`` defaults to the newest export's day).

    Returns None, without failing, when the champion is a cold-start model and the source does
    not yet reach back far enough for a time-split retraining: the champion stays, and the run
    says from which day the time-split retraining can take over.
    """
    logger = get_run_logger()
    settings = get_settings()
    as_of = as_of or (None if cold_start else run_day(settings))
    # One retraining at a time across deployments (a no-op where the limit is not defined).
    with one_at_a_time("churn-retrain"):
        try:
            result = retrain(
                settings,
                as_of,
                reason,
                flow_run_id=str(runtime.flow_run.id),
                cold_start=cold_start,
            )
        except InsufficientHistory as exc:
            champion = current_alias(settings, CHAMPION)
            if cold_start or champion is None or champion.tags.get(COLD_START_TAG) != "true":
                raise
            # Until the history exists the cold-start champion is the model there is; a red
            # weekly run for months would teach people to ignore the retraining's failures.
            waiting = (
                f"Cold-start champion v{champion.version} stays: not enough history yet for a "
                f"time-split retraining ({exc})."
            )
            logger.info("%s", waiting)
            create_markdown_artifact(
                key="retrain-decision",
                description=f"Retraining at {as_of}: waiting for history",
                markdown=f"# Retraining at {as_of}: waiting for history\n\n{waiting}\n",
            )
            return None
    as_of = result.as_of
    logger.info("%s", result.decision.summary())
    if follow_up_of is not None:
        finish_follow_up(settings, follow_up_of, result.version, result.decision.verdict)
    awaiting = (
        result.version is not None and not result.promoted and settings.promotion_mode == "approval"
    )
    run_url = flow_run_url(settings, runtime.flow_run.id)
    # A drift retraining or follow-up belongs to its drift incident: its outcome is told in the
    # incident's messages, not in a gate alert of its own (one story per incident). A candidate
    # that is merely no better than the champion is routine: no message. A candidate waiting for
    # approval is always announced: a person has to act.
    linked = record_retraining(
        settings,
        retraining_from(
            settings,
            result,
            reason,
            follow_up_of=follow_up_of,
            awaiting_approval=awaiting,
            run_url=run_url,
        ),
    )
    if awaiting or not (linked or result.decision.routine_keep):
        notify(_gate_alert(settings, result, awaiting))
    elif result.decision.routine_keep:
        # A weekly "no better than the champion" every Sunday would teach the channel to ignore
        # gate alerts; the run's artifact and log keep the numbers.
        logger.info("champion kept, routine (no alert): %s", result.decision.summary())
    send_due(settings, notify)
    create_markdown_artifact(
        key="retrain-decision",
        description=f"Retraining at {as_of}: {result.decision.verdict}",
        markdown=result.model_card + _registry_line(result, awaiting),
    )
    if awaiting and wait_for_approval:
        outcome = _wait_for_approval(settings, result.version, settings.approval_timeout_hours)
        result = result.with_approval(outcome)
        create_markdown_artifact(
            key="retrain-approval",
            description=f"Approval of version {outcome.version}",
            markdown=f"**{outcome.summary()}**\n",
        )
    return result


def _wait_for_approval(settings, version: int, hours: float) -> ApprovalOutcome:
    logger = get_run_logger()
    logger.info(
        "version %s waits for approval (up to %g h): resume this run in the Prefect UI "
        "or run `churn model approve %s --by NAME --comment TEXT`",
        version,
        hours,
        version,
    )
    description = (
        f"Approve **version {version}** of {settings.model_name} as champion? "
        "The model card is in this run's artifacts."
    )
    try:
        decision = pause_flow_run(
            wait_for_input=ApprovalDecision.with_initial_data(
                description=description, approve=False, approver="", comment=""
            ),
            timeout=int(hours * 3600),
            poll_interval=_poll_seconds(hours),
            key=pause_key(version),
        )
    except FlowPauseTimeout as exc:
        raise ApprovalTimeout(
            f"no decision on version {version} within {hours:g} h: it stays challenger "
            f"(scored in shadow); promote it later with `churn model promote {version}` "
            "or reject it with `churn model approve "
            f"{version} --reject`"
        ) from exc
    return apply_approval(
        settings,
        version,
        approve=decision.approve,
        approver=decision.approver,
        comment=decision.comment,
    )


def _poll_seconds(hours: float) -> int:
    # Short waits (tests, demos) poll often; a three-day wait need not ask every ten seconds.
    return max(1, min(30, int(hours * 3600 / 200)))


def _registry_line(result: RetrainResult, awaiting: bool) -> str:
    line = f"\nMLflow run `{result.run_id}`"
    if result.version is None:
        return line + ", not registered.\n"
    line += f", registered as version {result.version}"
    if result.promoted:
        return line + " and promoted to champion.\n"
    if awaiting:
        return line + " (challenger): waiting for a person's approval.\n"
    return line + " (challenger): scored in shadow until promoted.\n"


def _gate_alert(settings, result: RetrainResult, awaiting: bool):
    """The gates' outcome for people: verdict, which gate said no and by how much, key numbers."""
    m = result.challenger.metrics
    if result.promoted:
        next_step = f"version {result.version} is now champion"
    elif awaiting:
        next_step = (
            f"version {result.version} waits for approval: `churn model approve {result.version}`"
        )
    elif result.version is not None:
        next_step = f"version {result.version} is challenger, scored in shadow until promoted"
    else:
        next_step = "the champion stays; the candidate is kept as an MLflow run with its reasons"
    return gate_alert(
        settings.model_name,
        result.version,
        result.decision.verdict,
        {g.name: g.detail for g in result.decision.failed},
        {
            "roc_auc": m["roc_auc"],
            "best_achievable_auc": result.best_auc,
            "calibration_error": m["calibration_error"],
            "lift_at_k": m["lift_at_k"],
            "champion_roc_auc": (result.champion_metrics or {}).get("roc_auc"),
        },
        as_of=result.as_of,
        run_url=flow_run_url(settings, runtime.flow_run.id),
        next_step=next_step,
    )
