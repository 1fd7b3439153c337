"""Train the churn model: split the training frame by time, fit LightGBM, apply the model again.

Plain typed functions (no Prefect, no MLflow): :func:`split_by_time` cuts the frame into train /
validation / holdout by snapshot day, with a label-horizon gap before validation so no churn event
is labelled on both sides (see there), :func:`train_model` fits a deterministic LightGBM booster
with early stopping on the validation slice, :func:`model_inputs` and :func:`predict_proba` turn
any frame with the same columns (training, holdout, nightly scoring) into model inputs and
probabilities with the categories fixed at training time.

Class imbalance (about 2.5% churn in 30 days) is handled by leaving the loss alone: no
``scale_pos_weight`` and no ``is_unbalance``. Reweighting the positives would push every
probability up by roughly the weight, and the retention file ranks by probability × monthly
charge (an expected loss), so probabilities must stay calibrated, not just ranked. Instead the
rare class is protected from overfitting by ``min_child_samples`` (a leaf needs that many rows,
so no leaf is fitted to a handful of churners), L2 regularisation, row and feature subsampling and
early stopping on the validation log loss; the model is judged on measures that respect the
imbalance (PR-AUC, precision / recall / lift at the retention team's daily capacity) beside
ROC-AUC, Brier score and calibration error (:mod:`tasks.training.evaluate`).
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.core.errors import ChurnError
from tasks.core.schema import PROTECTED_ATTRIBUTES
from tasks.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

LABEL = "churned_30d"
DAY = "snapshot_date"
KEY_COLUMNS = ("subscriber_id", DAY, "event_timestamp")

# Regularisation that is not worth a setting of its own; recorded in TrainedModel.params.
FEATURE_FRACTION = 0.9
BAGGING_FRACTION = 0.8
BAGGING_FREQ = 1
LAMBDA_L2 = 1.0


class TrainingDataError(ChurnError):
    """The training frame cannot be split or trained on (empty, too few days, a single class, …)."""


class FeatureListError(ChurnError):
    """The list of model inputs is not acceptable (protected attribute, label, key, missing column)."""


# ----------------------------------------------------------------------------- split


@dataclass(frozen=True)
class TimeSplit:
    """The training frame cut by snapshot day, oldest to newest: train, (purged), validation, holdout.

    Each slice keeps every column of the frame (keys, features, label, protected attributes), rows
    in the frame's order, index reset. ``*_days`` are the snapshot days of each slice, ascending;
    ``purged_days`` are the days between train and validation left out of every slice.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame
    train_days: list[date]
    validation_days: list[date]
    holdout_days: list[date]
    purged_days: list[date] = field(default_factory=list)


def to_pandas(frame: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """A pandas view of a frame; Arrow strings become (deduplicated) Python strings.

    Not categoricals: a categorical protected attribute would drag unobserved groups into every
    group-by downstream.
    """
    if isinstance(frame, pa.Table):
        return frame.to_pandas()
    return frame


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):  # includes pd.Timestamp
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).date()
    return date.fromisoformat(str(value))


def _day_codes(days: pd.Series) -> tuple[np.ndarray, list[date]]:
    """Per row, the index of its snapshot day in the ascending list of distinct days."""
    codes, uniques = pd.factorize(days, sort=True)
    if (codes < 0).any():
        raise TrainingDataError(f"{DAY} is null in {int((codes < 0).sum()):,} rows")
    return codes, [_as_date(u) for u in uniques]


def _fmt_days(days: Sequence[date]) -> str:
    return ", ".join(d.isoformat() for d in days)


def _column(frame: pa.Table | pd.DataFrame, name: str) -> pd.Series:
    """One column as pandas; Arrow dates as datetime64 (vectorised, no Python objects)."""
    if isinstance(frame, pa.Table):
        return frame.column(name).to_pandas(date_as_object=False)
    return frame[name]


def _rows(frame: pa.Table | pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    """The rows of ``mask`` as a pandas frame with a fresh index."""
    if isinstance(frame, pa.Table):
        return to_pandas(frame.filter(pa.array(mask)))
    return frame.loc[mask].reset_index(drop=True)


def _check_label(label: pd.Series) -> None:
    nulls = int(label.isna().sum())
    if nulls:
        raise TrainingDataError(f"{LABEL} is null in {nulls:,} rows")
    bad = int((~label.isin([0, 1])).sum())
    if bad:
        raise TrainingDataError(f"{LABEL} is not 0/1 in {bad:,} rows")


def _check_two_classes(name: str, part: pd.DataFrame, days: list[date]) -> None:
    positives = int(part[LABEL].sum())
    negatives = len(part) - positives
    if positives == 0 or negatives == 0:
        raise TrainingDataError(
            f"the {name} slice ({_fmt_days(days)}) has a single class: "
            f"{positives:,} churned and {negatives:,} not churned rows; "
            "a model can neither learn nor be judged on it"
        )


def split_by_time(
    frame: pa.Table | pd.DataFrame,
    holdout_snapshots: int,
    validation_snapshots: int,
    purge_days: int | None = None,
) -> TimeSplit:
    """Split the training frame by snapshot day, never at random.

    The newest ``holdout_snapshots`` distinct snapshot days are the out-of-time holdout, the
    ``validation_snapshots`` days just before them the early-stopping slice, and the older days
    the training slice, less the days within ``purge_days`` before the first validation day.

    Why the purge: a subscriber whose first day without service is c is labelled positive on every
    snapshot day in [c - horizon, c). Without a gap the same churn event is a positive in the last
    training days and in the validation (and holdout) days, with nearly the same features, so the
    booster is rewarded for recognising subscribers rather than risk: validation AUC rises above
    what the true probabilities achieve, early stopping runs long, and out-of-time probabilities
    fall well below the churn rate (on a simulated 3,000-subscriber world without the purge:
    validation AUC 0.88 where the true probabilities reach 0.79, and a mean holdout probability
    of 0.009 against a churn rate of 0.025).
    Keeping only training days ``d <= first validation day - purge_days`` (``purge_days`` = the
    label horizon) means no churn event is labelled in both, as in production, where the newest
    training label ends on the day scoring starts.

    Args:
        purge_days: gap before the validation slice; default ``label_horizon_days`` from settings.

    Raises:
        TrainingDataError: the frame is empty, lacks ``snapshot_date`` or ``churned_30d``, has
            null or non-0/1 labels, has too few snapshot days for the split, or a slice holds a
            single class.
    """
    if holdout_snapshots < 1 or validation_snapshots < 1:
        raise ValueError(
            f"holdout_snapshots and validation_snapshots must be at least 1, "
            f"got {holdout_snapshots} and {validation_snapshots}"
        )
    if purge_days is None:
        purge_days = get_settings().label_horizon_days
    if purge_days < 0:
        raise ValueError(f"purge_days must not be negative, got {purge_days}")
    columns = frame.column_names if isinstance(frame, pa.Table) else list(frame.columns)
    missing = [c for c in (DAY, LABEL) if c not in columns]
    if missing:
        raise TrainingDataError(f"the training frame lacks column(s) {', '.join(missing)}")
    if len(frame) == 0:
        raise TrainingDataError(
            "the training frame is empty: no subscriber in service on any snapshot day of the window"
        )
    _check_label(_column(frame, LABEL))
    codes, days = _day_codes(_column(frame, DAY))
    needed = holdout_snapshots + validation_snapshots + 1
    if len(days) < needed:
        raise TrainingDataError(
            f"the split needs at least {needed} snapshot days ({holdout_snapshots} holdout + "
            f"{validation_snapshots} validation + 1 training); the frame has {len(days)}: "
            f"{_fmt_days(days)}"
        )
    first_holdout = len(days) - holdout_snapshots
    first_validation = first_holdout - validation_snapshots
    last_train_day = days[first_validation] - timedelta(days=purge_days)
    train_end = bisect_right(days, last_train_day, hi=first_validation)
    if train_end == 0:
        raise TrainingDataError(
            f"no training snapshot day left: training days must be on or before {last_train_day} "
            f"({purge_days} days before the first validation day {days[first_validation]}, so "
            f"no churn is labelled in both); the frame's days are {_fmt_days(days)}"
        )
    slices = {
        "train": (0, train_end),
        "validation": (first_validation, first_holdout),
        "holdout": (first_holdout, len(days)),
    }
    # An Arrow frame is cut before conversion: purged days never reach pandas, and no
    # full-size pandas copy of the window exists beside its slices.
    frames = {name: _rows(frame, (codes >= lo) & (codes < hi)) for name, (lo, hi) in slices.items()}
    slice_days = {name: days[lo:hi] for name, (lo, hi) in slices.items()}
    for name, part in frames.items():
        _check_two_classes(name, part, slice_days[name])
    purged = days[train_end:first_validation]
    logger.info(
        "split by time: train %d rows (%s .. %s), %d day(s) purged, validation %d rows (%s), "
        "holdout %d rows (%s)",
        len(frames["train"]),
        slice_days["train"][0],
        slice_days["train"][-1],
        len(purged),
        len(frames["validation"]),
        _fmt_days(slice_days["validation"]),
        len(frames["holdout"]),
        _fmt_days(slice_days["holdout"]),
    )
    return TimeSplit(
        train=frames["train"],
        validation=frames["validation"],
        holdout=frames["holdout"],
        train_days=slice_days["train"],
        validation_days=slice_days["validation"],
        holdout_days=slice_days["holdout"],
        purged_days=purged,
    )


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


def train_model(split: TimeSplit, features: list[str], settings: Settings) -> TrainedModel:
    """Fit a LightGBM binary classifier on the train slice, early-stopped on the validation slice.

    Deterministic: the same split and settings give the same model text and predictions, bit for
    bit. Categorical features are handled natively with the categories of the train slice.

    With ``settings.trainer == "dask"``, :func:`tasks.training.train_dask.train_model_dask` fits it instead,
    on the cluster at ``settings.dask_address`` (a LocalCluster when unset).

    Raises:
        FeatureListError: ``features`` holds a protected attribute, the label or a key, or a
            column the frame lacks.
    """
    if settings.trainer == "dask":
        # Imported here: the local trainer never loads dask.
        from tasks.training.train_dask import dask_client, train_model_dask

        with dask_client(settings) as client:
            return train_model_dask(split, features, settings, client)
    spec = model_spec(split.train, features)
    params = model_params(settings)
    train_set = lgb.Dataset(
        model_inputs(split.train, spec),
        label=split.train[LABEL].to_numpy(dtype=np.float32),
        categorical_feature=spec.categorical,
        free_raw_data=True,
    )
    valid_set = lgb.Dataset(
        model_inputs(split.validation, spec),
        label=split.validation[LABEL].to_numpy(dtype=np.float32),
        categorical_feature=spec.categorical,
        reference=train_set,
        free_raw_data=True,
    )
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=settings.model_max_rounds,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[
            lgb.early_stopping(
                settings.model_early_stopping_rounds, first_metric_only=True, verbose=False
            )
        ],
    )
    best = booster.best_iteration or booster.current_iteration()
    logger.info(
        "trained on %d rows, %d features (%d categorical): best iteration %d of %d, "
        "validation log loss %.5f",
        len(split.train),
        len(spec.features),
        len(spec.categorical),
        best,
        booster.current_iteration(),
        booster.best_score["validation"]["binary_logloss"],
    )
    # Keep exactly the trees that predict: the model text is then the model, and the training
    # data the booster still references is released.
    final = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return TrainedModel(booster=final, spec=spec, params=params, best_iteration=best)


def predict_proba(
    model: TrainedModel | tuple[lgb.Booster, ModelSpec], frame: pa.Table | pd.DataFrame
) -> np.ndarray:
    """Churn probabilities (float64, one per row of ``frame``, same order)."""
    booster, spec = (model.booster, model.spec) if isinstance(model, TrainedModel) else model
    if len(frame) == 0:
        return np.empty(0, dtype=np.float64)
    return np.asarray(booster.predict(model_inputs(frame, spec)), dtype=np.float64)


def feature_importance(model: TrainedModel) -> pd.DataFrame:
    """Per feature: total gain and number of splits, highest gain first."""
    booster = model.booster
    return (
        pd.DataFrame(
            {
                "feature": booster.feature_name(),
                "gain": booster.feature_importance(importance_type="gain"),
                "splits": booster.feature_importance(importance_type="split"),
            }
        )
        .sort_values(["gain", "feature"], ascending=[False, True])
        .reset_index(drop=True)
    )
