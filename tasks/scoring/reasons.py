"""Reason codes: why the model put a subscriber at risk, from LightGBM's own SHAP contributions.

``predict(..., pred_contrib=True)`` gives, per row, one additive contribution per feature plus
the expected value, summing to the raw score (log-odds). The reasons are the features that push
the risk up the most, said in plain words with the subscriber's value ("6 support calls in 30
days"), for the retention agent who makes the call. It costs about 150 plain predictions per row,
so it runs for the few subscribers who can reach the high-risk file, not for the whole base.
The words of each feature are its ``reason`` in ``feature_repo/features.yaml``.
"""

from __future__ import annotations

import math
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from tasks.features.definitions import feature_definitions, render_reason


def reason_text(feature: str, value: Any) -> str:
    """One reason in plain words (the feature's reason template); a missing value says so, and a
    feature without a definition is said as ``name = value``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"no {feature.replace('_', ' ')} on record"
    definition = feature_definitions().features.get(feature)
    return render_reason(definition.reason, value) if definition else f"{feature} = {value}"


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
