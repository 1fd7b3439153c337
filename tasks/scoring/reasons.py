"""Reason codes: why the model put a subscriber at risk, from LightGBM's own SHAP contributions.

``predict(..., pred_contrib=True)`` gives, per row, one additive contribution per feature plus
the expected value, summing to the raw score (log-odds). The reasons are the features that push
the risk up the most, said in plain words with the subscriber's value ("6 support calls in 30
days"), for the retention agent who makes the call. It costs about 150 plain predictions per row,
so it runs for the few subscribers who can reach the high-risk file, not for the whole base.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd


def _count(template: str) -> Callable[[Any], str]:
    return lambda v: template.format(n=int(v), s="" if int(v) == 1 else "s")


# Plain words per feature of churn_model_v1; a feature missing here is said as "name = value".
REASON_TEXT: dict[str, Callable[[Any], str]] = {
    "tenure_days": lambda v: f"joined {int(v)} days ago",
    "plan": lambda v: f"on the {v} plan",
    "contract_type": lambda v: f"{str(v).replace('_', '-')} contract",
    "payment_method": lambda v: f"pays by {str(v).replace('_', ' ')}",
    "monthly_charge": lambda v: f"pays {v:.2f} a month",
    "charge_to_list_ratio": lambda v: f"charged {v:.0%} of the plan's list price",
    "charge_change_90d": lambda v: f"monthly charge changed by {v:+.2f} in 90 days",
    "plan_changes_90d": _count("{n} plan change{s} in 90 days"),
    "data_gb_7d": lambda v: f"{v:.1f} GB of data in 7 days",
    "data_gb_30d": lambda v: f"{v:.1f} GB of data in 30 days",
    "data_trend_7d_30d": lambda v: f"data use at {v:.0%} of its 30-day pace this week",
    "voice_minutes_7d": lambda v: f"{v:.0f} call minutes in 7 days",
    "voice_minutes_30d": lambda v: f"{v:.0f} call minutes in 30 days",
    "dropped_calls_30d": _count("{n} dropped call{s} in 30 days"),
    "active_days_30d": lambda v: f"active on {int(v)} of the last 30 days",
    "support_calls_7d": _count("{n} support call{s} in 7 days"),
    "support_calls_30d": _count("{n} support call{s} in 30 days"),
    "network_tickets_30d": _count("{n} network complaint{s} in 30 days"),
    "late_payments_90d": _count("{n} late payment{s} in 90 days"),
    "bills_90d": _count("{n} bill{s} in 90 days"),
    # churn_model_v2: usage relative to the subscriber's own baseline (days d-89 .. d-30).
    "data_gb_per_day_90d": lambda v: f"{v:.1f} GB of data a day over 90 days",
    "voice_minutes_per_day_90d": lambda v: f"{v:.0f} call minutes a day over 90 days",
    "data_ratio_30d_baseline": lambda v: (
        f"data use at {v:.0%} of their own usual level over 30 days"
    ),
    "data_ratio_14d_baseline": lambda v: (
        f"data use at {v:.0%} of their own usual level over 14 days"
    ),
    "data_ratio_7d_baseline": lambda v: f"data use at {v:.0%} of their own usual level over 7 days",
    "voice_ratio_30d_baseline": lambda v: f"calls at {v:.0%} of their own usual level over 30 days",
    "voice_ratio_14d_baseline": lambda v: f"calls at {v:.0%} of their own usual level over 14 days",
    "voice_ratio_7d_baseline": lambda v: f"calls at {v:.0%} of their own usual level over 7 days",
    "usage_ratio_30d_baseline": lambda v: (
        f"phone use at {v:.0%} of their own usual level over 30 days"
    ),
    "usage_ratio_14d_baseline": lambda v: (
        f"phone use at {v:.0%} of their own usual level over 14 days"
    ),
    "usage_ratio_7d_baseline": lambda v: (
        f"phone use at {v:.0%} of their own usual level over 7 days"
    ),
}


def reason_text(feature: str, value: Any) -> str:
    """One reason in plain words; a missing value says so."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"no {feature.replace('_', ' ')} on record"
    say = REASON_TEXT.get(feature)
    return say(value) if say else f"{feature} = {value}"


def contributions(booster: lgb.Booster, inputs: pd.DataFrame) -> np.ndarray:
    """SHAP contributions per row: one column per feature, then the expected value (log-odds)."""
    if len(inputs) == 0:
        return np.empty((0, inputs.shape[1] + 1))
    return np.asarray(booster.predict(inputs, pred_contrib=True), dtype=np.float64)


def top_reasons(booster: lgb.Booster, inputs: pd.DataFrame, count: int) -> list[list[str]]:
    """Per row of ``inputs``, up to ``count`` reasons: the features that raise the risk most.

    Only features with a positive contribution are reasons (a subscriber with fewer risk-raising
    features gets fewer reasons); ties go to the feature listed first, so the order is stable.
    """
    contrib = contributions(booster, inputs)[:, :-1]
    names = list(inputs.columns)
    # Stable sort on the negated contribution: largest first, ties by feature order.
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :count]
    reasons: list[list[str]] = []
    for row, picks in enumerate(order):
        said = [
            reason_text(names[j], _value(inputs.iat[row, j])) for j in picks if contrib[row, j] > 0
        ]
        reasons.append(said)
    return reasons


def _value(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value
