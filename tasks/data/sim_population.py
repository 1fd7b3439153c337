"""The simulator's subscribers: who joins, on which plan, contract and payment, and their hidden traits.

A :class:`WorldSpec` names the world (size, days, start, seed, scenario); :func:`draw_initial_population`
and :func:`draw_arrivals` draw subscribers with their plan, contract, payment method, region, age
band and gender, and their hidden traits: price factor (charge against list price), usage levels,
reception, late-payment probability, frailty and engagement. Every draw comes from
:func:`stream_rng` (seed, day, :class:`Stream`), so a world is reproducible day by day.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, timedelta
from enum import IntEnum
from typing import Any

import numpy as np

from tasks.data.sim_params import (
    AGE_P,
    ARRIVALS_PER_SUBSCRIBER_DAY,
    CONTRACT_P,
    DATA_MEDIAN_GB,
    DATA_SIGMA,
    DRIFT_DEPTH,
    ENGAGEMENT_PHI,
    ENGAGEMENT_RANGE,
    ENGAGEMENT_SIGMA,
    FRAILTY_SIGMA,
    GENDER_P,
    INITIAL_DRIFTING_SHARE,
    LATE_P_BY_PAYMENT,
    LATE_P_MAX,
    LATE_P_SIGMA,
    LIST_PRICE,
    PAYMENT_P,
    PLAN_P,
    PRICE_FACTOR_RANGE,
    PRICE_FACTOR_SIGMA,
    RECEPTION_SIGMA,
    REGION_P,
    SCENARIOS,
    TENURE_MAX_DAYS,
    TENURE_MEAN_DAYS,
    VOICE_MEDIAN_MIN,
    VOICE_SIGMA,
)


class Stream(IntEnum):
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
class PopulationState:
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

    def select(self, keep: np.ndarray) -> PopulationState:
        return PopulationState(
            **{
                f.name: getattr(self, f.name)[keep]
                if f.name not in _WINDOWS
                else getattr(self, f.name).select(keep)
                for f in fields(self)
            }
        )

    def extend(self, other: PopulationState) -> PopulationState:
        return PopulationState(
            **{
                f.name: np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                if f.name not in _WINDOWS
                else getattr(self, f.name).extend(getattr(other, f.name))
                for f in fields(self)
            }
        )


_WINDOWS = frozenset({"drops", "tickets", "lates"})

TableRows = dict[str, Any]


def stream_rng(seed: int, day: int, stream: Stream) -> np.random.Generator:
    return np.random.default_rng([seed, day, int(stream)])


def _choice(rng: np.random.Generator, p: tuple[float, ...], n: int) -> np.ndarray:
    """``n`` category codes (int8) drawn with probabilities ``p``."""
    cum = np.cumsum(p)
    return np.searchsorted(cum, rng.random(n) * cum[-1], side="right").astype(np.int8)


def list_charge(plan: np.ndarray, price_factor: np.ndarray) -> np.ndarray:
    return np.round(LIST_PRICE[plan] * price_factor, 2)


def _draw_subscribers(rng: np.random.Generator, first_id: int, signup_day: np.ndarray) -> PopulationState:
    """New subscribers' attributes and initial latent state, one per entry of ``signup_day``."""
    n = len(signup_day)
    plan = _choice(rng, PLAN_P, n)
    contract = _choice(rng, CONTRACT_P, n)
    payment = _choice(rng, PAYMENT_P, n)
    region = _choice(rng, REGION_P, n)
    age = _choice(rng, AGE_P, n)
    gender = _choice(rng, GENDER_P, n)
    price_factor = np.clip(np.exp(rng.normal(0.0, PRICE_FACTOR_SIGMA, n)), *PRICE_FACTOR_RANGE)
    base_data = DATA_MEDIAN_GB[plan] * np.exp(rng.normal(0.0, DATA_SIGMA, n))
    base_voice = VOICE_MEDIAN_MIN * np.exp(rng.normal(0.0, VOICE_SIGMA, n))
    reception = np.exp(rng.normal(0.0, RECEPTION_SIGMA, n))
    late_p = np.minimum(
        LATE_P_BY_PAYMENT[payment] * np.exp(rng.normal(0.0, LATE_P_SIGMA, n)), LATE_P_MAX
    )
    frailty = rng.normal(0.0, FRAILTY_SIGMA, n)
    stationary_sd = ENGAGEMENT_SIGMA / np.sqrt(1 - ENGAGEMENT_PHI**2)
    engagement = np.clip(1.0 + rng.normal(0.0, stationary_sd, n), *ENGAGEMENT_RANGE)
    drifting = rng.random(n) < INITIAL_DRIFTING_SHARE
    target = np.where(drifting, rng.uniform(*DRIFT_DEPTH, n), 1.0)
    return PopulationState(
        sid=np.arange(first_id, first_id + n, dtype=np.int64),
        signup_day=signup_day.astype(np.int32),
        plan=plan,
        contract=contract,
        payment=payment,
        region=region,
        age=age,
        gender=gender,
        price_factor=price_factor,
        charge=list_charge(plan, price_factor),
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


def draw_initial_population(spec: WorldSpec) -> PopulationState:
    """The ``spec.subscribers`` active on ``start``, ids in signup order (tenure 1 day..6 years)."""
    rng = stream_rng(spec.seed, 0, Stream.INITIAL)
    # Truncated exponential by inverse CDF: most tenures short, none beyond six years.
    u = rng.random(spec.subscribers)
    tail = 1.0 - np.exp(-TENURE_MAX_DAYS / TENURE_MEAN_DAYS)
    tenure = np.ceil(-TENURE_MEAN_DAYS * np.log1p(-u * tail)).clip(1, TENURE_MAX_DAYS)
    signup_day = np.sort(-tenure.astype(np.int32), kind="stable")
    return _draw_subscribers(rng, 1, signup_day)


def draw_arrivals(spec: WorldSpec, day: int, first_id: int) -> PopulationState:
    """Subscribers signing up on day ``day`` (Poisson), drawn from that day's own stream."""
    rng = stream_rng(spec.seed, day, Stream.ARRIVALS)
    n = int(rng.poisson(spec.subscribers * ARRIVALS_PER_SUBSCRIBER_DAY))
    return _draw_subscribers(rng, first_id, np.full(n, day, dtype=np.int32))
