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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, fields
from datetime import date, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.files import PARQUET_OPTIONS, atomic_dir
from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import (
    AGE_BANDS,
    BILLING,
    CANCEL_REASONS,
    CANCELLATIONS,
    CONTRACT_TYPES,
    GENDERS,
    PAYMENT_METHODS,
    PLAN_CHANGE_REASONS,
    PLAN_CHANGES,
    PLANS,
    REGIONS,
    SOURCE_TABLES,
    SUBSCRIBERS,
    SUPPORT_TICKETS,
    TICKET_CATEGORIES,
    TRUE_CHURN_PROBABILITY,
    USAGE_DAILY,
    TableSpec,
)

log = logging.getLogger(__name__)

GENERATOR_VERSION = "2"
"""Bump whenever the same spec would produce different rows or tables of another schema
(2: ``true_churn_probability`` gained ``observable_churn_prob_30d``)."""

SCENARIOS = ("baseline", "price_shock", "usage_shift", "support_decline")

_EPOCH = date(1970, 1, 1)
_PLAN_NAMES = tuple(PLANS)
_LIST_PRICE = np.array([PLANS[p] for p in _PLAN_NAMES])

# --- Attributes at signup -----------------------------------------------------------------
_PLAN_P = (0.30, 0.35, 0.20, 0.15)
_CONTRACT_P = (0.50, 0.25, 0.25)
_PAYMENT_P = (0.45, 0.35, 0.20)
_REGION_P = (0.22, 0.20, 0.20, 0.18, 0.20)
_AGE_P = (0.12, 0.22, 0.20, 0.18, 0.15, 0.13)
_GENDER_P = (0.48, 0.48, 0.04)
_PRICE_FACTOR_SIGMA = 0.12  # promotions below list price, surcharges above; clipped to 0.8..1.3
_PRICE_FACTOR_RANGE = (0.8, 1.3)
_TENURE_MEAN_DAYS = 700.0  # initial population: truncated exponential, more short tenure
_TENURE_MAX_DAYS = 6 * 365
_ARRIVALS_PER_SUBSCRIBER_DAY = 0.0008

# --- Latent state -------------------------------------------------------------------------
_DATA_MEDIAN_GB = np.array([0.4, 1.0, 2.0, 3.5])  # per plan, per day
_DATA_SIGMA, _DATA_NOISE = 0.6, 0.5
_VOICE_MEDIAN_MIN, _VOICE_SIGMA, _VOICE_NOISE = 25.0, 0.6, 0.5
_MINUTES_PER_CALL = 3.0
_REGION_DROP_RATE = np.array([0.010, 0.018, 0.014, 0.026, 0.012])  # dropped calls per call
_RECEPTION_SIGMA = 0.6
_REGION_DAY_SIGMA, _OUTAGE_P, _OUTAGE_FACTOR = 0.15, 0.01, 5.0
_ENGAGEMENT_PHI, _ENGAGEMENT_SIGMA = 0.97, 0.03
_ENGAGEMENT_RANGE = (0.02, 2.0)
_DRIFT_ONSET_P, _DRIFT_RECOVER_P = 0.0008, 0.004
_DRIFT_DEPTH = (0.15, 0.6)
_INITIAL_DRIFTING_SHARE = 0.03
_LATE_P_BY_PAYMENT = np.array([0.01, 0.05, 0.12])  # autopay rarely late
_LATE_P_SIGMA, _LATE_P_MAX = 0.7, 0.8
_DAYS_LATE_P = 0.2  # days_late ~ geometric, mean 5
_FRAILTY_SIGMA = 0.5

# --- Events ---------------------------------------------------------------------------------
_BILL_EVERY_DAYS, _DUE_AFTER_DAYS = 30, 14
_PLAN_CHANGE_P, _UPGRADE_P = 0.0006, 0.55
_TICKET_LOGIT = {"base": -5.9, "drops": 0.35, "over": 2.0, "low": 1.5, "late": 0.4}

# --- Churn hazard (see module docstring) ---------------------------------------------------
_H_BASE = -7.6
_H_CONTRACT = np.array([0.0, -1.2, -2.0])
_H_NEW, _H_NEW_DAYS = 1.0, 120.0
_H_PRICE, _H_TICKETS, _H_LATE, _H_ENGAGEMENT, _H_DROPS = 2.5, 0.35, 0.30, 2.5, 0.25
_H_YOUNG_BAND, _H_YOUNG = "18-24", 0.25
_H_AGE_EFFECT = np.where(np.array(AGE_BANDS) == _H_YOUNG_BAND, _H_YOUNG, 0.0)
_MOVED_P = 0.12  # life events: churn whatever the drivers
_REASON_MIN_DRIVER = 0.25  # below this no driver dominates and the reason is "other"
_TYPICAL_DROPS_30D = 6  # everyone drops a few calls; only the excess over this names "service"
_HORIZON_DAYS = 30

# --- Scenarios ------------------------------------------------------------------------------
_SHOCK_SHARE, _SHOCK_FACTOR = 0.30, 1.25
_SHIFT_DATA, _SHIFT_VOICE = 1.6, 0.8
_SUPPORT_DECLINE_FACTOR = 2.5


class _Stream(IntEnum):
    """Independent random streams of one day; new ones go at the end so old worlds stay the same."""

    INITIAL = 0
    ARRIVALS = 1
    SCENARIO = 2
    PLAN = 3
    ENGAGEMENT = 4
    NETWORK = 5
    USAGE = 6
    TICKETS = 7
    BILLING = 8
    CHURN = 9


@dataclass(frozen=True)
class WorldSpec:
    """What world to simulate: population, time span, seed and scenario."""

    subscribers: int
    """Initial active population on ``start``."""
    days: int
    """Number of days simulated: ``start .. start + days - 1``."""
    start: date
    seed: int = 7
    scenario: str = "baseline"
    scenario_start: date | None = None
    """First day the scenario applies; required unless ``scenario == "baseline"``. It may lie
    after the last day (the world is then the baseline), never before ``start``."""

    def __post_init__(self) -> None:
        if self.subscribers < 1:
            raise ValueError(f"subscribers must be at least 1, got {self.subscribers}")
        if self.days < 1:
            raise ValueError(f"days must be at least 1, got {self.days}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if self.scenario not in SCENARIOS:
            raise ValueError(
                f"unknown scenario {self.scenario!r}; expected one of {', '.join(SCENARIOS)}"
            )
        if self.scenario == "baseline":
            if self.scenario_start is not None:
                raise ValueError(
                    "scenario_start is only meaningful with a scenario other than 'baseline'"
                )
        elif self.scenario_start is None:
            raise ValueError(
                f"scenario {self.scenario!r} needs scenario_start (the first day it applies)"
            )
        elif self.scenario_start < self.start:
            raise ValueError(
                f"scenario_start {self.scenario_start.isoformat()} is before the world's start "
                f"{self.start.isoformat()}"
            )

    @property
    def end(self) -> date:
        """The last simulated day."""
        return self.start + timedelta(days=self.days - 1)

    def scenario_active(self, name: str, day: int) -> bool:
        """Whether scenario ``name`` applies on day index ``day``."""
        return (
            self.scenario == name and self.scenario_start is not None and day >= self._scenario_day
        )

    def scenario_starts(self, name: str, day: int) -> bool:
        """Whether scenario ``name`` starts on day index ``day``."""
        return (
            self.scenario == name and self.scenario_start is not None and day == self._scenario_day
        )

    @property
    def _scenario_day(self) -> int:
        assert self.scenario_start is not None
        return (self.scenario_start - self.start).days


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


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass
class _Window:
    """Per-subscriber sum over the last ``width`` days: a ring of daily values and its total."""

    ring: np.ndarray  # (n, width); slot day % width holds that day's value
    total: np.ndarray  # (n,)

    @classmethod
    def zeros(cls, n: int, width: int, dtype: type, total_dtype: type) -> _Window:
        return cls(np.zeros((n, width), dtype=dtype), np.zeros(n, dtype=total_dtype))

    def push(self, day: int, values: np.ndarray) -> None:
        """Add today's values and drop those of ``width`` days ago from the total."""
        slot = day % self.ring.shape[1]
        self.total += values.astype(self.total.dtype) - self.ring[:, slot].astype(self.total.dtype)
        self.ring[:, slot] = values

    def select(self, keep: np.ndarray) -> _Window:
        return _Window(self.ring[keep], self.total[keep])

    def extend(self, other: _Window) -> _Window:
        return _Window(
            np.concatenate([self.ring, other.ring]), np.concatenate([self.total, other.total])
        )


@dataclass
class _State:
    """Every active subscriber's attributes and latent state, one entry each, sorted by id."""

    sid: np.ndarray  # int64
    signup_day: np.ndarray  # int32 day index relative to start (negative before it)
    plan: np.ndarray  # int8 codes into the schema's vocabularies
    contract: np.ndarray
    payment: np.ndarray
    region: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    price_factor: np.ndarray  # monthly charge / list price, kept across plan changes
    charge: np.ndarray  # current monthly charge, rounded to cents
    base_data: np.ndarray  # GB a day at engagement 1
    base_voice: np.ndarray  # minutes a day at engagement 1
    reception: np.ndarray  # the subscriber's own dropped-call multiplier
    late_p: np.ndarray  # probability that a bill is paid late
    frailty: np.ndarray
    engagement: np.ndarray
    engagement_target: np.ndarray  # 1 normally, lower while drifting towards churn
    late_known_day: np.ndarray  # int32: day a pending late payment becomes known, -1 if none
    drops: _Window  # dropped calls, 30 days
    tickets: _Window  # tickets opened, 30 days
    lates: _Window  # late payments known, 90 days

    def __len__(self) -> int:
        return len(self.sid)

    def select(self, keep: np.ndarray) -> _State:
        return _State(
            **{
                f.name: getattr(self, f.name)[keep]
                if f.name not in _WINDOWS
                else getattr(self, f.name).select(keep)
                for f in fields(self)
            }
        )

    def extend(self, other: _State) -> _State:
        return _State(
            **{
                f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                if f.name not in _WINDOWS
                else getattr(self, f.name).extend(getattr(other, f.name))
                for f in fields(self)
            }
        )


_WINDOWS = frozenset({"drops", "tickets", "lates"})

_Rows = dict[str, Any]
"""One table's rows as column name → numpy array (or Arrow array for strings)."""


def _rng(seed: int, day: int, stream: _Stream) -> np.random.Generator:
    return np.random.default_rng([seed, day, int(stream)])


def _choice(rng: np.random.Generator, p: tuple[float, ...], n: int) -> np.ndarray:
    """``n`` category codes (int8) drawn with probabilities ``p``."""
    cum = np.cumsum(p)
    return np.searchsorted(cum, rng.random(n) * cum[-1], side="right").astype(np.int8)


def _charge(plan: np.ndarray, price_factor: np.ndarray) -> np.ndarray:
    return np.round(_LIST_PRICE[plan] * price_factor, 2)


def _draw_subscribers(rng: np.random.Generator, first_id: int, signup_day: np.ndarray) -> _State:
    """New subscribers' attributes and initial latent state, one per entry of ``signup_day``."""
    n = len(signup_day)
    plan = _choice(rng, _PLAN_P, n)
    contract = _choice(rng, _CONTRACT_P, n)
    payment = _choice(rng, _PAYMENT_P, n)
    region = _choice(rng, _REGION_P, n)
    age = _choice(rng, _AGE_P, n)
    gender = _choice(rng, _GENDER_P, n)
    price_factor = np.clip(np.exp(rng.normal(0.0, _PRICE_FACTOR_SIGMA, n)), *_PRICE_FACTOR_RANGE)
    base_data = _DATA_MEDIAN_GB[plan] * np.exp(rng.normal(0.0, _DATA_SIGMA, n))
    base_voice = _VOICE_MEDIAN_MIN * np.exp(rng.normal(0.0, _VOICE_SIGMA, n))
    reception = np.exp(rng.normal(0.0, _RECEPTION_SIGMA, n))
    late_p = np.minimum(
        _LATE_P_BY_PAYMENT[payment] * np.exp(rng.normal(0.0, _LATE_P_SIGMA, n)), _LATE_P_MAX
    )
    frailty = rng.normal(0.0, _FRAILTY_SIGMA, n)
    stationary_sd = _ENGAGEMENT_SIGMA / np.sqrt(1 - _ENGAGEMENT_PHI**2)
    engagement = np.clip(1.0 + rng.normal(0.0, stationary_sd, n), *_ENGAGEMENT_RANGE)
    drifting = rng.random(n) < _INITIAL_DRIFTING_SHARE
    target = np.where(drifting, rng.uniform(*_DRIFT_DEPTH, n), 1.0)
    return _State(
        sid=np.arange(first_id, first_id + n, dtype=np.int64),
        signup_day=signup_day.astype(np.int32),
        plan=plan,
        contract=contract,
        payment=payment,
        region=region,
        age=age,
        gender=gender,
        price_factor=price_factor,
        charge=_charge(plan, price_factor),
        base_data=base_data,
        base_voice=base_voice,
        reception=reception,
        late_p=late_p,
        frailty=frailty,
        engagement=engagement,
        engagement_target=target,
        late_known_day=np.full(n, -1, dtype=np.int32),
        drops=_Window.zeros(n, 30, np.int16, np.int32),
        tickets=_Window.zeros(n, 30, np.int8, np.int16),
        lates=_Window.zeros(n, 90, np.int8, np.int16),
    )


def _initial_population(spec: WorldSpec) -> _State:
    """The ``spec.subscribers`` active on ``start``, ids in signup order (tenure 1 day..6 years)."""
    rng = _rng(spec.seed, 0, _Stream.INITIAL)
    # Truncated exponential by inverse CDF: most tenures short, none beyond six years.
    u = rng.random(spec.subscribers)
    tail = 1.0 - np.exp(-_TENURE_MAX_DAYS / _TENURE_MEAN_DAYS)
    tenure = np.ceil(-_TENURE_MEAN_DAYS * np.log1p(-u * tail)).clip(1, _TENURE_MAX_DAYS)
    signup_day = np.sort(-tenure.astype(np.int32), kind="stable")
    return _draw_subscribers(rng, 1, signup_day)


def _arrivals(spec: WorldSpec, day: int, first_id: int) -> _State:
    """Subscribers signing up on day ``day`` (Poisson), drawn from that day's own stream."""
    rng = _rng(spec.seed, day, _Stream.ARRIVALS)
    n = int(rng.poisson(spec.subscribers * _ARRIVALS_PER_SUBSCRIBER_DAY))
    return _draw_subscribers(rng, first_id, np.full(n, day, dtype=np.int32))


# --------------------------------------------------------------------------------------------
# One day
# --------------------------------------------------------------------------------------------


def _labels(names: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    """Category codes as an Arrow string array."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(names)).cast(
        pa.string()
    )


def _subscriber_rows(s: _State, epoch_day0: int) -> _Rows:
    return {
        "subscriber_id": s.sid,
        "signup_date": s.signup_day + epoch_day0,
        "plan": _labels(_PLAN_NAMES, s.plan),
        "contract_type": _labels(CONTRACT_TYPES, s.contract),
        "payment_method": _labels(PAYMENT_METHODS, s.payment),
        "monthly_charge": s.charge,
        "region": _labels(REGIONS, s.region),
        "age_band": _labels(AGE_BANDS, s.age),
        "gender": _labels(GENDERS, s.gender),
    }


def _price_shock(s: _State, rng: np.random.Generator) -> np.ndarray:
    """Raise the charge of a random share of subscribers; returns who was hit."""
    hit = rng.random(len(s)) < _SHOCK_SHARE
    s.price_factor = np.where(hit, s.price_factor * _SHOCK_FACTOR, s.price_factor)
    return hit


def _plan_changes(s: _State, day: int, rng: np.random.Generator, frozen: np.ndarray) -> np.ndarray:
    """Rare upgrades and downgrades (not on signup day, not for ``frozen``); returns who changed."""
    n = len(s)
    change = (rng.random(n) < _PLAN_CHANGE_P) & ~frozen & (s.signup_day < day)
    up = rng.random(n) < _UPGRADE_P
    top = len(_PLAN_NAMES) - 1
    up = np.where(s.plan == 0, True, np.where(s.plan == top, False, up))
    s.plan = np.where(change, s.plan + np.where(up, 1, -1), s.plan).astype(np.int8)
    return change


def _step_engagement(s: _State, rng: np.random.Generator) -> None:
    """One AR(1) step towards each subscriber's target; some start drifting down, some recover."""
    n = len(s)
    onset = rng.random(n) < _DRIFT_ONSET_P
    recover = rng.random(n) < _DRIFT_RECOVER_P
    depth = rng.uniform(*_DRIFT_DEPTH, n)
    noise = rng.standard_normal(n)
    steady = s.engagement_target >= 1.0
    s.engagement_target = np.where(
        steady, np.where(onset, depth, 1.0), np.where(recover, 1.0, s.engagement_target)
    )
    t = s.engagement_target
    s.engagement = np.clip(
        t + _ENGAGEMENT_PHI * (s.engagement - t) + _ENGAGEMENT_SIGMA * noise, *_ENGAGEMENT_RANGE
    )


def _region_quality(rng: np.random.Generator) -> np.ndarray:
    """Each region's dropped-call multiplier today: day-to-day noise and the odd outage."""
    k = len(REGIONS)
    factor = np.exp(rng.normal(0.0, _REGION_DAY_SIGMA, k))
    return np.where(rng.random(k) < _OUTAGE_P, factor * _OUTAGE_FACTOR, factor)


def _usage(
    s: _State, rng: np.random.Generator, quality: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Today's data (GB), voice minutes and dropped calls, before any observation shift."""
    n = len(s)
    # Log-normal noise with mean 1 so engagement sets the expected usage.
    data = s.base_data * s.engagement * np.exp(rng.normal(-(_DATA_NOISE**2) / 2, _DATA_NOISE, n))
    voice = (
        s.base_voice * s.engagement * np.exp(rng.normal(-(_VOICE_NOISE**2) / 2, _VOICE_NOISE, n))
    )
    rate = voice / _MINUTES_PER_CALL * _REGION_DROP_RATE[s.region] * quality[s.region] * s.reception
    drops = np.minimum(rng.poisson(rate), 500).astype(np.int32)
    return data, voice, drops


def _overcharge(s: _State) -> np.ndarray:
    """Monthly charge over the current plan's list price (1 = list price)."""
    return s.charge / _LIST_PRICE[s.plan]


def _open_tickets(
    s: _State, rng: np.random.Generator, ratio: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Who opens a ticket today (at most one each) and its category, driven by recent trouble."""
    n = len(s)
    over = np.maximum(ratio - 1.0, 0.0)
    low = np.maximum(1.0 - s.engagement, 0.0)
    c = _TICKET_LOGIT
    logit = (
        c["base"]
        + c["drops"] * np.log1p(s.drops.total)
        + c["over"] * over
        + c["low"] * low
        + c["late"] * s.lates.total
    )
    opened = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    idx = np.flatnonzero(opened)
    # Weights per category (network, billing, device, other) follow what went wrong.
    weights = np.column_stack(
        [
            0.15 + 0.3 * np.log1p(s.drops.total[idx]),
            0.15 + 3.0 * over[idx] + 0.4 * s.lates.total[idx],
            np.full(len(idx), 0.25),
            0.15 + 0.5 * low[idx],
        ]
    )
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(idx)) * cum[:, -1]
    category = (u[:, None] >= cum).sum(axis=1).astype(np.int8)
    return opened, category


def _bills(s: _State, day: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Who is billed today and each bill's days late (0 = on time); schedules when it is known."""
    since = day - s.signup_day
    billed = (since > 0) & (since % _BILL_EVERY_DAYS == 0)
    idx = np.flatnonzero(billed)
    late = rng.random(len(idx)) < s.late_p[idx]
    days_late = (
        np.where(late, rng.geometric(_DAYS_LATE_P, len(idx)), 0).clip(0, 365).astype(np.int32)
    )
    s.late_known_day[idx[late]] = day + _DUE_AFTER_DAYS + 1
    return billed, days_late


@dataclass
class _Hazard:
    """Today's churn hazard and the parts of its logit that name a cancellation reason."""

    h: np.ndarray
    h_observable: np.ndarray
    """The hazard without frailty and without the protected age term."""
    price: np.ndarray
    service: np.ndarray
    competitor: np.ndarray


def _hazard(s: _State, day: int, ratio: np.ndarray, ticket_coef: float) -> _Hazard:
    """The daily churn hazard of every active subscriber (formula in the module docstring)."""
    tenure = (day - s.signup_day).astype(np.float64)
    price = _H_PRICE * (ratio - 1.0)
    late = _H_LATE * s.lates.total
    tickets = ticket_coef * s.tickets.total
    drops = _H_DROPS * np.log1p(s.drops.total)
    engagement = _H_ENGAGEMENT * np.maximum(1.0 - s.engagement, 0.0)
    observable = (
        _H_BASE
        + _H_CONTRACT[s.contract]
        + _H_NEW * np.exp(-tenure / _H_NEW_DAYS)
        + price
        + late
        + tickets
        + drops
        + engagement
    )
    logit = observable + s.frailty + _H_AGE_EFFECT[s.age]
    return _Hazard(
        h=1.0 / (1.0 + np.exp(-logit)),
        h_observable=1.0 / (1.0 + np.exp(-observable)),
        price=np.maximum(price, 0.0) + late,
        service=tickets + np.maximum(drops - _H_DROPS * np.log1p(_TYPICAL_DROPS_30D), 0.0),
        competitor=engagement,
    )


def _prob_30d(h: np.ndarray) -> np.ndarray:
    """``1 - (1 - h)^30`` as float32, without losing precision for tiny ``h``."""
    return (-np.expm1(_HORIZON_DAYS * np.log1p(-h))).astype(np.float32)


_DRIVER_REASONS = np.array([CANCEL_REASONS.index(r) for r in ("price", "service", "competitor")])


def _cancel_reasons(hz: _Hazard, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reason codes for the churners ``idx``: the dominant driver, a move, or "other"."""
    drivers = np.column_stack([hz.price[idx], hz.service[idx], hz.competitor[idx]])
    reason = _DRIVER_REASONS[np.argmax(drivers, axis=1)]
    reason = np.where(
        drivers.max(axis=1, initial=0.0) < _REASON_MIN_DRIVER, CANCEL_REASONS.index("other"), reason
    )
    moved = rng.random(len(idx)) < _MOVED_P
    return np.where(moved, CANCEL_REASONS.index("moved"), reason).astype(np.int8)


class _Simulator:
    """Steps the world one day at a time and returns each day's rows per table."""

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        self.epoch_day0 = (spec.start - _EPOCH).days
        self.state = _initial_population(spec)
        self.next_id = len(self.state) + 1
        self.next_ticket = 1
        self.ever = len(self.state)
        self.churned = 0

    def step(self, day: int) -> dict[str, _Rows]:
        """Simulate day index ``day``; the rows it produced, keyed by table name."""
        spec, seed = self.spec, self.spec.seed
        today = self.epoch_day0 + day
        out = {
            SUBSCRIBERS.name: self._admit(day),
            PLAN_CHANGES.name: self._change_plans(day, today),
        }
        s = self.state
        _step_engagement(s, _rng(seed, day, _Stream.ENGAGEMENT))
        quality = _region_quality(_rng(seed, day, _Stream.NETWORK))
        data, voice, drops = _usage(s, _rng(seed, day, _Stream.USAGE), quality)
        ratio = _overcharge(s)
        opened, category = _open_tickets(s, _rng(seed, day, _Stream.TICKETS), ratio)
        billed, days_late = _bills(s, day, _rng(seed, day, _Stream.BILLING))
        known_late = s.late_known_day == day
        s.late_known_day[known_late] = -1
        s.drops.push(day, drops)
        s.tickets.push(day, opened)
        s.lates.push(day, known_late)

        declined = spec.scenario_active("support_decline", day)
        hz = _hazard(s, day, ratio, _H_TICKETS * (_SUPPORT_DECLINE_FACTOR if declined else 1.0))
        churn_rng = _rng(seed, day, _Stream.CHURN)
        churn = churn_rng.random(len(s)) < hz.h
        churners = np.flatnonzero(churn)
        reasons = _cancel_reasons(hz, churners, churn_rng)

        if spec.scenario_active("usage_shift", day):
            # Only the observation moves: latent usage, drops and the hazard stay as in baseline.
            data, voice = data * _SHIFT_DATA, voice * _SHIFT_VOICE
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
            "true_churn_prob_30d": _prob_30d(hz.h),
            "observable_churn_prob_30d": _prob_30d(hz.h_observable),
        }
        out[SUPPORT_TICKETS.name] = self._ticket_rows(s.sid[opened], today, category)
        out[BILLING.name] = {
            "subscriber_id": s.sid[billed],
            "bill_date": dates[billed],
            "due_date": dates[billed] + _DUE_AFTER_DAYS,
            "amount": s.charge[billed],
            "days_late": days_late,
        }
        if day + 1 < spec.days:
            # The cancel date of a churn on the last day lies outside the world: not written.
            out[CANCELLATIONS.name] = {
                "subscriber_id": s.sid[churners],
                "cancel_date": np.full(len(churners), today + 1, dtype=np.int32),
                "reason": _labels(CANCEL_REASONS, reasons),
            }
            self.churned += len(churners)
        self.state = s.select(~churn)
        return out

    def _admit(self, day: int) -> _Rows:
        """Subscribers rows of the day: the initial population on day 0, else the day's arrivals."""
        if day == 0:
            return _subscriber_rows(self.state, self.epoch_day0)
        new = _arrivals(self.spec, day, self.next_id)
        self.next_id += len(new)
        self.ever += len(new)
        self.state = self.state.extend(new)
        return _subscriber_rows(new, self.epoch_day0)

    def _ticket_rows(self, sid: np.ndarray, today: int, category: np.ndarray) -> _Rows:
        """The day's tickets, ids continuing the world's sequence in subscriber order."""
        ids = np.arange(self.next_ticket, self.next_ticket + len(sid), dtype=np.int64)
        self.next_ticket += len(sid)
        return {
            "ticket_id": ids,
            "subscriber_id": sid,
            "opened_date": np.full(len(sid), today, dtype=np.int32),
            "category": _labels(TICKET_CATEGORIES, category),
        }

    def _change_plans(self, day: int, today: int) -> _Rows:
        """Scenario price changes and ordinary plan changes of the day, sorted by subscriber."""
        s = self.state
        old_plan, old_charge = s.plan.copy(), s.charge.copy()
        if self.spec.scenario_starts("price_shock", day):
            shocked = _price_shock(s, _rng(self.spec.seed, day, _Stream.SCENARIO))
        else:
            shocked = np.zeros(len(s), dtype=bool)
        changed = _plan_changes(s, day, _rng(self.spec.seed, day, _Stream.PLAN), frozen=shocked)
        s.charge = _charge(s.plan, s.price_factor)
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
            "old_plan": _labels(_PLAN_NAMES, old_plan[rows]),
            "new_plan": _labels(_PLAN_NAMES, s.plan[rows]),
            "old_monthly_charge": old_charge[rows],
            "new_monthly_charge": s.charge[rows],
            "reason": _labels(PLAN_CHANGE_REASONS, reason[rows].astype(np.int8)),
        }


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _batch(spec: TableSpec, rows: _Rows) -> pa.RecordBatch:
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

    def add(self, rows: _Rows) -> None:
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

    def add(self, rows: _Rows) -> None:
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
