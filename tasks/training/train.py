"""Train the churn model: split the training frame by time, fit LightGBM, apply the model again.

Plain typed functions (no Prefect, no MLflow): :func:`~tasks.training.time_split.split_by_time` cuts the frame into train /
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

The split is :mod:`tasks.training.time_split`; the model's inputs (:func:`~tasks.training.model_spec.model_inputs`)
and LightGBM's parameters, shared with the Dask trainer, are :mod:`tasks.training.model_spec`.
"""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.core.settings import Settings
from tasks.training.model_spec import (
    ModelSpec,
    TrainedModel,
    model_inputs,
    model_params,
    model_spec,
    recency_weights,
)
from tasks.training.time_split import LABEL, TimeSplit

logger = logging.getLogger(__name__)


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
        from tasks.core.cluster import dask_client
        from tasks.training.train_dask import train_model_dask

        with dask_client(settings) as client:
            return train_model_dask(split, features, settings, client)
    spec = model_spec(split.train, features)
    params = model_params(settings)
    train_set = lgb.Dataset(
        model_inputs(split.train, spec),
        label=split.train[LABEL].to_numpy(dtype=np.float32),
        weight=recency_weights(split.train, settings.training_recency_half_life_days),
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
    if settings.training_recency_half_life_days is not None:
        params = {**params, "recency_half_life_days": settings.training_recency_half_life_days}
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
