"""Seeded simulator of a telecom subscriber base: the source tables plus the true churn probability.

It writes the six source tables of :mod:`tasks.core.schema` under ``source_dir`` (with a
``_manifest.json``) and ``true_churn_probability`` under ``truth_dir``. Grain and keys are those
declared there: ``subscribers`` one row per subscriber ever signed up (ids 1..n in order of
arrival, the initial population first, by signup date); ``usage_daily`` and
``true_churn_probability`` one row per active subscriber per day; ``billing`` one row per bill;
``support_tickets`` one row per ticket; ``plan_changes`` one row per change of plan or price;
``cancellations`` one row per subscriber who left. ``subscribers.monthly_charge`` is the charge
at signup; later charges follow from ``plan_changes``.

Timeline of a day ``t`` (all subscribers at once, vectorised):

1. arrivals (Poisson, ``0.0008 × subscribers`` a day from the second day on) sign up and are
   active from ``t``; the scenario acts (``price_shock`` on its start day); rare plan changes;
2. the latent engagement takes an AR(1) step (some subscribers start drifting down towards a
   lower level, the road to churn, and some recover);
3. usage: ``data_gb = baseline × engagement × noise`` (same for minutes); dropped calls are
   Poisson in the number of calls, the region's network quality that day (with outages) and the
   subscriber's own reception;
4. support tickets (at most one a day), more likely with dropped calls in the last 30 days,
   overcharge, low engagement and known late payments; the category follows the driver;
5. a bill every 30 days after signup; ``due_date = bill_date + 14``; whether it is paid late
   is drawn on the bill date but only *known* on ``due_date + 1`` (so ``days_late`` of a bill must
   not be used before then), and only from then on does it weigh in the hazard;
6. churn, decided after the day's activity: a subscriber who churns on ``t`` has rows on ``t``
   and ``cancel_date = t + 1`` (the first day without service). A cancellation whose
   ``cancel_date`` falls after the last simulated day is not written: that subscriber still
   counts as active at the end.

Churn hazard (daily probability ``h = sigmoid(logit)``)::

    logit = -7.6
          + contract        {month_to_month: 0, one_year: -1.2, two_year: -2.0}
          + 1.0 * exp(-tenure_days / 120)               new subscribers churn more
          + 2.5 * (current_charge / list_price - 1)     overcharge; negative under a promotion
          + 0.35 * tickets_30d                          x2.5 under support_decline
          + 0.30 * late_payments_known_90d              known on due_date + 1
          + 2.5 * max(0, 1 - engagement)                latent: usage shows it only through noise
          + 0.25 * log(1 + dropped_calls_30d)           saturates: an outage is not a death sentence
          + frailty                                     N(0, 0.5^2) per subscriber, never observed
          + 0.25 * [age_band == "18-24"]                the one direct protected-attribute effect

Gender has no effect at all; region acts only through network quality (dropped calls), a
service effect a model may legitimately learn. The 30/90-day windows include day ``t`` and
start empty on the first simulated day (history before ``start`` is not simulated), so the
windowed drivers match what the source tables show (churn runs a little lower in the first
month while they fill). With these constants (100k
subscribers, 180 days, seed 7) the whole base churns 2.55% a month (month-to-month 4.3%,
one-year 1.4%, two-year 0.6%), the mean true 30-day probability is 0.025, and 18-24 year olds
average 0.030 against 0.024 for everyone else.

``true_churn_prob_30d = 1 - (1 - h_t)^30`` (float32): the probability of churning within 30
days if day ``t``'s state persisted. ``observable_churn_prob_30d`` (float32) is the same with
``frailty`` and the protected age term left out of the logit,
``1 - (1 - sigmoid(logit - frailty - age_term))^30``: the best a model without the unobservable
frailty and without the protected age term can reach (its AUC is the "observable oracle"; it
ranks, but is not calibrated: it takes frailty as 0 rather than averaging over it, so its mean
runs lower). Both are ground truth for evaluation only, never a model input.

Scenarios, from ``scenario_start`` on (the days before are identical to the baseline world with
the same seed, since scenario randomness has its own stream):

* ``price_shock``: on that day ~30% of active subscribers get their monthly charge raised by
  25% (``plan_changes`` rows with reason ``price_change``); the hazard reacts through the
  overcharge ratio: data drift with a change in churn.
* ``usage_shift``: observed ``data_gb`` x1.6 and ``voice_minutes`` x0.8; latent engagement,
  dropped calls, tickets and the hazard are unchanged: data drift without a change in churn.
* ``support_decline``: tickets weigh 2.5 times more in the hazard while ticket rates stay the
  same: concept drift.

Reproducibility: every random draw comes from ``default_rng([seed, day, stream])``, so the same
spec gives byte-identical files, and the rows of days ``<= D`` do not depend on how many days
are simulated after ``D``.

This module runs the days and writes the tables; the parameters are :mod:`tasks.data.sim_params`,
the subscribers and their random streams :mod:`tasks.data.sim_population`, and one day's events
and the hazard below :mod:`tasks.data.sim_behaviour`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.files import PARQUET_OPTIONS, atomic_dir
from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import (
    BILLING,
    CANCEL_REASONS,
    CANCELLATIONS,
    PLAN_CHANGE_REASONS,
    PLAN_CHANGES,
    SOURCE_TABLES,
    SUBSCRIBERS,
    SUPPORT_TICKETS,
    TICKET_CATEGORIES,
    TRUE_CHURN_PROBABILITY,
    USAGE_DAILY,
    TableSpec,
)
from tasks.data.sim_behaviour import (
    apply_price_shock,
    bill_day,
    cancel_reasons,
    change_plans,
    daily_hazard,
    labels,
    open_tickets,
    overcharge_day,
    prob_30d,
    region_quality,
    step_engagement,
    subscriber_rows,
    usage_day,
)
from tasks.data.sim_params import (
    DUE_AFTER_DAYS,
    EPOCH,
    H_TICKETS,
    PLAN_NAMES,
    SHIFT_DATA,
    SHIFT_VOICE,
    SUPPORT_DECLINE_FACTOR,
)
from tasks.data.sim_population import (
    Stream,
    TableRows,
    WorldSpec,
    draw_arrivals,
    draw_initial_population,
    list_charge,
    stream_rng,
)

log = logging.getLogger(__name__)

GENERATOR_VERSION = "2"


@dataclass(frozen=True)
class WorldSummary:
    """What :func:`simulate_world` wrote."""

    start: date
    end: date
    """Last simulated day."""
    rows: dict[str, int]
    """Rows written per table (the six source tables and ``true_churn_probability``)."""
    subscribers_ever: int
    churned: int
    """Cancellations written (cancel_date within the world)."""
    active_at_end: int
    source_dir: Path
    truth_dir: Path


class _Simulator:
    """Steps the world one day at a time and returns each day's rows per table."""

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        self.epoch_day0 = (spec.start - EPOCH).days
        self.state = draw_initial_population(spec)
        self.next_id = len(self.state) + 1
        self.next_ticket = 1
        self.ever = len(self.state)
        self.churned = 0

    def step(self, day: int) -> dict[str, TableRows]:
        """Simulate day index ``day``; the rows it produced, keyed by table name."""
        spec, seed = self.spec, self.spec.seed
        today = self.epoch_day0 + day
        out = {
            SUBSCRIBERS.name: self._admit(day),
            PLAN_CHANGES.name: self._change_plans(day, today),
        }
        s = self.state
        step_engagement(s, stream_rng(seed, day, Stream.ENGAGEMENT))
        quality = region_quality(stream_rng(seed, day, Stream.NETWORK))
        data, voice, drops = usage_day(s, stream_rng(seed, day, Stream.USAGE), quality)
        ratio = overcharge_day(s)
        opened, category = open_tickets(s, stream_rng(seed, day, Stream.TICKETS), ratio)
        billed, days_late = bill_day(s, day, stream_rng(seed, day, Stream.BILLING))
        known_late = s.late_known_day == day
        s.late_known_day[known_late] = -1
        s.drops.push(day, drops)
        s.tickets.push(day, opened)
        s.lates.push(day, known_late)

        declined = spec.scenario_active("support_decline", day)
        hz = daily_hazard(s, day, ratio, H_TICKETS * (SUPPORT_DECLINE_FACTOR if declined else 1.0))
        churn_rng = stream_rng(seed, day, Stream.CHURN)
        churn = churn_rng.random(len(s)) < hz.h
        churners = np.flatnonzero(churn)
        reasons = cancel_reasons(hz, churners, churn_rng)

        if spec.scenario_active("usage_shift", day):
            # Only the observation moves: latent usage, drops and the hazard stay as in baseline.
            data, voice = data * SHIFT_DATA, voice * SHIFT_VOICE
        dates = np.full(len(s), today, dtype=np.int32)
        out[USAGE_DAILY.name] = {
            "subscriber_id": s.sid,
            "usage_date": dates,
            "data_gb": np.round(np.minimum(data, 1000.0), 3),
            "voice_minutes": np.round(np.minimum(voice, 1440.0), 1),
            "dropped_calls": drops,
        }
        out[TRUE_CHURN_PROBABILITY.name] = {
            "subscriber_id": s.sid,
            "date": dates,
            "true_churn_prob_30d": prob_30d(hz.h),
            "observable_churn_prob_30d": prob_30d(hz.h_observable),
        }
        out[SUPPORT_TICKETS.name] = self._ticket_rows(s.sid[opened], today, category)
        out[BILLING.name] = {
            "subscriber_id": s.sid[billed],
            "bill_date": dates[billed],
            "due_date": dates[billed] + DUE_AFTER_DAYS,
            "amount": s.charge[billed],
            "days_late": days_late,
        }
        if day + 1 < spec.days:
            # The cancel date of a churn on the last day lies outside the world: not written.
            out[CANCELLATIONS.name] = {
                "subscriber_id": s.sid[churners],
                "cancel_date": np.full(len(churners), today + 1, dtype=np.int32),
                "reason": labels(CANCEL_REASONS, reasons),
            }
            self.churned += len(churners)
        self.state = s.select(~churn)
        return out

    def _admit(self, day: int) -> TableRows:
        """Subscribers rows of the day: the initial population on day 0, else the day's arrivals."""
        if day == 0:
            return subscriber_rows(self.state, self.epoch_day0)
        new = draw_arrivals(self.spec, day, self.next_id)
        self.next_id += len(new)
        self.ever += len(new)
        self.state = self.state.extend(new)
        return subscriber_rows(new, self.epoch_day0)

    def _ticket_rows(self, sid: np.ndarray, today: int, category: np.ndarray) -> TableRows:
        """The day's tickets, ids continuing the world's sequence in subscriber order."""
        ids = np.arange(self.next_ticket, self.next_ticket + len(sid), dtype=np.int64)
        self.next_ticket += len(sid)
        return {
            "ticket_id": ids,
            "subscriber_id": sid,
            "opened_date": np.full(len(sid), today, dtype=np.int32),
            "category": labels(TICKET_CATEGORIES, category),
        }

    def _change_plans(self, day: int, today: int) -> TableRows:
        """Scenario price changes and ordinary plan changes of the day, sorted by subscriber."""
        s = self.state
        old_plan, old_charge = s.plan.copy(), s.charge.copy()
        if self.spec.scenario_starts("price_shock", day):
            shocked = apply_price_shock(s, stream_rng(self.spec.seed, day, Stream.SCENARIO))
        else:
            shocked = np.zeros(len(s), dtype=bool)
        changed = change_plans(s, day, stream_rng(self.spec.seed, day, Stream.PLAN), frozen=shocked)
        s.charge = list_charge(s.plan, s.price_factor)
        rows = shocked | changed  # disjoint, so (subscriber_id, change_date) stays unique
        reason = np.where(
            s.plan > old_plan,
            PLAN_CHANGE_REASONS.index("upgrade"),
            np.where(
                s.plan < old_plan,
                PLAN_CHANGE_REASONS.index("downgrade"),
                PLAN_CHANGE_REASONS.index("price_change"),
            ),
        )
        return {
            "subscriber_id": s.sid[rows],
            "change_date": np.full(int(rows.sum()), today, dtype=np.int32),
            "old_plan": labels(PLAN_NAMES, old_plan[rows]),
            "new_plan": labels(PLAN_NAMES, s.plan[rows]),
            "old_monthly_charge": old_charge[rows],
            "new_monthly_charge": s.charge[rows],
            "reason": labels(PLAN_CHANGE_REASONS, reason[rows].astype(np.int8)),
        }


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _batch(spec: TableSpec, rows: TableRows) -> pa.RecordBatch:
    """One table's rows as a record batch of exactly its declared schema."""
    schema = spec.arrow_schema
    arrays = [
        rows[f.name] if isinstance(rows[f.name], pa.Array) else pa.array(rows[f.name], type=f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _write_part(table: pa.Table, path: Path) -> None:
    """One file of a partitioned table."""
    pq.write_table(table, path, **PARQUET_OPTIONS)


class _EventSink:
    """One non-partitioned table: rows buffered for the current chunk, written as a row group."""

    def __init__(self, spec: TableSpec, path: Path, stack: ExitStack):
        self.spec = spec
        self.rows = 0
        self._batches: list[pa.RecordBatch] = []
        self._writer = stack.enter_context(
            pq.ParquetWriter(path, spec.arrow_schema, **PARQUET_OPTIONS)
        )

    def add(self, rows: TableRows) -> None:
        batch = _batch(self.spec, rows)
        if batch.num_rows:
            self._batches.append(batch)
            self.rows += batch.num_rows

    def flush(self, first_day: date) -> None:
        if self._batches:
            self._writer.write_table(
                pa.Table.from_batches(self._batches, schema=self.spec.arrow_schema)
            )
            self._batches = []


class _DailySink:
    """One partitioned table: a chunk of days buffered, then written as ``part-<first day>``."""

    def __init__(self, spec: TableSpec, directory: Path):
        self.spec = spec
        self.rows = 0
        self._dir = directory
        self._dir.mkdir(parents=True)
        self._batches: list[pa.RecordBatch] = []

    def add(self, rows: TableRows) -> None:
        batch = _batch(self.spec, rows)
        self._batches.append(batch)
        self.rows += batch.num_rows

    def flush(self, first_day: date) -> None:
        table = pa.Table.from_batches(self._batches, schema=self.spec.arrow_schema)
        _write_part(table, self._dir / f"part-{first_day.isoformat()}.parquet")
        self._batches = []


def _write_manifest(spec: WorldSpec, source_dir: Path) -> None:
    manifest = {
        "source": "simulator",
        "start": spec.start.isoformat(),
        "end": spec.end.isoformat(),
        "subscribers": spec.subscribers,
        "days": spec.days,
        "seed": spec.seed,
        "scenario": spec.scenario,
        "scenario_start": spec.scenario_start.isoformat() if spec.scenario_start else None,
        "generator_version": GENERATOR_VERSION,
    }
    (source_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _simulate_into(
    spec: WorldSpec,
    source_dir: Path,
    truth_dir: Path,
    chunk_days: int,
    progress: Callable[[int], None] | None,
) -> tuple[_Simulator, dict[str, int]]:
    """Run the whole world, streaming every table into the (empty, temporary) directories."""
    sim = _Simulator(spec)
    with ExitStack() as stack:
        sinks: dict[str, _EventSink | _DailySink] = {}
        for name, table in SOURCE_TABLES.items():
            path = table_path(source_dir, table)
            sinks[name] = (
                _DailySink(table, path) if table.partitioned else _EventSink(table, path, stack)
            )
        sinks[TRUE_CHURN_PROBABILITY.name] = _DailySink(
            TRUE_CHURN_PROBABILITY, table_path(truth_dir, TRUE_CHURN_PROBABILITY)
        )
        for first in range(0, spec.days, chunk_days):
            for day in range(first, min(first + chunk_days, spec.days)):
                for name, rows in sim.step(day).items():
                    sinks[name].add(rows)
                if progress is not None:
                    progress(1)
            for sink in sinks.values():
                sink.flush(spec.start + timedelta(days=first))
    return sim, {name: sink.rows for name, sink in sinks.items()}


def simulate_world(
    spec: WorldSpec,
    source_dir: Path,
    truth_dir: Path,
    *,
    chunk_days: int = 31,
    progress: Callable[[int], None] | None = None,
) -> WorldSummary:
    """Simulate ``spec`` and replace ``source_dir`` and ``truth_dir`` with its tables, atomically.

    Everything is written to temporary siblings first and swapped in at the end, so a failure
    leaves any previous world untouched. ``progress(1)`` is called after each simulated day.
    """
    if chunk_days < 1:
        raise ValueError(f"chunk_days must be at least 1, got {chunk_days}")
    source_dir, truth_dir = Path(source_dir), Path(truth_dir)
    if source_dir.resolve() == truth_dir.resolve():
        raise ValueError(f"source_dir and truth_dir must differ, both are {source_dir}")
    with atomic_dir(source_dir) as source_tmp, atomic_dir(truth_dir) as truth_tmp:
        sim, rows = _simulate_into(spec, source_tmp, truth_tmp, chunk_days, progress)
        _write_manifest(spec, source_tmp)
    log.info(
        "simulated %s subscribers over %s days (%s churned) into %s",
        sim.ever,
        spec.days,
        sim.churned,
        source_dir,
    )
    return WorldSummary(
        start=spec.start,
        end=spec.end,
        rows=rows,
        subscribers_ever=sim.ever,
        churned=sim.churned,
        active_at_end=sim.ever - sim.churned,
        source_dir=source_dir,
        truth_dir=truth_dir,
    )
