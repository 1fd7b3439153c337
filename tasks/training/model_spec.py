"""What both trainers share: the model's inputs (:class:`ModelSpec`), their encoding, LightGBM's parameters.

:func:`model_spec` fixes the inputs and each categorical feature's categories on the train slice
(protected attributes, the label and keys are refused); :func:`model_inputs` turns any frame into
exactly those columns with those categories; :func:`model_params` is the one parameter set of the
local trainer (``tasks.training.train``) and the Dask one (``tasks.training.train_dask``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.core.errors import ChurnError
from tasks.core.schema import PROTECTED_ATTRIBUTES
from tasks.core.settings import Settings
from tasks.training.time_split import KEY_COLUMNS, LABEL, to_pandas

# Regularisation that is not worth a setting of its own; recorded in TrainedModel.params.
FEATURE_FRACTION = 0.9
BAGGING_FRACTION = 0.8
BAGGING_FREQ = 1
LAMBDA_L2 = 1.0


class FeatureListError(ChurnError):
    """The list of model inputs is not acceptable (protected attribute, label, key, missing column)."""


# ----------------------------------------------------------------------------- model inputs


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs to be applied again: its inputs in order and the categories seen in training."""

    features: list[str]
    categorical: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    """Per categorical feature, its values in the training slice, sorted; others become NaN."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored beside the model artifact)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            features=list(data["features"]),
            categorical=list(data.get("categorical", [])),
            categories={k: list(v) for k, v in data.get("categories", {}).items()},
        )


def check_features(features: Sequence[str]) -> None:
    """Refuse protected attributes, the label and the keys as model inputs, and duplicates.

    Raises:
        FeatureListError: naming every offending column.
    """
    if not features:
        raise FeatureListError("the feature list is empty")
    protected = [f for f in features if f in PROTECTED_ATTRIBUTES]
    if protected:
        raise FeatureListError(
            f"protected attribute(s) {', '.join(protected)} may never be model inputs "
            "(they are kept for the fairness evaluation only)"
        )
    leaking = [f for f in features if f == LABEL or f in KEY_COLUMNS]
    if leaking:
        raise FeatureListError(f"label or key column(s) {', '.join(leaking)} cannot be features")
    duplicated = sorted({f for f in features if list(features).count(f) > 1})
    if duplicated:
        raise FeatureListError(f"feature(s) listed more than once: {', '.join(duplicated)}")


def _is_categorical(series: pd.Series) -> bool:
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return True
    if isinstance(dtype, pd.ArrowDtype):
        return pa.types.is_string(dtype.pyarrow_dtype) or pa.types.is_large_string(
            dtype.pyarrow_dtype
        )
    return pd.api.types.is_string_dtype(dtype) or dtype == object


def _observed_values(series: pd.Series) -> list[str]:
    """Sorted distinct non-null values of a string-like column."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        values = series.cat.remove_unused_categories().cat.categories
    else:
        values = series.dropna().unique()
    return sorted(str(v) for v in values)


def model_spec(train: pd.DataFrame, features: Sequence[str]) -> ModelSpec:
    """The spec of a model trained on ``train``: string columns are categorical, with their observed values.

    Raises:
        FeatureListError: a feature is protected, a key or the label, or not in the frame.
    """
    check_features(features)
    missing = [f for f in features if f not in train.columns]
    if missing:
        raise FeatureListError(f"feature(s) not in the training frame: {', '.join(missing)}")
    categorical = [f for f in features if _is_categorical(train[f])]
    return ModelSpec(
        features=list(features),
        categorical=categorical,
        categories={f: _observed_values(train[f]) for f in categorical},
    )


def model_inputs(frame: pa.Table | pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The model's input matrix for ``frame``: the spec's features, in the spec's order.

    Categorical features become pandas ``Categorical`` with the training categories (a value
    unseen in training becomes NaN, which LightGBM treats as missing); numeric features become
    float32 (the frame's floats are float32 and its counts small integers, so nothing is lost),
    nulls as NaN. Same rows and order as ``frame``.

    Raises:
        FeatureListError: ``frame`` lacks a feature of the spec.
    """
    if isinstance(frame, pa.Table):
        present = [f for f in spec.features if f in frame.column_names]
        frame = to_pandas(frame.select(present))
    missing = [f for f in spec.features if f not in frame.columns]
    if missing:
        raise FeatureListError(f"the frame lacks model input(s) {', '.join(missing)}")
    categorical = set(spec.categorical)
    columns: dict[str, Any] = {}
    for name in spec.features:
        series = frame[name]
        if name in categorical:
            values = (
                series if isinstance(series.dtype, pd.CategoricalDtype) else series.astype("object")
            )
            columns[name] = pd.Categorical(values, categories=spec.categories[name])
        else:
            columns[name] = series.to_numpy(dtype=np.float32, na_value=np.nan)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(frame)))


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainedModel:
    """A fitted booster (exactly ``best_iteration`` trees), its input spec and training parameters."""

    booster: lgb.Booster
    spec: ModelSpec
    params: dict[str, Any]
    best_iteration: int


def model_params(settings: Settings) -> dict[str, Any]:
    """LightGBM parameters from settings: binary objective, deterministic, fixed seeds and threads."""
    seed = settings.model_seed
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": settings.model_learning_rate,
        "num_leaves": settings.model_num_leaves,
        "min_child_samples": settings.model_min_child_samples,
        "lambda_l2": LAMBDA_L2,
        "feature_fraction": FEATURE_FRACTION,
        "bagging_fraction": BAGGING_FRACTION,
        "bagging_freq": BAGGING_FREQ,
        # Determinism: every seed fixed, fixed threads, row-wise histograms, deterministic sums.
        "seed": seed,
        "bagging_seed": seed,
        "feature_fraction_seed": seed,
        "data_random_seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": settings.model_threads,
        "verbosity": -1,
    }


def recency_weights(train: pd.DataFrame, half_life_days: float | None) -> np.ndarray | None:
    """0.5 ** (days before the newest training snapshot / half-life) per row; None: equal weights."""
    if half_life_days is None:
        return None
    days = pd.to_datetime(train["snapshot_date"])
    age = (days.max() - days).dt.days.to_numpy(dtype=np.float64)
    return np.power(0.5, age / half_life_days).astype(np.float32)
