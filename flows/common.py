"""What every flow shares: the day a run is about, and its name."""

from __future__ import annotations

from datetime import date

from prefect import runtime

from tasks.core.settings import Settings, get_settings
from tasks.scoring.nightly import default_score_date


def run_day(settings: Settings | None = None) -> date:
    """Yesterday, in the business time zone, as of the run's *scheduled* time.

    A scheduled run that starts late (a worker was down) still works on the day it was
    scheduled for, not on the wall clock's; a manual run's scheduled time is its creation time.
    """
    settings = settings or get_settings()
    return default_score_date(settings, now=runtime.flow_run.scheduled_start_time)


def dated_run_name(prefix: str, parameter: str):
    """A ``flow_run_name`` callable: ``<prefix>-<day>`` from the run's date parameter or run_day."""

    def name() -> str:
        given = runtime.flow_run.parameters.get(parameter)
        return f"{prefix}-{given or run_day()}"

    return name
