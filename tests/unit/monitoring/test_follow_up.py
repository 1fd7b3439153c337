"""The follow-up retraining after a drift: label maturity, its day, one per incident, the state file."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest

from tasks.core.settings import Settings
from tasks.features.frames import training_snapshot_days
from tasks.monitoring.follow_up import (
    PLANNED,
    RAN,
    SCHEDULED,
    due_in_process,
    finish_follow_up,
    follow_up_day,
    follow_ups_path,
    label_maturity,
    plan_follow_up,
    read_follow_ups,
    record_scheduled,
)

SHIFT = date(2026, 8, 6)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path)


def test_the_retraining_on_the_night_of_the_shift_has_no_label_after_it(settings):
    maturity = label_maturity(settings, SHIFT, SHIFT)
    assert maturity.after_shift == 0
    assert maturity.snapshots == len(training_snapshot_days(settings, SHIFT)) == 13
    assert maturity.text().startswith("0 of 13 training snapshots postdate the shift of 2026-08-06")


def test_follow_up_day_is_the_first_whose_holdout_and_validation_are_all_after_the_shift(settings):
    due = follow_up_day(settings, SHIFT)
    assert due == SHIFT + timedelta(days=30 + 3 * 7)
    evaluation = settings.holdout_snapshots + settings.validation_snapshots
    newest = training_snapshot_days(settings, due)[-evaluation:]
    assert min(newest) >= SHIFT
    # One day earlier, the oldest evaluation snapshot still predates the shift.
    assert min(training_snapshot_days(settings, due - timedelta(days=1))[-evaluation:]) < SHIFT
    assert label_maturity(settings, due, SHIFT).after_shift == evaluation


def test_follow_up_day_follows_the_settings(tmp_path):
    custom = Settings(
        home=tmp_path,
        label_horizon_days=14,
        holdout_snapshots=1,
        validation_snapshots=1,
        training_snapshot_every_days=3,
    )
    assert follow_up_day(custom, SHIFT) == SHIFT + timedelta(days=14 + 3)


def test_one_follow_up_per_incident_until_it_ran(settings):
    first, planned = plan_follow_up(settings, SHIFT)
    assert planned and first.status == PLANNED and first.due == follow_up_day(settings, SHIFT)
    # Drift asks again a week later, same incident: nothing new.
    again, planned_again = plan_follow_up(settings, SHIFT + timedelta(days=7))
    assert not planned_again and again == first
    record_scheduled(settings, SHIFT, "run-1")
    still, planned_still = plan_follow_up(settings, SHIFT + timedelta(days=14))
    assert not planned_still and still.status == SCHEDULED and still.flow_run_id == "run-1"
    assert still.text() == "drift follow-up of 2026-08-06 due 2026-09-26"
    finish_follow_up(settings, SHIFT, 3, "promote")
    (done,) = read_follow_ups(settings)
    assert (done.status, done.version, done.verdict) == (RAN, 3, "promote")
    assert done.text() == "drift follow-up of 2026-08-06 ran as of 2026-09-26 (promote, version 3)"
    # The same incident asking again after its follow-up ran: still that one.
    assert plan_follow_up(settings, SHIFT) == (read_follow_ups(settings)[0], False)
    # After it ran, a new drift is a new incident with its own follow-up.
    later, planned_later = plan_follow_up(settings, SHIFT + timedelta(days=90))
    assert planned_later and later.shift == SHIFT + timedelta(days=90)
    assert [f.shift for f in read_follow_ups(settings)] == [SHIFT, SHIFT + timedelta(days=90)]


def test_due_in_process_only_planned_ones_whose_day_came(settings):
    follow_up, _ = plan_follow_up(settings, SHIFT)
    assert due_in_process(settings, follow_up.due - timedelta(days=1)) == []
    assert due_in_process(settings, follow_up.due) == [follow_up]
    record_scheduled(settings, SHIFT, "run-1")  # Prefect runs it: not in-process
    assert due_in_process(settings, follow_up.due + timedelta(days=3)) == []


def test_the_state_file_is_plain_json_and_never_half_written(settings, monkeypatch):
    plan_follow_up(settings, SHIFT)
    before = follow_ups_path(settings).read_text()
    assert json.loads(before)[0]["shift"] == "2026-08-06"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("tasks.monitoring.follow_up.json.dumps", crash)
    with pytest.raises(OSError):
        record_scheduled(settings, SHIFT, "run-1")
    assert follow_ups_path(settings).read_text() == before
    assert [p.name for p in follow_ups_path(settings).parent.glob(".follow_ups*")] == []


def test_finishing_an_unknown_follow_up_is_logged_not_raised(settings, caplog):
    finish_follow_up(settings, SHIFT, None, "keep_champion")
    assert "never planned" in caplog.text
    assert read_follow_ups(settings) == []
