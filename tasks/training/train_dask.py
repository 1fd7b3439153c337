"""Train the churn model with LightGBM's Dask interface: the same recipe, fitted on a Dask cluster.

:func:`train_model_dask` is the ``trainer = "dask"`` twin of :func:`tasks.training.train.train_model`: the
same :class:`~tasks.training.model_spec.ModelSpec` (inputs and categories fixed on the train slice), the same
parameters (:func:`~tasks.training.model_spec.model_params`), the same patience on the validation log loss, and
the same result, a :class:`~tasks.training.model_spec.TrainedModel` whose booster holds exactly the trees that
predict, so the registry, scoring and :func:`~tasks.training.train.predict_proba` cannot tell them apart.
Only the fitting differs: ``lightgbm.dask`` runs LightGBM's data-parallel learner, one LightGBM
process per Dask worker, each on its share of the train rows, histograms summed over the network.

Two things ``lightgbm.dask`` does not do (LightGBM 4.x), and how this module makes up for them:

* Early stopping is not supported: a worker that stops alone leaves the others waiting on a socket
  (LightGBM issues #3712, #6351). The booster is grown to ``model_max_rounds`` instead, and the best
  iteration is chosen afterwards with the rule of ``lgb.early_stopping``.
* A worker's eval-set metrics cover only the validation rows on that worker (issue #6963), so the
  log loss per iteration is computed here, on the whole validation slice, from the fitted trees.

Determinism: for a given split, settings and number of workers the trees are the same run after
run (rows are dealt to workers, and workers ranked, in a fixed order; see :class:`_RankedClient`),
but they differ from the local model's and between worker counts: each worker bins its share of
the features and bags its rows on its own share of the data. The model text also names the
cluster's ports in its parameters, so it differs from run to run outside the trees.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from tasks.core.cluster import DaskClusterError
from tasks.core.settings import Settings
from tasks.training.model_spec import (
    TrainedModel,
    model_inputs,
    model_params,
    model_spec,
    recency_weights,
)
from tasks.training.time_split import LABEL, TimeSplit

if TYPE_CHECKING:
    from dask.distributed import Client

logger = logging.getLogger(__name__)

WEIGHT = "weight"
# LightGBM clips probabilities this far from 0 and 1 in its binary log loss.
_EPSILON = 1e-15


def train_model_dask(
    split: TimeSplit, features: list[str], settings: Settings, client: Client
) -> TrainedModel:
    """Fit the churn model with ``lightgbm.dask`` on ``client``'s workers; else as ``train_model``.

    The train rows are dealt to the workers in turn (row i to worker i mod n, one partition each,
    placed on its worker), so every worker holds a sample of every snapshot day. ``params`` of the
    result record ``trainer = "dask"``, the number of workers and their threads.

    Raises:
        FeatureListError: ``features`` holds a protected attribute, the label or a key, or a
            column the frame lacks.
        DaskClusterError: the cluster has no workers.
    """
    from lightgbm.dask import DaskLGBMClassifier

    spec = model_spec(split.train, features)
    threads = client.ncores()
    workers = sorted(threads)
    if not workers:
        raise DaskClusterError(f"the Dask cluster at {client.scheduler.address} has no workers")
    params = model_params(settings)
    # lightgbm.dask sets num_threads to each worker's thread count itself.
    params.pop("num_threads")
    params["tree_learner"] = "data"

    classifier = DaskLGBMClassifier(
        client=_RankedClient(client), n_estimators=settings.model_max_rounds, **params
    )
    parts = [
        model_inputs(split.train, spec),
        pd.Series(split.train[LABEL].to_numpy(dtype=np.float32), name=LABEL),
    ]
    weights = recency_weights(split.train, settings.training_recency_half_life_days)
    if weights is not None:
        parts.append(pd.Series(weights, name=WEIGHT))
    scattered = _scatter(client, workers, parts)
    try:
        collections = _collections(scattered, parts)
        with warnings.catch_warnings():
            # Raised on every fit: the scikit-learn wrapper always passes n_jobs, Dask sets it.
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            classifier.fit(
                collections[0],
                collections[1],
                sample_weight=collections[2] if weights is not None else None,
            )
    finally:
        # Held until the fit is done (a released future's rows leave the workers), then freed.
        client.cancel([future for shares in scattered for future in shares])
    booster = classifier.booster_

    losses = validation_log_loss(
        booster,
        model_inputs(split.validation, spec),
        split.validation[LABEL].to_numpy(dtype=np.float64),
    )
    best = best_iteration(losses, settings.model_early_stopping_rounds)
    logger.info(
        "trained with lightgbm.dask on %d worker(s), %d rows, %d features (%d categorical): "
        "best iteration %d of %d, validation log loss %.5f",
        len(workers),
        len(split.train),
        len(spec.features),
        len(spec.categorical),
        best,
        booster.current_iteration(),
        losses[best - 1],
    )
    final = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    recorded = params | {
        "trainer": "dask",
        "dask_workers": len(workers),
        "dask_threads_per_worker": max(threads.values()),
    }
    if weights is not None:
        recorded["recency_half_life_days"] = settings.training_recency_half_life_days
    return TrainedModel(booster=final, spec=spec, params=recorded, best_iteration=best)


def _scatter(
    client: Client, workers: list[str], parts: Sequence[pd.DataFrame | pd.Series]
) -> list[tuple[Any, ...]]:
    """Per worker, futures of its share of each of ``parts`` (inputs, label, and the weights
    when there are any), already on that worker.

    Row i goes to worker i mod n. Placed explicitly: left to the scheduler, two small partitions
    may land on one worker, which would then train alone. Not hashed: each fit has its own keys.
    """
    out = []
    for rank, worker in enumerate(workers):
        rows = np.arange(rank, len(parts[0]), len(workers))
        out.append(
            tuple(
                client.scatter(part.iloc[rows].reset_index(drop=True), workers=[worker], hash=False)
                for part in parts
            )
        )
    return out


def _collections(
    scattered: list[tuple[Any, ...]], parts: Sequence[pd.DataFrame | pd.Series]
) -> list[Any]:
    """The scattered shares as one Dask collection per part (inputs: a DataFrame; the label and
    the weights: Series)."""
    import dask.dataframe as dd

    return [
        dd.from_delayed([shares[i] for shares in scattered], meta=part.iloc[:0], verify_meta=False)
        for i, part in enumerate(parts)
    ]


class _RankedClient:
    """``client`` for lightgbm.dask, with ``who_has`` answering in the order of the parts asked.

    lightgbm.dask ranks its LightGBM processes in the order ``who_has`` lists the training parts,
    and Dask answers in the order of a set of random keys, so the rank of each worker changed from
    fit to fit. The rank matters: each process bins its share of the features on its own rows, so
    the bins, and the model, followed the order (measured: two models alternating on the same
    data). In parts order, rank r always trains on the r-th share of the rows.
    """

    def __init__(self, client: Client):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def who_has(self, futures: list[Any], **kwargs: Any) -> dict[Any, Any]:
        answer = self._client.who_has(futures, **kwargs)
        return {f.key: answer[f.key] for f in futures if f.key in answer}


def validation_log_loss(
    booster: lgb.Booster, inputs: pd.DataFrame, label: np.ndarray
) -> np.ndarray:
    """LightGBM's binary log loss of ``booster`` on all of ``inputs``, after each iteration.

    ``inputs`` as :func:`~tasks.training.model_spec.model_inputs` gives them, with the categories of training.
    """
    # What LightGBM makes of a pandas frame, made once rather than on each of the predict calls
    # below: category codes (-1, missing, as NaN) and numbers, as float64.
    matrix = np.column_stack(
        [
            np.where(column.cat.codes < 0, np.nan, column.cat.codes)
            if isinstance(column.dtype, pd.CategoricalDtype)
            else column.to_numpy(dtype=np.float64)
            for _, column in inputs.items()
        ]
    )
    raw = np.zeros(len(inputs), dtype=np.float64)
    losses = np.empty(booster.current_iteration(), dtype=np.float64)
    for i in range(len(losses)):
        # The first tree carries the initial score (boost_from_average): the sum is the raw score.
        raw += booster.predict(matrix, start_iteration=i, num_iteration=1, raw_score=True)
        p = np.clip(1.0 / (1.0 + np.exp(-raw)), _EPSILON, 1.0 - _EPSILON)
        losses[i] = -np.mean(label * np.log(p) + (1.0 - label) * np.log(1.0 - p))
    return losses


def best_iteration(losses: np.ndarray, patience: int) -> int:
    """The 1-based iteration ``lgb.early_stopping(patience)`` would keep for this log-loss curve.

    The best is the first iteration with the lowest loss seen so far; the search stops once
    ``patience`` iterations in a row have not improved on it.
    """
    if len(losses) == 0:
        raise ValueError("no iteration to choose from: the log-loss curve is empty")
    best = 0
    for i in range(1, len(losses)):
        if losses[i] < losses[best]:
            best = i
        elif i - best >= patience:
            break
    return best + 1
