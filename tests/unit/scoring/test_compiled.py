"""Compiled trees: the same probabilities as LightGBM, cached per model, and held to LightGBM."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pytest

from tasks.audit.log_schema import CHAMPION
from tasks.core.settings import Settings
from tasks.scoring import compiled as compiled_module
from tasks.scoring.compiled import (
    TOLERANCE,
    CompileError,
    compile_forest,
    disagreement,
    model_matrix,
)
from tasks.scoring.models import ScoringModel, _with_compiled
from tasks.training.model_spec import FeatureListError, ModelSpec, model_inputs

PLANS = ["basic", "premium", "standard", "unlimited"]
SPEC = ModelSpec(
    features=["tenure_days", "plan", "monthly_charge", "support_calls_30d", "data_gb_30d"],
    categorical=["plan"],
    categories={"plan": PLANS},
)


def frame_of(n: int, seed: int) -> pa.Table:
    """Scoring rows as the bulk read returns them: ints, float32s with nulls, a string category."""
    rng = np.random.default_rng(seed)
    data_gb = rng.gamma(2.0, 3.0, size=n).astype(np.float32)
    plans = rng.choice([*PLANS, "legacy"], size=n, p=[0.3, 0.2, 0.3, 0.15, 0.05]).astype(object)
    plans[rng.random(n) < 0.03] = None
    return pa.table(
        {
            "subscriber_id": pa.array(np.arange(1, n + 1), pa.int64()),
            "tenure_days": pa.array(rng.integers(0, 3_000, size=n), pa.int32()),
            "plan": pa.array(plans, pa.string()),
            "monthly_charge": pa.array(rng.uniform(20, 120, size=n), pa.float32()),
            "support_calls_30d": pa.array(rng.poisson(1.5, size=n), pa.int32()),
            # One in ten has no usage row: a null LightGBM must take its missing branch for.
            "data_gb_30d": pa.array(data_gb, pa.float32(), mask=rng.random(n) < 0.1),
        }
    )


def train(seed: int, rounds: int = 40) -> lgb.Booster:
    frame = frame_of(4_000, seed)
    inputs = model_inputs(frame, SPEC)
    rng = np.random.default_rng(seed + 1)
    logit = (
        -2.5
        + 0.6 * inputs["support_calls_30d"]
        + 1.0 * (inputs["plan"] == "basic")
        - inputs["tenure_days"] / 1_500
        + 0.8 * inputs["data_gb_30d"].isna()
    )
    label = (rng.random(len(inputs)) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    params = {
        "objective": "binary",
        "num_leaves": 15,
        "min_data_in_leaf": 20,
        "learning_rate": 0.1,
        "seed": seed,
        "deterministic": True,
        "num_threads": 1,
        "verbosity": -1,
    }
    data = lgb.Dataset(inputs, label=label, categorical_feature=["plan"])
    return lgb.train(params, data, num_boost_round=rounds)


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train(seed=3)


def test_model_matrix_gives_lightgbm_exactly_what_the_pandas_inputs_give(booster):
    frame = frame_of(2_000, seed=11)

    matrix = model_matrix(frame, SPEC)

    assert matrix.dtype == np.float64 and matrix.flags.c_contiguous
    assert matrix.shape == (2_000, len(SPEC.features))
    # Unseen ("legacy") and null plans are missing; the null usage rows too.
    plan = np.asarray(frame.column("plan").to_pylist(), dtype=object)
    unseen = np.array([v not in PLANS for v in plan])
    assert np.isnan(matrix[unseen, 1]).all() and not np.isnan(matrix[~unseen, 1]).any()
    assert np.isnan(matrix[:, 4]).sum() == frame.column("data_gb_30d").null_count
    np.testing.assert_array_equal(
        booster.predict(matrix), booster.predict(model_inputs(frame, SPEC))
    )


def test_model_matrix_follows_the_spec_order_not_the_frame_order(booster):
    frame = frame_of(50, seed=12)
    shuffled = frame.select(frame.column_names[::-1])

    np.testing.assert_array_equal(model_matrix(shuffled, SPEC), model_matrix(frame, SPEC))


def test_model_matrix_names_the_missing_inputs():
    frame = frame_of(5, seed=1).drop_columns(["plan", "data_gb_30d"])

    with pytest.raises(FeatureListError, match="plan, data_gb_30d"):
        model_matrix(frame, SPEC)


def test_compiled_forest_predicts_what_lightgbm_predicts(booster, tmp_path):
    frame = frame_of(20_000, seed=13)
    matrix = model_matrix(frame, SPEC)

    forest = compile_forest(booster, tmp_path, "churn-v1")

    for threads in (1, 2):
        compiled = forest.predict(matrix, threads)
        assert compiled.shape == (20_000,)
        np.testing.assert_allclose(compiled, booster.predict(matrix), rtol=0, atol=1e-12)
    assert forest.predict(matrix[:0], 2).shape == (0,)
    assert disagreement(forest.predict(matrix, 2), booster, matrix) <= 1e-12


def test_compiled_forests_are_cached_per_model(booster, tmp_path):
    first = compile_forest(booster, tmp_path, "churn-v1")
    compiled_at = first.binary.stat().st_mtime_ns

    again = compile_forest(booster, tmp_path, "churn-v1")
    other = compile_forest(train(seed=4, rounds=10), tmp_path, "churn-v2")

    assert again == first and first.binary.stat().st_mtime_ns == compiled_at
    assert other.binary != first.binary and other.binary.name.startswith("churn-v2-")
    # A model text and a binary for this host each; nothing half-written next to them.
    assert sorted(p.suffix for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        ".bin",
        ".bin",
        ".txt",
        ".txt",
    ]
    matrix = model_matrix(frame_of(100, seed=5), SPEC)
    assert not np.allclose(first.predict(matrix, 1), other.predict(matrix, 1))


def test_a_forest_that_disagrees_with_its_booster_is_not_used(booster, tmp_path):
    # The compiled forest of another model stands in for a miscompiled one.
    wrong = compile_forest(train(seed=5, rounds=10), tmp_path, "churn-v9")
    model = ScoringModel("churn", 1, CHAMPION, booster, SPEC, compiled=wrong)
    matrix = model_matrix(frame_of(3_000, seed=14), SPEC)

    p, predictor = model.predict(matrix, threads=2)

    assert predictor.startswith("lightgbm (compiled off by")
    np.testing.assert_array_equal(p, booster.predict(matrix))
    assert disagreement(wrong.predict(matrix, 2), booster, matrix) > TOLERANCE


def test_a_model_scores_compiled_when_its_forest_agrees(booster, tmp_path):
    model = ScoringModel(
        "churn", 1, CHAMPION, booster, SPEC, compiled=compile_forest(booster, tmp_path, "c-v1")
    )
    matrix = model_matrix(frame_of(500, seed=15), SPEC)

    p, predictor = model.predict(matrix, threads=2)

    assert predictor == "compiled"
    np.testing.assert_allclose(p, booster.predict(matrix), rtol=0, atol=TOLERANCE)
    assert model.predict(matrix[:0], threads=2)[0].shape == (0,)
    # An empty shard reports the predictor configured, not a fallback that never happened.
    assert model.predict(matrix[:0], threads=2)[1] == "compiled"


def test_a_model_that_fails_to_compile_scores_with_lightgbm(
    booster, churn_home: Settings, monkeypatch, caplog
):
    def fail(model_file, binary):
        raise RuntimeError("LLVM ERROR: out of registers")

    monkeypatch.setattr(compiled_module, "_compile", fail)
    model = ScoringModel("churn", 7, CHAMPION, booster, SPEC)

    with caplog.at_level("WARNING"):
        kept = _with_compiled(churn_home, model)

    assert kept.compiled is None
    assert "could not compile churn-v7-" in caplog.text
    assert "with lleaves: LLVM ERROR: out of registers" in caplog.text
    assert not list(churn_home.compiled_models_dir.glob("*.bin"))
    with pytest.raises(CompileError):
        compile_forest(booster, churn_home.compiled_models_dir, "churn-v7")


def test_a_process_on_another_kind_of_cpu_compiles_its_own_binary(booster, tmp_path, monkeypatch):
    forest = compile_forest(booster, tmp_path, "churn-v1")
    matrix = model_matrix(frame_of(1_000, seed=17), SPEC)
    built_here = forest.binary.read_bytes()

    # As a Dask worker on another machine sees the forest the flow's process compiled.
    monkeypatch.setattr(compiled_module, "host_key", lambda: "another-cpu")
    p = forest.predict(matrix, threads=2)

    own = tmp_path / f"{forest.model_file.stem}-another-cpu.bin"
    assert own.exists() and forest.binary.read_bytes() == built_here
    np.testing.assert_allclose(p, booster.predict(matrix), rtol=0, atol=1e-12)


def test_a_worker_that_cannot_compile_its_binary_scores_with_lightgbm(
    booster, tmp_path, monkeypatch
):
    forest = compile_forest(booster, tmp_path, "churn-v1")
    model = ScoringModel("churn", 1, CHAMPION, booster, SPEC, compiled=forest)
    matrix = model_matrix(frame_of(200, seed=18), SPEC)
    monkeypatch.setattr(compiled_module, "host_key", lambda: "another-cpu")
    monkeypatch.setattr(compiled_module, "_compile", lambda model_file, binary: 1 / 0)

    p, predictor = model.predict(matrix, threads=1)

    assert predictor == "lightgbm (compile failed)"
    np.testing.assert_array_equal(p, booster.predict(matrix))
