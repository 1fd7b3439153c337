"""The Dask trainer: lightgbm.dask on a real LocalCluster against the local trainer, same split."""

from __future__ import annotations

import time
from collections.abc import Iterator

import lightgbm as lgb
import numpy as np
import pytest
from dask.distributed import Client, LocalCluster

from tasks.core.cluster import DaskClusterError, dask_client
from tasks.core.errors import ChurnError
from tasks.core.settings import Settings
from tasks.training.evaluate import holdout_metrics
from tasks.training.model_spec import TrainedModel, model_inputs, model_params, model_spec
from tasks.training.time_split import LABEL, TimeSplit, split_by_time
from tasks.training.train import predict_proba, train_model
from tasks.training.train_dask import best_iteration, train_model_dask, validation_log_loss
from tests.unit.training.test_train import FEATURES, make_frame

pytestmark = pytest.mark.integration

# 12 weekly days × 4,500 rows: 36,000 train, 9,000 validation, 9,000 holdout rows (~800 churners).
DAYS, PER_DAY = 12, 4_500


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"model_max_rounds": 300, "model_early_stopping_rounds": 30}
    return Settings(**(values | overrides))


def trees(model: TrainedModel) -> str:
    """The model text without its parameters, which name the cluster's ports."""
    text = model.booster.model_to_string()
    return text[: text.index("end of trees")]


def auc(model: TrainedModel, split: TimeSplit) -> float:
    holdout = split.holdout
    p = predict_proba(model, holdout)
    return holdout_metrics(holdout[LABEL], p, holdout["snapshot_date"], capacity=100)["roc_auc"]


@pytest.fixture(scope="module")
def split() -> TimeSplit:
    return split_by_time(make_frame(days=DAYS, per_day=PER_DAY, seed=5), 2, 2, purge_days=0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two worker processes of one thread each, as on the 2-core CI machine."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def timed(split: TimeSplit, client: Client) -> dict[str, tuple[TrainedModel, float]]:
    """The local and the Dask model of the same split and settings, with their training seconds."""
    out = {}
    for name, train in (
        ("local", lambda: train_model(split, FEATURES, settings())),
        ("dask", lambda: train_model_dask(split, FEATURES, settings(), client)),
    ):
        start = time.perf_counter()
        model = train()
        out[name] = (model, time.perf_counter() - start)
    return out


def test_the_dask_model_is_as_good_as_the_local_one(split, timed):
    (local, local_s), (dask, dask_s) = timed["local"], timed["dask"]

    local_auc, dask_auc = auc(local, split), auc(dask, split)
    print(
        f"holdout AUC local {local_auc:.4f} ({local.best_iteration} trees, {local_s:.1f} s), "
        f"dask {dask_auc:.4f} ({dask.best_iteration} trees, {dask_s:.1f} s)"
    )

    assert local_auc > 0.78
    assert abs(dask_auc - local_auc) < 0.005
    # Not the same model: each worker bins its share of the features on its own rows.
    assert trees(dask) != trees(local)


def test_the_dask_model_is_a_plain_trained_model_with_the_same_spec(split, timed):
    local, dask = timed["local"][0], timed["dask"][0]

    assert isinstance(dask.booster, lgb.Booster)
    assert dask.spec == local.spec == model_spec(split.train, FEATURES)
    assert dask.spec.categorical == ["plan", "payment_method"]
    # Truncated to the best iteration, as the local trainer does; grown for up to 300 rounds.
    assert dask.booster.num_trees() == dask.best_iteration < 300
    p = predict_proba(dask, split.holdout)
    assert p.dtype == np.float64 and len(p) == len(split.holdout)
    assert np.isfinite(p).all()
    assert abs(p.mean() - split.holdout[LABEL].mean()) < 0.02
    # An unseen category scores as missing, with the training categories of the spec.
    rows = split.holdout.head(5)
    assert np.array_equal(
        predict_proba(dask, rows.assign(plan="platinum")),
        predict_proba(dask, rows.assign(plan=None)),
    )
    # Reloaded from its text, as the registry does.
    reloaded = lgb.Booster(model_str=dask.booster.model_to_string())
    assert np.array_equal(predict_proba((reloaded, dask.spec), split.holdout), p)


def test_the_params_record_the_dask_trainer_and_the_shared_recipe(timed):
    local, dask = timed["local"][0], timed["dask"][0]

    assert dask.params["trainer"] == "dask"
    assert dask.params["dask_workers"] == 2
    assert dask.params["dask_threads_per_worker"] == 1
    assert dask.params["tree_learner"] == "data"
    # Everything but the thread count is the local recipe.
    shared = {k: v for k, v in local.params.items() if k != "num_threads"}
    assert {k: dask.params[k] for k in shared} == shared
    assert "trainer" not in local.params


def test_train_model_dispatches_to_the_cluster_at_dask_address_and_is_reproducible(
    split, cluster, timed
):
    model = train_model(
        split, FEATURES, settings(trainer="dask", dask_address=cluster.scheduler_address)
    )

    assert model.params["trainer"] == "dask" and model.params["dask_workers"] == 2
    # Same split, settings and workers: the same trees (the ranks follow the row shares).
    assert trees(model) == trees(timed["dask"][0])
    assert model.best_iteration == timed["dask"][0].best_iteration


def test_recency_weights_reach_the_workers_and_are_recorded(split, client, timed):
    weighted = settings(training_recency_half_life_days=7.0)
    dask = train_model_dask(split, FEATURES, weighted, client)
    local = train_model(split, FEATURES, weighted)

    assert dask.params["recency_half_life_days"] == local.params["recency_half_life_days"] == 7.0
    # Another model than the unweighted one on the same workers, as good as the local weighted.
    assert trees(dask) != trees(timed["dask"][0])
    assert abs(auc(dask, split) - auc(local, split)) < 0.005


def test_the_recorded_validation_loss_is_lightgbms_and_the_best_iteration_its_early_stopping(
    split,
):
    s = settings(model_max_rounds=120)
    spec = model_spec(split.train, FEATURES)
    train_set = lgb.Dataset(
        model_inputs(split.train, spec),
        label=split.train[LABEL].to_numpy(dtype=np.float32),
        categorical_feature=spec.categorical,
    )
    valid_set = lgb.Dataset(
        model_inputs(split.validation, spec),
        label=split.validation[LABEL].to_numpy(dtype=np.float32),
        reference=train_set,
    )
    recorded: dict = {}
    booster = lgb.train(
        model_params(s),
        train_set,
        num_boost_round=s.model_max_rounds,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[lgb.record_evaluation(recorded), lgb.early_stopping(30, verbose=False)],
        keep_training_booster=True,
    )

    losses = validation_log_loss(
        booster,
        model_inputs(split.validation, spec),
        split.validation[LABEL].to_numpy(dtype=np.float64),
    )

    expected = recorded["validation"]["binary_logloss"]
    np.testing.assert_allclose(losses[: len(expected)], expected, rtol=0, atol=1e-12)
    assert best_iteration(losses, 30) == booster.best_iteration


@pytest.mark.parametrize(
    ("losses", "patience", "best"),
    [
        ([0.5, 0.4, 0.3], 2, 3),  # still improving at the last round: keep them all
        ([0.5, 0.4, 0.45, 0.41, 0.3], 3, 5),  # a dip shorter than the patience is waited out
        ([0.5, 0.4, 0.45, 0.41, 0.3], 2, 2),  # ... and a longer one stops the search
        ([0.5, 0.4, 0.4, 0.4], 5, 2),  # a tie is no improvement: the first best is kept
        ([0.7], 5, 1),
    ],
)
def test_best_iteration_follows_lightgbms_patience_rule(losses, patience, best):
    assert best_iteration(np.array(losses), patience) == best


def test_without_dask_address_a_local_cluster_of_model_threads_workers_is_started_and_closed():
    with dask_client(settings(model_threads=2)) as client:
        cores = client.ncores()
        cluster = client.cluster

    assert sorted(cores.values()) == [1, 1]
    assert client.status == "closed"
    assert cluster.status.name == "closed"


def test_an_unreachable_scheduler_fails_clearly():
    unreachable = settings(trainer="dask", dask_address="tcp://127.0.0.1:1")

    with pytest.raises(DaskClusterError) as raised, dask_client(unreachable, connect_timeout=1):
        pass

    assert isinstance(raised.value, ChurnError)
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1 (CHURN_DASK_ADDRESS)" in str(
        raised.value
    )
    assert "within 1 s" in str(raised.value)
