"""The flows' side of alerting: the on_failure hook every flow carries, and one way to send."""

from __future__ import annotations

import logging

from tasks.alerting.alerts import Alert, failure_alert
from tasks.alerting.delivery import Delivery, send_alert
from tasks.core.errors import ChurnError
from tasks.core.settings import get_settings

logger = logging.getLogger(__name__)


def notify(alert: Alert) -> Delivery:
    """Send ``alert`` through the configured channel (or the log and outbox); never raises.

    An alert that cannot be delivered is kept in the outbox by the notifier and retried by the
    next monitoring run; the flow that raised it goes on.
    """
    try:
        delivery = send_alert(get_settings(), alert)
    except (OSError, ChurnError) as exc:  # the outbox itself failed: say so, go on
        logger.error("alert %r could not be sent or queued: %s", alert.title, type(exc).__name__)
        return Delivery(alert_id=alert.alert_id, status="failed", reason=type(exc).__name__)
    logger.info("alert %r: %s", alert.title, delivery.status)
    return delivery


def alert_on_failure(flow, flow_run, state) -> None:
    """Prefect ``on_failure`` hook: the flow, the error summary (no traceback, no secrets), the run link."""
    error = state.result(raise_on_failure=False)
    notify(failure_alert(flow.name, flow_run.id, error, get_settings()))
