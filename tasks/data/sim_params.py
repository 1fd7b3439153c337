"""The simulator's parameters: signup mix, latent behaviour, events, the churn hazard, the scenarios.

One place for every number the simulated world is made of (the module docstring of
:mod:`tasks.data.simulate` explains the hazard they drive). Change one and the same spec gives
other rows: bump ``GENERATOR_VERSION`` there.
"""

from __future__ import annotations

from datetime import date

import numpy as np

from tasks.core.schema import (
    AGE_BANDS,
    CANCEL_REASONS,
    PLANS,
)

SCENARIOS = ("baseline", "price_shock", "usage_shift", "support_decline")

EPOCH = date(1970, 1, 1)
PLAN_NAMES = tuple(PLANS)
LIST_PRICE = np.array([PLANS[p] for p in PLAN_NAMES])

# --- Attributes at signup -----------------------------------------------------------------
PLAN_P = (0.30, 0.35, 0.20, 0.15)
CONTRACT_P = (0.50, 0.25, 0.25)
PAYMENT_P = (0.45, 0.35, 0.20)
REGION_P = (0.22, 0.20, 0.20, 0.18, 0.20)
AGE_P = (0.12, 0.22, 0.20, 0.18, 0.15, 0.13)
GENDER_P = (0.48, 0.48, 0.04)
PRICE_FACTOR_SIGMA = 0.12  # promotions below list price, surcharges above; clipped to 0.8..1.3
PRICE_FACTOR_RANGE = (0.8, 1.3)
TENURE_MEAN_DAYS = 700.0  # initial population: truncated exponential, more short tenure
TENURE_MAX_DAYS = 6 * 365
ARRIVALS_PER_SUBSCRIBER_DAY = 0.0008

# --- Latent state -------------------------------------------------------------------------
DATA_MEDIAN_GB = np.array([0.4, 1.0, 2.0, 3.5])  # per plan, per day
DATA_SIGMA, DATA_NOISE = 0.6, 0.5
VOICE_MEDIAN_MIN, VOICE_SIGMA, VOICE_NOISE = 25.0, 0.6, 0.5
MINUTES_PER_CALL = 3.0
REGION_DROP_RATE = np.array([0.010, 0.018, 0.014, 0.026, 0.012])  # dropped calls per call
RECEPTION_SIGMA = 0.6
REGION_DAY_SIGMA, OUTAGE_P, OUTAGE_FACTOR = 0.15, 0.01, 5.0
ENGAGEMENT_PHI, ENGAGEMENT_SIGMA = 0.97, 0.03
ENGAGEMENT_RANGE = (0.02, 2.0)
DRIFT_ONSET_P, DRIFT_RECOVER_P = 0.0008, 0.004
DRIFT_DEPTH = (0.15, 0.6)
INITIAL_DRIFTING_SHARE = 0.03
LATE_P_BY_PAYMENT = np.array([0.01, 0.05, 0.12])  # autopay rarely late
LATE_P_SIGMA, LATE_P_MAX = 0.7, 0.8
DAYS_LATE_P = 0.2  # days_late ~ geometric, mean 5
FRAILTY_SIGMA = 0.5

# --- Events ---------------------------------------------------------------------------------
BILL_EVERY_DAYS, DUE_AFTER_DAYS = 30, 14
PLAN_CHANGE_P, UPGRADE_P = 0.0006, 0.55
TICKET_LOGIT = {"base": -5.9, "drops": 0.35, "over": 2.0, "low": 1.5, "late": 0.4}

# --- Churn hazard (see module docstring) ---------------------------------------------------
H_BASE = -7.6
H_CONTRACT = np.array([0.0, -1.2, -2.0])
H_NEW, H_NEW_DAYS = 1.0, 120.0
H_PRICE, H_TICKETS, H_LATE, H_ENGAGEMENT, H_DROPS = 2.5, 0.35, 0.30, 2.5, 0.25
_H_YOUNG_BAND, _H_YOUNG = "18-24", 0.25
H_AGE_EFFECT = np.where(np.array(AGE_BANDS) == _H_YOUNG_BAND, _H_YOUNG, 0.0)
MOVED_P = 0.12  # life events: churn whatever the drivers
REASON_MIN_DRIVER = 0.25  # below this no driver dominates and the reason is "other"
TYPICAL_DROPS_30D = 6  # everyone drops a few calls; only the excess over this names "service"
HORIZON_DAYS = 30

# --- Scenarios ------------------------------------------------------------------------------
SHOCK_SHARE, SHOCK_FACTOR = 0.30, 1.25
SHIFT_DATA, SHIFT_VOICE = 1.6, 0.8
SUPPORT_DECLINE_FACTOR = 2.5


DRIVER_REASONS = np.array([CANCEL_REASONS.index(r) for r in ("price", "service", "competitor")])
