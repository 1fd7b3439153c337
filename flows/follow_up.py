"""The drift follow-up retraining as a scheduled Prefect flow run (DESIGN §6).

When drift asks for a retraining, the monitor flow plans a follow-up
(:mod:`tasks.monitoring.follow_up`) and hands it to Prefect here: a flow run of the
``retrain/retrain-on-drift`` deployment, named "drift follow-up of <shift>", scheduled for the
morning after its day, visible (and cancellable) in the Prefect UI. The deployment's concurrency
limit makes it wait for a retraining that is still running; the idempotency key makes Prefect
itself refuse a second run for the same incident.

Without a Prefect server that has the deployment (``make demo``, a backtest, a bare
``churn monitor``), the follow-up stays *planned* and the in-process loop runs it when its day
comes (:func:`run_due_follow_ups`).
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from tasks.core.settings import Settings
from tasks.monitoring.follow_up import (
    FollowUp,
    due_in_process,
    follow_up_reason,
    record_scheduled,
)

logger = logging.getLogger(__name__)

DEPLOYMENT = "retrain/retrain-on-drift"
RUN_AT = time(4, 0)
"""Local time the follow-up starts on the morning after its day (the weekly retraining's hour)."""


def scheduled_time(settings: Settings, follow_up: FollowUp) -> datetime:
    """The morning after the follow-up's day, in the business time zone."""
    return datetime.combine(
        follow_up.due + timedelta(days=1), RUN_AT, tzinfo=ZoneInfo(settings.timezone)
    )


def schedule_follow_up(settings: Settings, follow_up: FollowUp) -> str | None:
    """Create the Prefect flow run of the follow-up; its id, or None where no server has the
    retrain-on-drift deployment (then it stays planned and runs in-process when due)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    start = scheduled_time(settings, follow_up)
    if not PREFECT_API_URL.value():
        logger.info(
            "drift follow-up of %s planned for %s (no Prefect server: runs in-process when due)",
            follow_up.shift,
            follow_up.due,
        )
        return None
    try:
        run = run_deployment(
            DEPLOYMENT,
            parameters={
                "as_of": follow_up.due.isoformat(),
                "reason": follow_up.reason,
                "follow_up_of": follow_up.shift.isoformat(),
            },
            scheduled_time=start,
            flow_run_name=follow_up_reason(follow_up.shift),
            timeout=0,
            tags=["churn-ops", "drift-follow-up"],
            idempotency_key=f"drift-follow-up-{follow_up.shift}",
            as_subflow=False,
        )
    except ObjectNotFound:
        logger.warning(
            "no %s deployment on the Prefect server: the drift follow-up of %s stays planned "
            "for %s (`churn deploy` creates it)",
            DEPLOYMENT,
            follow_up.shift,
            follow_up.due,
        )
        return None
    record_scheduled(settings, follow_up.shift, str(run.id))
    logger.info(
        "drift follow-up of %s scheduled: flow run %s on %s",
        follow_up.shift,
        run.id,
        start.isoformat(),
    )
    return str(run.id)


def run_due_follow_ups(settings: Settings, day: date) -> list[FollowUp]:
    """Run, in this process, every planned follow-up whose day has come (no Prefect server)."""
    from flows.retrain import retrain_flow

    ran = []
    for follow_up in due_in_process(settings, day):
        retrain_flow(as_of=follow_up.due, reason=follow_up.reason, follow_up_of=follow_up.shift)
        ran.append(follow_up)
    return ran
