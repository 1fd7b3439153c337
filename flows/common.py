"""What every flow shares: the day a run is about, its name, and how it holds a concurrency slot."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

from prefect import runtime
from prefect.concurrency.sync import concurrency

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


SLOT_LEASE_SECONDS = 120.0
"""How long a held slot of a global concurrency limit lives without renewal. The holder renews it
every 90 s; a run that crashes (its process killed, its database restarted) cannot release it,
and the server takes it back once the lease runs out: the next run waits about two minutes
instead of Prefect's default five."""


@contextmanager
def one_at_a_time(limit: str) -> Iterator[None]:
    """Hold one slot of the global concurrency limit ``limit`` (a no-op where it is not defined)."""
    with concurrency(limit, occupy=1, strict=False, lease_duration=SLOT_LEASE_SECONDS):
        yield
