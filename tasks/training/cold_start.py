"""A first model from one customer export: one snapshot day, split by subscriber, not by time.

A rolling, out-of-time retraining needs months of daily history (the window, the label horizon
and the longest feature window before it). A team that starts from one export with a churn
column has none of it, but it has one labelled day: an export imported with ``churn:`` in its
mapping (:mod:`tasks.data.importer`) records who had left as cancellations. With a churn flag,
they left on its day E, so on E - 1 everybody in it was in service and ``churned_30d`` of E - 1
is the export's churn column. With cancellation dates, the labelled day is E - 30 (the label
horizon): ``churned_30d`` of that day is who left within the 30 days up to the export, on their
own days, as the rolling retraining labels them; those who left earlier were not in service on
it. ``churn train --cold-start`` trains on that day's features (the same Feast retrieval,
the same feature service scoring will read) with the subscribers split at random, stratified by
the label, into train, validation and holdout.

That is a weaker guarantee than the rolling retraining's: the holdout shares its period with
the training rows, so its metrics say how well the model separates the subscribers of the
export, not how well it holds up as time passes. The model card and the MLflow tags
(``split=subscriber``, ``cold_start=true``) say so. The gates are the same (fairness included).
Once enough history has accumulated, the scheduled retraining trains the time-split way
(``split=time``) and takes over through the usual champion/challenger gate; until then, it
reports that the cold-start champion stays instead of failing (``flows/retrain.py``).
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.core.errors import ChurnError
from tasks.core.settings import Settings
from tasks.data.import_export import labelled_day
from tasks.data.sources import read_manifest, source_date_range
from tasks.training.time_split import LABEL, TimeSplit, TrainingDataError, to_pandas

HOLDOUT_SHARE = 0.25
VALIDATION_SHARE = 0.15
SPLIT_SEED = 20_260_101
"""Fixed, so training the same export twice gives the same split (and, on the same data, the
same model)."""
SPLIT_TAG = "split"
COLD_START_TAG = "cold_start"
MIN_POSITIVES = 5
"""Per slice: fewer churned subscribers than this can neither stop training nor be judged."""


class ColdStartError(ChurnError):
    """A cold start was asked for where it cannot run (no labelled export, a day out of range)."""


def cold_start_day(settings: Settings, as_of: date | None) -> date:
    """The labelled snapshot day of the newest export with a churn column (the day before it for
    a flag, a label horizon before it for cancellation dates), or, with ``as_of``, the newest
    day whose label horizon has ended by ``as_of``.

    Raises:
        ColdStartError: neither is known, or the day lies outside the source.
    """
    first, last = source_date_range(settings.source_dir)
    if as_of is None:
        export = read_manifest(settings.source_dir).get("snapshot_export")
        if not export:
            raise ColdStartError(
                "a cold start trains on an export with a churn column: import one with "
                "`churn:` in its subscribers mapping (see README, Importing your data), or give "
                "--as-of D to train on the day whose 30-day outcome is known by D"
            )
        day = labelled_day(
            date.fromisoformat(export["snapshot_date"]),
            export.get("churn", "flag"),
            settings.label_horizon_days,
        )
    else:
        day = as_of - timedelta(days=settings.label_horizon_days)
        if as_of > last:
            raise ColdStartError(
                f"labels at {as_of} need source data through {as_of}; the source ends on {last}"
            )
    if not first <= day <= last:
        raise ColdStartError(
            f"the cold start's labelled day {day} is outside the source ({first} .. {last})"
        )
    return day


def split_by_subscriber(
    frame: pa.Table | pd.DataFrame,
    holdout_share: float = HOLDOUT_SHARE,
    validation_share: float = VALIDATION_SHARE,
    seed: int = SPLIT_SEED,
) -> TimeSplit:
    """Disjoint subscribers for train, validation and holdout, stratified by the label.

    Each subscriber's place comes from a hash of its id and ``seed``, so the split does not
    depend on row order and a subscriber keeps its slice when the export is imported again.
    The days of every slice are the frame's (one day for a cold start); nothing is purged.

    Raises:
        TrainingDataError: a slice would hold fewer than :data:`MIN_POSITIVES` churned or
            not-churned subscribers.
    """
    if not 0 < holdout_share < 1 or not 0 < validation_share < 1 - holdout_share:
        raise ValueError(
            f"shares must leave rows for training: holdout {holdout_share}, "
            f"validation {validation_share}"
        )
    data = to_pandas(frame).reset_index(drop=True)
    if data.empty:
        raise TrainingDataError("the cold-start frame is empty: nobody in service that day")
    ids = data["subscriber_id"].to_numpy(dtype=np.uint64)
    order = _id_hash(ids, seed)
    slice_of = np.empty(len(data), dtype=np.int8)  # 0 train, 1 validation, 2 holdout
    for label in (0, 1):
        rows = np.flatnonzero(data[LABEL].to_numpy() == label)
        rows = rows[np.argsort(order[rows], kind="stable")]
        holdout = round(len(rows) * holdout_share)
        validation = round(len(rows) * validation_share)
        slice_of[rows[:holdout]] = 2
        slice_of[rows[holdout : holdout + validation]] = 1
        slice_of[rows[holdout + validation :]] = 0
    days = sorted({_as_day(d) for d in data["snapshot_date"].unique()})
    parts = {
        name: data.loc[slice_of == code].reset_index(drop=True)
        for name, code in (("train", 0), ("validation", 1), ("holdout", 2))
    }
    for name, part in parts.items():
        positives = int(part[LABEL].sum())
        negatives = len(part) - positives
        if min(positives, negatives) < MIN_POSITIVES:
            raise TrainingDataError(
                f"the {name} slice of the subscriber split has {positives:,} churned and "
                f"{negatives:,} not churned subscribers; a cold start needs at least "
                f"{MIN_POSITIVES} of each per slice (more churned subscribers in the export)"
            )
    return TimeSplit(
        train=parts["train"],
        validation=parts["validation"],
        holdout=parts["holdout"],
        train_days=days,
        validation_days=days,
        holdout_days=days,
    )


FLAG_LABEL = (
    "The label is who had left by the export (its churn flag, recorded as leaving on the "
    "export's day), and the features are the export's, for those who left too: what the model "
    "learns is who had left among customers who looked like this, not yet who leaves in the "
    "next 30 days."
)


def unused_leavers(settings: Settings, positives: int) -> int:
    """How many of the newest export's leavers are not among its labelled day's positives: with
    cancellation dates, those who left on or before that day, or signed up after it, were not in
    service on it."""
    export = read_manifest(settings.source_dir).get("snapshot_export") or {}
    return max(0, int(export.get("churned", 0)) - positives)


def label_note(settings: Settings, from_export: bool) -> str:
    """What the label is, and what the features are, in the model card's words: of the newest
    export (``from_export``), else of a day given by ``--as-of``."""
    horizon = settings.label_horizon_days
    export = read_manifest(settings.source_dir).get("snapshot_export") or {}
    if not from_export:
        return (
            f"The label is who left within the {horizon} days after that day, and the features "
            "are that day's, as the rolling retraining has them."
        )
    if export.get("churn") == "cancel_date":
        return (
            f"The label is who left within the {horizon} days after that day, on the days the "
            "export's cancellation dates give, as the rolling retraining labels. The features "
            f"are the export's, taken up to {horizon} days later (for those who left: as they "
            "were when they left), so they may already show some of what led to leaving."
        )
    return FLAG_LABEL


def cold_start_note(day: date, split: TimeSplit, unused: int = 0, label: str = FLAG_LABEL) -> str:
    """The model card's paragraph on what this model's holdout can and cannot say."""
    sizes = ", ".join(
        f"{name} {len(part):,} ({int(part[LABEL].sum()):,} churned)"
        for name, part in (
            ("train", split.train),
            ("validation", split.validation),
            ("holdout", split.holdout),
        )
    )
    return (
        "## Cold start: split by subscriber, not by time\n\n"
        f"Trained on one snapshot day, {day}, with the subscribers split at random (stratified "
        f"by churn): {sizes}. This is a weaker guarantee than an out-of-time evaluation: the "
        "holdout shares its period with the training rows, so its metrics say how well the "
        "model separates the subscribers of this export, not how well it holds up as time "
        f"passes. {label} The scheduled retraining replaces it with a time-split model once "
        "a daily feed has built enough history.\n"
        + (
            f"\n{unused:,} of the export's leavers are not training rows: by their "
            f"cancellation dates they left on or before {day}, or signed up after it, so they "
            "were not in service on it.\n"
            if unused
            else ""
        )
    )


def _id_hash(ids: np.ndarray, seed: int) -> np.ndarray:
    """A well-mixed 64-bit hash of each id (splitmix64's finaliser), as floats in [0, 1)."""
    with np.errstate(over="ignore"):
        x = ids + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _as_day(value: object) -> date:
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, date):
        return value
    return pd.Timestamp(value).date()
