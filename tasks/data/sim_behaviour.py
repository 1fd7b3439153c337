"""The simulator's days: usage, bills, support tickets, plan changes, and the churn hazard they drive.

What one day of a subscriber brings (``_Simulator.step`` in :mod:`tasks.data.simulate` runs the
day): usage and dropped calls, bills and late payments, tickets, plan changes, the price shock.
The daily churn hazard (formula in :mod:`tasks.data.simulate`'s docstring) comes from contract,
tenure, price, dropped calls, late bills, tickets of the last 30 days, engagement, age band and
frailty, so a good model has something real to learn and the true 30-day probability is known.
A churner's reason names the strongest driver, "moved" for life events, "other" when none leads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tasks.core.schema import (
    AGE_BANDS,
    CANCEL_REASONS,
    CONTRACT_TYPES,
    GENDERS,
    PAYMENT_METHODS,
    REGIONS,
)
from tasks.data.sim_params import (
    BILL_EVERY_DAYS,
    DATA_NOISE,
    DAYS_LATE_P,
    DRIFT_DEPTH,
    DRIFT_ONSET_P,
    DRIFT_RECOVER_P,
    DRIVER_REASONS,
    DUE_AFTER_DAYS,
    ENGAGEMENT_PHI,
    ENGAGEMENT_RANGE,
    ENGAGEMENT_SIGMA,
    H_AGE_EFFECT,
    H_BASE,
    H_CONTRACT,
    H_DROPS,
    H_ENGAGEMENT,
    H_LATE,
    H_NEW,
    H_NEW_DAYS,
    H_PRICE,
    HORIZON_DAYS,
    LIST_PRICE,
    MINUTES_PER_CALL,
    MOVED_P,
    OUTAGE_FACTOR,
    OUTAGE_P,
    PLAN_CHANGE_P,
    PLAN_NAMES,
    REASON_MIN_DRIVER,
    REGION_DAY_SIGMA,
    REGION_DROP_RATE,
    SHOCK_FACTOR,
    SHOCK_SHARE,
    TICKET_LOGIT,
    TYPICAL_DROPS_30D,
    UPGRADE_P,
    VOICE_NOISE,
)
from tasks.data.sim_population import PopulationState, TableRows

# --------------------------------------------------------------------------------------------
# One day
# --------------------------------------------------------------------------------------------


def labels(names: tuple[str, ...], codes: np.ndarray) -> pa.Array:
    """Category codes as an Arrow string array."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(names)).cast(
        pa.string()
    )


def subscriber_rows(s: PopulationState, epoch_day0: int) -> TableRows:
    return {
        "subscriber_id": s.sid,
        "signup_date": s.signup_day + epoch_day0,
        "plan": labels(PLAN_NAMES, s.plan),
        "contract_type": labels(CONTRACT_TYPES, s.contract),
        "payment_method": labels(PAYMENT_METHODS, s.payment),
        "monthly_charge": s.charge,
        "region": labels(REGIONS, s.region),
        "age_band": labels(AGE_BANDS, s.age),
        "gender": labels(GENDERS, s.gender),
    }


def apply_price_shock(s: PopulationState, rng: np.random.Generator) -> np.ndarray:
    """Raise the charge of a random share of subscribers; returns who was hit."""
    hit = rng.random(len(s)) < SHOCK_SHARE
    s.price_factor = np.where(hit, s.price_factor * SHOCK_FACTOR, s.price_factor)
    return hit


def change_plans(s: PopulationState, day: int, rng: np.random.Generator, frozen: np.ndarray) -> np.ndarray:
    """Rare upgrades and downgrades (not on signup day, not for ``frozen``); returns who changed."""
    n = len(s)
    change = (rng.random(n) < PLAN_CHANGE_P) & ~frozen & (s.signup_day < day)
    up = rng.random(n) < UPGRADE_P
    top = len(PLAN_NAMES) - 1
    up = np.where(s.plan == 0, True, np.where(s.plan == top, False, up))
    s.plan = np.where(change, s.plan + np.where(up, 1, -1), s.plan).astype(np.int8)
    return change


def step_engagement(s: PopulationState, rng: np.random.Generator) -> None:
    """One AR(1) step towards each subscriber's target; some start drifting down, some recover."""
    n = len(s)
    onset = rng.random(n) < DRIFT_ONSET_P
    recover = rng.random(n) < DRIFT_RECOVER_P
    depth = rng.uniform(*DRIFT_DEPTH, n)
    noise = rng.standard_normal(n)
    steady = s.engagement_target >= 1.0
    s.engagement_target = np.where(
        steady, np.where(onset, depth, 1.0), np.where(recover, 1.0, s.engagement_target)
    )
    t = s.engagement_target
    s.engagement = np.clip(
        t + ENGAGEMENT_PHI * (s.engagement - t) + ENGAGEMENT_SIGMA * noise, *ENGAGEMENT_RANGE
    )


def region_quality(rng: np.random.Generator) -> np.ndarray:
    """Each region's dropped-call multiplier today: day-to-day noise and the odd outage."""
    k = len(REGIONS)
    factor = np.exp(rng.normal(0.0, REGION_DAY_SIGMA, k))
    return np.where(rng.random(k) < OUTAGE_P, factor * OUTAGE_FACTOR, factor)


def usage_day(
    s: PopulationState, rng: np.random.Generator, quality: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Today's data (GB), voice minutes and dropped calls, before any observation shift."""
    n = len(s)
    # Log-normal noise with mean 1 so engagement sets the expected usage.
    data = s.base_data * s.engagement * np.exp(rng.normal(-(DATA_NOISE**2) / 2, DATA_NOISE, n))
    voice = (
        s.base_voice * s.engagement * np.exp(rng.normal(-(VOICE_NOISE**2) / 2, VOICE_NOISE, n))
    )
    rate = voice / MINUTES_PER_CALL * REGION_DROP_RATE[s.region] * quality[s.region] * s.reception
    drops = np.minimum(rng.poisson(rate), 500).astype(np.int32)
    return data, voice, drops


def overcharge_day(s: PopulationState) -> np.ndarray:
    """Monthly charge over the current plan's list price (1 = list price)."""
    return s.charge / LIST_PRICE[s.plan]


def open_tickets(
    s: PopulationState, rng: np.random.Generator, ratio: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Who opens a ticket today (at most one each) and its category, driven by recent trouble."""
    n = len(s)
    over = np.maximum(ratio - 1.0, 0.0)
    low = np.maximum(1.0 - s.engagement, 0.0)
    c = TICKET_LOGIT
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


def bill_day(s: PopulationState, day: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Who is billed today and each bill's days late (0 = on time); schedules when it is known."""
    since = day - s.signup_day
    billed = (since > 0) & (since % BILL_EVERY_DAYS == 0)
    idx = np.flatnonzero(billed)
    late = rng.random(len(idx)) < s.late_p[idx]
    days_late = (
        np.where(late, rng.geometric(DAYS_LATE_P, len(idx)), 0).clip(0, 365).astype(np.int32)
    )
    s.late_known_day[idx[late]] = day + DUE_AFTER_DAYS + 1
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


def daily_hazard(s: PopulationState, day: int, ratio: np.ndarray, ticket_coef: float) -> _Hazard:
    """The daily churn hazard of every active subscriber (formula in tasks.data.simulate's docstring)."""
    tenure = (day - s.signup_day).astype(np.float64)
    price = H_PRICE * (ratio - 1.0)
    late = H_LATE * s.lates.total
    tickets = ticket_coef * s.tickets.total
    drops = H_DROPS * np.log1p(s.drops.total)
    engagement = H_ENGAGEMENT * np.maximum(1.0 - s.engagement, 0.0)
    observable = (
        H_BASE
        + H_CONTRACT[s.contract]
        + H_NEW * np.exp(-tenure / H_NEW_DAYS)
        + price
        + late
        + tickets
        + drops
        + engagement
    )
    logit = observable + s.frailty + H_AGE_EFFECT[s.age]
    return _Hazard(
        h=1.0 / (1.0 + np.exp(-logit)),
        h_observable=1.0 / (1.0 + np.exp(-observable)),
        price=np.maximum(price, 0.0) + late,
        service=tickets + np.maximum(drops - H_DROPS * np.log1p(TYPICAL_DROPS_30D), 0.0),
        competitor=engagement,
    )


def prob_30d(h: np.ndarray) -> np.ndarray:
    """``1 - (1 - h)^30`` as float32, without losing precision for tiny ``h``."""
    return (-np.expm1(HORIZON_DAYS * np.log1p(-h))).astype(np.float32)


def cancel_reasons(hz: _Hazard, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reason codes for the churners ``idx``: the dominant driver, a move, or "other"."""
    drivers = np.column_stack([hz.price[idx], hz.service[idx], hz.competitor[idx]])
    reason = DRIVER_REASONS[np.argmax(drivers, axis=1)]
    reason = np.where(
        drivers.max(axis=1, initial=0.0) < REASON_MIN_DRIVER, CANCEL_REASONS.index("other"), reason
    )
    moved = rng.random(len(idx)) < MOVED_P
    return np.where(moved, CANCEL_REASONS.index("moved"), reason).astype(np.int8)
