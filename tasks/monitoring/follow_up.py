"""Label maturity after a drift, and the follow-up retraining it calls for (DESIGN §6).

A retraining at ``as_of`` learns from the snapshot days of its window
(:func:`~tasks.features.frames.training_snapshot_days`: every ``training_snapshot_every_days``
back from ``as_of - label_horizon_days``), because a snapshot's label is known only
``label_horizon_days`` after it. So the retraining that drift asks for on the night of a shift
has no snapshot from after the shift: it relearns the old world on a newer calendar. What can learn
the new world is a retraining whose *evaluation* slices, at least, are post-shift: its newest
``holdout_snapshots + validation_snapshots`` snapshot days all on or after the shift, so that early
stopping and the gates judge it on the behaviour it will meet. That day is
:func:`follow_up_day`: shift + label horizon + (holdout + validation - 1) x stride
(51 days with the defaults).

The follow-up of an incident is recorded in ``$CHURN_HOME/monitoring/follow_ups.json`` (written
whole, to a temp file then renamed, under a lock): planned once, then scheduled as a Prefect flow
run of the retrain-on-drift deployment where a server has it (``flows/follow_up.py``), then ran
with the version and verdict it produced. While a follow-up is outstanding (planned or
scheduled), drift asking again plans nothing new: one follow-up per incident.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from tasks.core.files import atomic_path, file_lock
from tasks.core.settings import Settings
from tasks.features.frames import training_snapshot_days

logger = logging.getLogger(__name__)

PLANNED = "planned"
"""Recorded; no Prefect flow run yet (no server with the deployment): run in-process when due."""
SCHEDULED = "scheduled"
"""A Prefect flow run of the retrain deployment waits for the day."""
RAN = "ran"
"""The follow-up retraining finished; ``version``/``verdict`` say what it produced."""
OUTSTANDING = (PLANNED, SCHEDULED)


@dataclass(frozen=True)
class LabelMaturity:
    """How much of a retraining's window lies after a shift."""

    as_of: date
    shift: date
    snapshots: int
    after_shift: int
    label_horizon_days: int

    def text(self) -> str:
        """For the retraining's reason and model card."""
        return (
            f"{self.after_shift} of {self.snapshots} training snapshots postdate the shift of "
            f"{self.shift} (a label matures {self.label_horizon_days} days after its snapshot)"
        )


def label_maturity(settings: Settings, as_of: date, shift: date) -> LabelMaturity:
    """Snapshot days of the window at ``as_of`` that are on or after ``shift``."""
    days = training_snapshot_days(settings, as_of)
    return LabelMaturity(
        as_of=as_of,
        shift=shift,
        snapshots=len(days),
        after_shift=sum(1 for d in days if d >= shift),
        label_horizon_days=settings.label_horizon_days,
    )


def follow_up_day(settings: Settings, shift: date) -> date:
    """The first ``as_of`` whose holdout and validation snapshot days all lie on or after ``shift``."""
    evaluation = settings.holdout_snapshots + settings.validation_snapshots
    return shift + timedelta(
        days=settings.label_horizon_days + (evaluation - 1) * settings.training_snapshot_every_days
    )


def follow_up_reason(shift: date) -> str:
    """The retraining's reason, and the Prefect flow run's name."""
    return f"drift follow-up of {shift}"


@dataclass(frozen=True)
class FollowUp:
    """One incident's follow-up retraining and where it stands."""

    shift: date
    """The night drift asked for retraining (the incident's onset): labels from it on are new."""
    due: date
    """``as_of`` of the follow-up retraining (its night; it runs once that night is over)."""
    status: str
    planned_at: str
    flow_run_id: str | None = None
    version: int | None = None
    verdict: str | None = None

    @property
    def reason(self) -> str:
        return follow_up_reason(self.shift)

    def text(self) -> str:
        """Where it stands, in words (for the drift retraining's reason and the incident)."""
        if self.status == RAN:
            outcome = self.verdict or "no verdict"
            if self.version is not None:
                outcome += f", version {self.version}"
            return f"{self.reason} ran as of {self.due} ({outcome})"
        return f"{self.reason} due {self.due}"

    def to_dict(self) -> dict:
        return {**asdict(self), "shift": self.shift.isoformat(), "due": self.due.isoformat()}

    @classmethod
    def from_dict(cls, raw: dict) -> FollowUp:
        return cls(
            **{
                **raw,
                "shift": date.fromisoformat(raw["shift"]),
                "due": date.fromisoformat(raw["due"]),
            }
        )


def follow_ups_path(settings: Settings) -> Path:
    return settings.monitoring_dir / "follow_ups.json"


def read_follow_ups(settings: Settings) -> list[FollowUp]:
    """Every follow-up recorded, oldest shift first."""
    try:
        raw = json.loads(follow_ups_path(settings).read_text())
    except FileNotFoundError:
        return []
    return sorted((FollowUp.from_dict(r) for r in raw), key=lambda f: f.shift)


def _write(settings: Settings, follow_ups: list[FollowUp]) -> None:
    path = follow_ups_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps([f.to_dict() for f in follow_ups], indent=2) + "\n")


def _lock(settings: Settings):
    path = follow_ups_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    return file_lock(path.with_suffix(".lock"))


def plan_follow_up(settings: Settings, shift: date) -> tuple[FollowUp, bool]:
    """The follow-up of the drift seen on ``shift``: (follow-up, newly planned).

    An outstanding follow-up (planned or scheduled), or one of the same incident that already
    ran, is returned as it is: drift asking again during an incident does not plan a second one.
    """
    with _lock(settings):
        follow_ups = read_follow_ups(settings)
        existing = [f for f in follow_ups if f.status in OUTSTANDING or f.shift == shift]
        if existing:
            return existing[0], False
        planned = FollowUp(
            shift=shift,
            due=follow_up_day(settings, shift),
            status=PLANNED,
            planned_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _write(settings, [*follow_ups, planned])
    logger.info("drift follow-up of %s planned for %s", shift, planned.due)
    return planned, True


def _update(settings: Settings, shift: date, **changes) -> FollowUp:
    with _lock(settings):
        follow_ups = read_follow_ups(settings)
        for i, f in enumerate(follow_ups):
            if f.shift == shift:
                follow_ups[i] = replace(f, **changes)
                _write(settings, follow_ups)
                return follow_ups[i]
    raise KeyError(f"no drift follow-up of {shift} in {follow_ups_path(settings)}")


def record_scheduled(settings: Settings, shift: date, flow_run_id: str) -> FollowUp:
    """The follow-up now waits as a Prefect flow run."""
    return _update(settings, shift, status=SCHEDULED, flow_run_id=flow_run_id)


def record_ran(settings: Settings, shift: date, version: int | None, verdict: str) -> FollowUp:
    """The follow-up retraining finished with ``verdict`` (and ``version`` when registered)."""
    return _update(settings, shift, status=RAN, version=version, verdict=verdict)


def finish_follow_up(settings: Settings, shift: date, version: int | None, verdict: str) -> None:
    """Record what the follow-up retraining of ``shift`` produced (the retrain flow calls it)."""
    try:
        record_ran(settings, shift, version, verdict)
    except KeyError:
        logger.warning("a retraining named itself the follow-up of %s, never planned", shift)


def due_in_process(settings: Settings, day: date) -> list[FollowUp]:
    """Planned follow-ups whose day has come and that no Prefect flow run will run."""
    return [f for f in read_follow_ups(settings) if f.status == PLANNED and f.due <= day]
