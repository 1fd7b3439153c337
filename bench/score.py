"""Benchmark nightly scoring: the whole nightly path against a bare LightGBM predict (the floor).

    python bench/score.py [--subscribers 1000000,10000000] [--home bench/out/score]
                          [--shard-rows 500000] [--trees 200] [--repeat 1] [--profile]

Setup, once per size, in a child process; reused while ``<home>/score_<N>/_bench_world.json``
matches (size, trees, ``CHURN_FEATURE_SERVICE`` and the bytes of ``feature_repo/*.py``), else
written afresh. Building real feature days at 10M subscribers would take hours, so the world is
written directly, for one score day D = 2026-06-30 and exactly what scoring reads:

* ``features/<view>/snapshot_date={D-1,D}/part_0.parquet`` for every view of the configured
  feature service (read from the applied Feast registry): the layout, column names and types
  (``subscriber_id`` int64, ``snapshot_ts`` timestamp[us, UTC] = day + 1 00:00, then the view's
  features as the Feast declaration types them), sorted by ``subscriber_id`` in zstd row groups of
  122,880 rows, as DuckDB writes them in ``tasks.features.tables``. Day D-1 is there because the
  views' 1-day TTL makes the bulk read reach it (and de-duplicate it against D). Values are
  synthetic but inside every contract: the 20 inputs of ``churn_model_v1`` have realistic shapes,
  any other feature is drawn from its contract (allowed values, range, nullability).
* ``source/``: ``subscribers`` (the N in service on D, with signup dates that match
  ``tenure_days``, plus 1 in 51 ids cancelled a month earlier), ``cancellations``, empty
  ``usage_daily``, ``billing``, ``support_tickets`` and ``plan_changes`` with the source schema
  (``active_subscribers`` registers every table), and a manifest.
* ``feast apply`` of ``feature_repo/`` (``tasks.features.store.apply_feature_repo``).
* A champion: LightGBM with ``model_params`` and exactly ``--trees`` rounds on 200k synthetic rows
  whose label follows a logistic risk of contract, support calls, late payments, tenure, data
  trend and price, logged with ``tasks.training.candidates.log_candidate`` (its one gate passed), registered
  and promoted (SQLite MLflow store under the world).

Measured per size, each in a fresh child process so its peak RSS (VmHWM) is its own:

* floor — the day-D partitions of the service's views read in lockstep, ``--shard-rows`` at a time,
  turned into model inputs (``tasks.training.model_spec.model_inputs``) and ``booster.predict`` with 2 threads:
  predict-only seconds (the floor) and read + predict seconds. Outside those clocks, for
  comparison: compiling the champion with lleaves (``tasks.scoring.compiled``), and the compiled trees'
  predict over the same rows with their largest difference from LightGBM's probabilities;
* nightly — ``tasks.scoring.nightly.run_scoring(settings, D)`` in process (no Prefect), through a shard
  mapper that calls ``score_shard`` exactly as ``tasks.scoring.nightly.in_process`` does and only adds
  clocks: the time run_scoring spends between shards is the prediction-log write. Stage seconds
  come from the summary's timings (``reasons``: SHAP for the night's top, once every shard is
  in); the high-risk file is what remains after the reasons and the log's publication. The
  champion is compiled by the floor child beforehand, so this is a night with a warm cache, as
  every night after a retraining is (the retrain flow compiles each new version).
* profile (``--profile``) — the plan over the whole base (Feast registry, champion, active
  subscribers, ``plan_shards``), then one shard from its middle, step by step: feature read,
  contract check, the features struct, the model matrix, compiled predict (with its check
  against LightGBM), the top rows, SHAP reasons for ``capacity`` rows (once a night in the real
  path), the log batch's checks and constant columns, its zstd Parquet write.

Target (issue 4) at 10M subscribers: whole path ≤ 2× the floor (predict only) and ≤ 3 GiB peak.
Wall seconds follow whatever else the machine runs; the CPU seconds (all threads) of the whole path
against those of the floor's predict are printed too: they hardly move with load, and their ratio
is a lower bound of the wall ratio on an idle machine (the floor keeps both cores busy; not every
stage of the path does).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
DAY = date(2026, 6, 30)
GENERATOR_VERSION = 1
ROW_GROUP = 122_880
"""DuckDB's Parquet row group (rows): the feature build writes these."""
CHUNK = ROW_GROUP * 8
TRAIN_ROWS = 200_000
TARGET_RATIO = 2.0
TARGET_PEAK = 3 * 2**30
PREDICT_THREADS = 2
CANCELLED_EVERY = 51
"""Every 51st id left a month before the score day: subscribers who are not in service."""

PLAN_PRICES = {"basic": 35.0, "standard": 55.0, "premium": 75.0, "unlimited": 95.0}
CONTRACTS = ("month_to_month", "one_year", "two_year")
PAYMENTS = ("autopay", "card", "invoice")
REGIONS = ("north", "south", "east", "west", "central")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
GENDERS = ("female", "male", "unspecified")


def _features_bench():
    """bench/features.py as a module (its file name would clash with the Feast repo's)."""
    spec = importlib.util.spec_from_file_location("bench_features", ROOT / "bench" / "features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _settings(world: Path, shard_rows: int):
    os.environ["CHURN_HOME"] = str(world)
    os.environ["CHURN_MLFLOW_TRACKING_URI"] = f"sqlite:///{world}/mlflow/mlflow.db"
    os.environ["CHURN_SCORE_SHARD_ROWS"] = str(shard_rows)
    os.environ["CHURN_MODEL_THREADS"] = str(PREDICT_THREADS)
    os.environ["CHURN_SCORE_TASK_RUNNER"] = "local"
    from tasks.core.settings import get_settings, reset_settings
    from tasks.core.telemetry import disable_telemetry

    disable_telemetry()
    reset_settings()
    return get_settings()


def _stamp(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), dtime.min, tzinfo=UTC)


# ----------------------------------------------------------------------------- synthetic world


def _codes(rng: np.random.Generator, values: tuple[str, ...], p: list[float], n: int) -> np.ndarray:
    return rng.choice(len(values), size=n, p=p).astype(np.int8)


def _text(codes: np.ndarray, values: tuple[str, ...]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(values)).cast(pa.string())


def _strings(rng: np.random.Generator, values: tuple[str, ...], p: list[float], n: int) -> pa.Array:
    return _text(_codes(rng, values, p, n), values)


def synthetic_features(rng: np.random.Generator, n: int, reads: list) -> dict[str, pa.Array]:
    """Every input of the configured feature service for ``n`` subscribers, inside its contract.

    The 20 inputs of ``churn_model_v1`` have shapes of their own; any other feature of the
    service is drawn from its Feast type and contract (allowed values, range, nullability).
    """
    values = _v1_features(rng, n)
    for read in reads:
        by_name = {c.name: c for c in read.contract.columns}
        for name, dtype in zip(read.columns, read.dtypes, strict=True):
            if name not in values:
                values[name] = _from_contract(rng, n, by_name[name], dtype)
    return values


def _from_contract(rng: np.random.Generator, n: int, column, dtype: str) -> pa.Array:
    """A feature drawn from its contract: allowed values, a ratio-like or count-like number."""
    if column.allowed is not None:
        k = len(column.allowed)
        return _strings(rng, tuple(column.allowed), [1 / k] * k, n)
    low = column.min if column.min is not None else 0.0
    high = column.max if column.max is not None else low + 1000.0
    if dtype.startswith("Int"):
        raw = np.clip(rng.poisson(1.0, n) + low, low, high)
        array = raw.astype(np.int32 if dtype == "Int32" else np.int64)
    else:
        raw = np.clip(rng.lognormal(0.0, 0.4, n) * max(1.0, low), low, high)
        array = raw.astype(np.float32 if dtype == "Float32" else np.float64)
    mask = rng.random(n) < 0.01 if column.nullable else None
    return pa.array(array, mask=mask)


def _v1_features(rng: np.random.Generator, n: int) -> dict[str, pa.Array]:
    plans = tuple(PLAN_PRICES)
    plan = _codes(rng, plans, [0.3, 0.35, 0.25, 0.1], n)
    price = np.array(list(PLAN_PRICES.values()))[plan]
    ratio = rng.uniform(0.7, 1.3, n).astype(np.float32)
    changed = rng.random(n) < 0.05
    data_30 = np.where(rng.random(n) < 0.005, 0.0, rng.gamma(2.0, 23.0, n)).astype(np.float32)
    trend = rng.lognormal(0.0, 0.3, n).astype(np.float32)
    voice_30 = rng.gamma(2.0, 400.0, n).astype(np.float32)
    support_7 = rng.poisson(0.05, n)
    support_30 = support_7 + rng.poisson(0.15, n)
    bills = rng.choice([1, 2, 3], size=n, p=[0.03, 0.07, 0.9])
    return {
        "tenure_days": pa.array(rng.integers(30, 2500, n).astype(np.int32)),
        "plan": _text(plan, plans),
        "contract_type": _strings(rng, CONTRACTS, [0.5, 0.3, 0.2], n),
        "payment_method": _strings(rng, PAYMENTS, [0.5, 0.3, 0.2], n),
        "monthly_charge": pa.array((price * ratio).astype(np.float32)),
        "charge_to_list_ratio": pa.array(ratio),
        "charge_change_90d": pa.array(
            np.where(changed, np.clip(rng.normal(0, 10, n), -100, 100), 0).astype(np.float32)
        ),
        "plan_changes_90d": pa.array((changed * rng.integers(1, 3, n)).astype(np.int32)),
        "data_gb_7d": pa.array(data_30 * np.float32(7 / 30) * trend),
        "data_gb_30d": pa.array(data_30),
        "data_trend_7d_30d": pa.array(trend, mask=data_30 == 0),
        "voice_minutes_7d": pa.array(
            voice_30 * np.float32(7 / 30) * rng.lognormal(0, 0.2, n).astype(np.float32)
        ),
        "voice_minutes_30d": pa.array(voice_30),
        "dropped_calls_30d": pa.array(rng.poisson(5.0, n).astype(np.int32)),
        "active_days_30d": pa.array((30 - np.minimum(30, rng.poisson(0.4, n))).astype(np.int32)),
        "support_calls_7d": pa.array(support_7.astype(np.int32)),
        "support_calls_30d": pa.array(support_30.astype(np.int32)),
        "network_tickets_30d": pa.array(rng.binomial(support_30, 0.4).astype(np.int32)),
        "late_payments_90d": pa.array(np.minimum(rng.poisson(0.15, n), bills).astype(np.int32)),
        "bills_90d": pa.array(bills.astype(np.int32)),
    }


def churn_logit(f: dict[str, pa.Array]) -> np.ndarray:
    """The synthetic world's true log-odds of churning in 30 days (about 4% churn)."""

    def num(name: str) -> np.ndarray:
        return f[name].to_numpy(zero_copy_only=False).astype(np.float64)

    trend = np.nan_to_num(num("data_trend_7d_30d"), nan=0.0)
    contract = np.asarray(f["contract_type"].to_numpy(zero_copy_only=False), dtype=str)
    return (
        -4.3
        + 1.1 * (contract == "month_to_month")
        + 0.7 * num("support_calls_30d")
        + 0.5 * num("network_tickets_30d")
        + 0.8 * num("late_payments_90d")
        - 0.0006 * num("tenure_days")
        + 1.3 * (trend < 0.7)
        + 1.5 * np.maximum(num("charge_to_list_ratio") - 1.1, 0)
        + 0.05 * num("dropped_calls_30d")
    )


def _world_marker(subscribers: int, trees: int) -> dict:
    """What a world was made from; another feature service or repo means a new world."""
    repo = hashlib.sha256()
    for path in sorted((ROOT / "feature_repo").glob("*.py")):
        repo.update(path.read_bytes())
    return {
        "subscribers": subscribers,
        "trees": trees,
        "score_date": DAY.isoformat(),
        "generator_version": GENERATOR_VERSION,
        "feature_service": os.environ.get("CHURN_FEATURE_SERVICE", "(default)"),
        "feature_repo_sha256": repo.hexdigest(),
    }


def setup_world(world: Path, subscribers: int, trees: int, shard_rows: int) -> dict:
    """Write the synthetic world of one score day and register its champion (see module doc)."""
    import pyarrow.parquet as pq

    from tasks.core.layout import MANIFEST_NAME, table_path
    from tasks.core.schema import SOURCE_TABLES
    from tasks.features.frames import view_reads
    from tasks.features.store import apply_feature_repo
    from tasks.features.tables import FEAST_TO_ARROW

    settings = _settings(world, shard_rows)
    timings: dict[str, float] = {}
    began = time.perf_counter()
    apply_feature_repo(settings)
    reads = view_reads(settings)
    schemas = {
        r.name: pa.schema(
            [("subscriber_id", pa.int64()), (r.timestamp_field, pa.timestamp("us", tz="UTC"))]
            + [(c, FEAST_TO_ARROW[t]) for c, t in zip(r.columns, r.dtypes, strict=True)]
        )
        for r in reads
    }
    days = (DAY - timedelta(days=1), DAY)
    writers = {}
    for r in reads:
        for day in days:
            path = (
                settings.features_dir
                / r.name
                / f"snapshot_date={day.isoformat()}"
                / "part_0.parquet"
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            writers[r.name, day] = pq.ParquetWriter(
                path, schemas[r.name], compression="zstd", write_statistics=True
            )
    source = settings.source_dir
    source.mkdir(parents=True, exist_ok=True)
    subscribers_spec = SOURCE_TABLES["subscribers"]
    subscriber_writer = pq.ParquetWriter(
        table_path(source, subscribers_spec), subscribers_spec.arrow_schema, compression="zstd"
    )
    # Ids 1..; every CANCELLED_EVERY-th id left before D-1, the others (the first N) are in service.
    top = subscribers + subscribers // (CANCELLED_EVERY - 1) + 2
    all_ids = np.arange(1, top + 1, dtype=np.int64)
    active = all_ids[all_ids % CANCELLED_EVERY != 0][:subscribers]
    cancelled = all_ids[(all_ids % CANCELLED_EVERY == 0) & (all_ids < active[-1])]
    rng = np.random.default_rng(7)
    for start in range(0, subscribers, CHUNK):
        ids = active[start : start + CHUNK]
        n = len(ids)
        values = synthetic_features(rng, n, reads)
        for r in reads:
            for k, day in enumerate(days):
                columns = {
                    "subscriber_id": pa.array(ids),
                    r.timestamp_field: pa.array(
                        np.full(n, np.datetime64(_stamp(day).replace(tzinfo=None), "us"))
                    ).cast(pa.timestamp("us", tz="UTC")),
                }
                for c in r.columns:
                    v = values[c]
                    # Yesterday's snapshot: a day less tenure (its values are superseded anyway).
                    if c == "tenure_days" and k == 0:
                        v = pa.array(v.to_numpy() - 1)
                    columns[c] = v
                writers[r.name, day].write_table(
                    pa.table(columns, schema=schemas[r.name]), row_group_size=ROW_GROUP
                )
        tenure = values["tenure_days"].to_numpy().astype("timedelta64[D]")
        subscriber_writer.write_table(
            pa.table(
                {
                    "subscriber_id": ids,
                    "signup_date": pa.array(np.datetime64(DAY, "D") - tenure),
                    "plan": values["plan"],
                    "contract_type": values["contract_type"],
                    "payment_method": values["payment_method"],
                    "monthly_charge": values["monthly_charge"].cast(pa.float64()),
                    "region": _strings(rng, REGIONS, [0.2] * 5, n),
                    "age_band": _strings(rng, AGE_BANDS, [1 / 6] * 6, n),
                    "gender": _strings(rng, GENDERS, [0.49, 0.49, 0.02], n),
                },
                schema=subscribers_spec.arrow_schema,
            )
        )
    for writer in writers.values():
        writer.close()
    m = len(cancelled)
    subscriber_writer.write_table(
        pa.table(
            {
                "subscriber_id": cancelled,
                "signup_date": pa.array([DAY - timedelta(days=400)] * m, pa.date32()),
                "plan": pa.array(["basic"] * m),
                "contract_type": pa.array(["month_to_month"] * m),
                "payment_method": pa.array(["card"] * m),
                "monthly_charge": pa.array([35.0] * m),
                "region": pa.array(["north"] * m),
                "age_band": pa.array(["25-34"] * m),
                "gender": pa.array(["female"] * m),
            },
            schema=subscribers_spec.arrow_schema,
        )
    )
    subscriber_writer.close()
    cancellations = SOURCE_TABLES["cancellations"]
    pq.write_table(
        pa.table(
            {
                "subscriber_id": cancelled,
                "cancel_date": pa.array([DAY - timedelta(days=30)] * m, pa.date32()),
                "reason": pa.array(["price"] * m),
            },
            schema=cancellations.arrow_schema,
        ),
        table_path(source, cancellations),
    )
    for name in ("usage_daily", "billing", "support_tickets", "plan_changes"):
        spec = SOURCE_TABLES[name]
        path = table_path(source, spec)
        if spec.partitioned:
            path.mkdir(parents=True, exist_ok=True)
            path = path / "bench_empty.parquet"
        pq.write_table(spec.arrow_schema.empty_table(), path)
    (source / MANIFEST_NAME).write_text(
        json.dumps(
            {
                "source": "bench/score.py (synthetic, one score day)",
                "start": (DAY - timedelta(days=1)).isoformat(),
                "end": DAY.isoformat(),
                "subscribers": subscribers,
            },
            indent=2,
        )
        + "\n"
    )
    timings["write world"] = time.perf_counter() - began
    began = time.perf_counter()
    model = register_champion(settings, reads, trees)
    timings["train + register champion"] = time.perf_counter() - began
    return {
        "timings": timings,
        "feature_service": settings.feature_service,
        "features": sum(len(r.columns) for r in reads),
        **model,
    }


def register_champion(settings, reads: list, trees: int) -> dict:
    """Train ``trees`` rounds on synthetic rows with a real signal; log, register and promote it."""
    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score

    from tasks.training.candidates import log_candidate
    from tasks.training.model_spec import model_inputs, model_params, model_spec
    from tasks.training.registry import promote, register_version

    rng = np.random.default_rng(11)
    n = TRAIN_ROWS + 50_000
    values = synthetic_features(rng, n, reads)
    features = [c for r in reads for c in r.columns]
    label = (rng.random(n) < 1 / (1 + np.exp(-churn_logit(values)))).astype(np.float32)
    frame = pa.table({c: values[c] for c in features}).to_pandas()
    train, holdout = frame.iloc[:TRAIN_ROWS], frame.iloc[TRAIN_ROWS:].reset_index(drop=True)
    spec = model_spec(train, features)
    params = model_params(settings)
    booster = lgb.train(
        params,
        lgb.Dataset(
            model_inputs(train, spec),
            label=label[:TRAIN_ROWS],
            categorical_feature=spec.categorical,
        ),
        num_boost_round=trees,
    )
    auc = float(roc_auc_score(label[TRAIN_ROWS:], booster.predict(model_inputs(holdout, spec))))
    run_id = log_candidate(
        settings,
        booster=booster,
        model_spec=spec.to_dict(),
        input_example=model_inputs(holdout.head(5), spec),
        params={**params, "num_boost_round": trees},
        metrics={"roc_auc": auc},
        gate_results={"bench_setup": {"passed": True, "detail": "synthetic bench champion"}},
        tags={"bench": "bench/score.py"},
        artifacts=None,
        run_name="bench-score",
    )
    version = register_version(settings, run_id, {"reason": "bench/score.py champion"})
    promote(settings, version, by="bench/score.py", reason="bench champion")
    return {
        "version": version,
        "trees": booster.num_trees(),
        "holdout_auc": auc,
        "churn_rate": float(label.mean()),
    }


# ----------------------------------------------------------------------------- children


def floor(world: Path, shard_rows: int) -> dict:
    """Bare predict over day D's feature matrix, ``shard_rows`` at a time, 2 threads.

    Also, outside the floor's clocks: compiling the champion (into the world's cache, which the
    nightly child then finds, as a night after the first does) and the compiled trees' predict
    over the same rows, with their largest difference from LightGBM's probabilities.
    """
    import pyarrow.parquet as pq

    from tasks.features.feast_offline import partition_files
    from tasks.features.frames import view_reads
    from tasks.scoring.compiled import compile_forest, model_matrix
    from tasks.training.model_spec import ModelSpec, model_inputs
    from tasks.training.registry import load_model

    settings = _settings(world, shard_rows)
    reads = view_reads(settings)
    booster, spec_dict, version = load_model(settings, "champion")
    spec = ModelSpec.from_dict(spec_dict)
    # Compiled here, once per model version as the night does (timed: the first night pays it).
    shutil.rmtree(settings.compiled_models_dir, ignore_errors=True)
    clock = time.perf_counter()
    forest = compile_forest(
        booster, settings.compiled_models_dir, f"{settings.model_name}-v{version}"
    )
    compile_s = time.perf_counter() - clock
    files = [partition_files(r.directory, DAY, DAY) for r in reads]
    if any(len(f) != 1 for f in files):
        raise SystemExit(f"expected one day-{DAY} file per view, found {files}")
    began = time.perf_counter()
    streams = [
        pq.ParquetFile(f[0]).iter_batches(batch_size=shard_rows, columns=list(r.columns))
        for f, r in zip(files, reads, strict=True)
    ]
    rows, predict_s, predict_cpu_s, compiled_s = 0, 0.0, 0.0, 0.0
    checksum, gap = 0.0, 0.0
    for parts in zip(*streams, strict=True):
        batch = pa.Table.from_batches([parts[0]])
        for part in parts[1:]:
            for name, column in zip(part.schema.names, part.columns, strict=True):
                batch = batch.append_column(name, column)
        inputs = model_inputs(batch, spec)
        clock, cpu = time.perf_counter(), time.process_time()
        p = booster.predict(inputs, num_threads=PREDICT_THREADS)
        predict_s += time.perf_counter() - clock
        predict_cpu_s += time.process_time() - cpu
        rows += len(p)
        checksum += float(p.sum())
        # For comparison, not the floor: the compiled trees on the same rows.
        clock = time.perf_counter()
        compiled = forest.predict(model_matrix(batch, spec), PREDICT_THREADS)
        compiled_s += time.perf_counter() - clock
        gap = max(gap, float(np.max(np.abs(compiled - p))))
    total = time.perf_counter() - began - compiled_s
    return {
        "rows": rows,
        "predict_s": predict_s,
        "predict_cpu_s": predict_cpu_s,
        "read_predict_s": total,
        "compiled_s": compiled_s,
        "compiled_gap": gap,
        "compile_s": compile_s,
        "mean_p": checksum / rows,
    }


def nightly(world: Path, shard_rows: int) -> dict:
    """``run_scoring`` in process, with clocks around each shard's hand-over."""
    from tasks.scoring.nightly import run_scoring
    from tasks.scoring.shards import score_shard

    settings = _settings(world, shard_rows)
    shutil.rmtree(settings.predictions_dir, ignore_errors=True)
    shutil.rmtree(settings.retention_dir, ignore_errors=True)
    clocks = {"log write": 0.0, "shards done": 0.0}

    def timed_in_process(ctx, shards) -> Iterator:
        # tasks.scoring.nightly.in_process, plus: how long run_scoring takes with each result.
        for shard in shards:
            result = score_shard(ctx, shard)
            handed = time.perf_counter()
            yield result
            clocks["log write"] += time.perf_counter() - handed
        clocks["shards done"] = time.perf_counter()

    began, cpu = time.perf_counter(), time.process_time()
    summary = run_scoring(settings, DAY, map_shards=timed_in_process)
    ended, cpu = time.perf_counter(), time.process_time() - cpu
    timings = dict(summary.timings)
    timings["log write"] = clocks["log write"]
    timings["high-risk file"] = (
        ended - clocks["shards done"] - timings["reasons"] - timings["log publish"]
    )
    log_bytes = sum(Path(p).stat().st_size for p in summary.log_files)
    return {
        "rows": summary.scored,
        "subscribers": summary.subscribers,
        "not_scored": summary.not_scored,
        "high_risk_rows": summary.high_risk_rows,
        "shards": summary.shards,
        "timings": timings,
        "wall_s": ended - began,
        "cpu_s": cpu,
        "log_bytes": log_bytes,
    }


def profile(world: Path, shard_rows: int) -> dict:
    """The plan over the whole base, then one shard from its middle, step by step (and the log write)."""
    import pyarrow.parquet as pq

    from tasks.audit.log_schema import ROW_GROUP_ROWS
    from tasks.audit.prediction_log import PredictionLogWriter, open_temp_writer
    from tasks.core.files import PARQUET_OPTIONS
    from tasks.data.sources import active_subscribers
    from tasks.features.frames import features_from, view_reads
    from tasks.features.tables import as_of_timestamp
    from tasks.scoring.compiled import model_matrix
    from tasks.scoring.models import resolve_models
    from tasks.scoring.shards import (
        ScoringContext,
        _candidates,
        _missing_views,
        check_scoring_features,
        encode_features,
        explain_candidates,
        plan_shards,
        rank_by_revenue,
        risk_tiers,
    )

    settings = _settings(world, shard_rows)
    steps: dict[str, float] = {}
    memory: dict[str, tuple[int, int]] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[step] = now - clock
        memory[step] = _memory()
        clock = now

    reads = view_reads(settings)
    features = [c for r in reads for c in r.columns]
    lap("plan: Feast registry")
    model = resolve_models(settings, features)[0]
    lap("plan: champion from MLflow")
    subscribers = active_subscribers(settings, DAY).column("subscriber_id")
    lap("plan: active subscribers (whole base)")
    shards = plan_shards(subscribers, shard_rows)
    lap("plan: plan_shards (whole base)")
    shard = shards[len(shards) // 2]
    ctx = ScoringContext(
        score_date=DAY,
        at=as_of_timestamp(DAY),
        reads=reads,
        models=[model],
        capacity=settings.retention_capacity,
        medium_threshold=settings.risk_medium_threshold,
        high_threshold=settings.risk_high_threshold,
        reason_count=settings.reason_codes,
        threads=PREDICT_THREADS,
    )
    clock = time.perf_counter()
    frame = features_from(
        reads,
        ctx.at,
        pa.table({"subscriber_id": shard.subscriber_ids}),
        id_range=shard.id_range,
        mark_present=True,
    )
    lap("feature read + point-in-time join")
    check_scoring_features(frame, reads)
    lap("contract check")
    _, _, keep = _missing_views(frame, reads)
    scored = frame.filter(keep) if keep is not None else frame
    lap("missing views")
    encoded = encode_features(scored, features)
    lap("features struct for the log")
    matrix = model_matrix(scored, model.spec)
    lap("model matrix (Arrow → float64)")
    p, predictor = model.predict(matrix, PREDICT_THREADS)
    lap(f"predict ({predictor}, with its check)")
    tier = risk_tiers(p, ctx.medium_threshold, ctx.high_threshold)
    ids = scored.column("subscriber_id").combine_chunks()
    charge = scored.column("monthly_charge").to_numpy(zero_copy_only=False).astype(np.float64)
    lap("tiers")
    top = rank_by_revenue(p * charge, p, ids.to_numpy(), ctx.capacity)
    lap(f"top {ctx.capacity} by revenue at risk")
    candidates = _candidates(
        pa.table(
            {
                "subscriber_id": ids,
                "probability": pa.array(p),
                "risk_tier": tier,
                "features": encoded,
            }
        ),
        charge,
        top,
    )
    explain_candidates(model, candidates, ctx.capacity, ctx.reason_count)
    lap(f"reasons (SHAP, {ctx.capacity} rows: once a night)")
    batch = pa.table(
        {
            "subscriber_id": ids,
            "probability": pa.array(p),
            "risk_tier": tier,
            "reasons": pa.nulls(len(ids), pa.list_(pa.string())),
            "features": encoded,
        }
    )
    scratch = settings.model_copy(update={"home": Path("/tmp/benchscore/profile_home")})
    shutil.rmtree(scratch.home, ignore_errors=True)
    writer = PredictionLogWriter(
        scratch,
        score_date=DAY,
        model_name=model.name,
        model_version=model.version,
        role="champion",
        feature_service=settings.feature_service,
        flow_run_id=None,
        scored_at=datetime.now(UTC),
    )
    lap("(batch table)")
    with writer:
        # PredictionLogWriter.write, step by step.
        state = writer._state
        columns, _ = writer._checked(batch, state)
        lap("log: batch checks")
        table = writer._complete(columns, batch.num_rows)
        lap("log: prediction_id + constant columns")
        state.file = open_temp_writer(writer.path, table.schema)
        state.file.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        state.rows += table.num_rows
        lap("log: Parquet write (zstd)")
    lap("log: close + sha256 + fsync + publish")
    # For comparison only: the same table written without compression and with zstd level 1.
    for label, options in (("none", {"compression": "none"}), ("lz4", {"compression": "lz4"})):
        began = time.perf_counter()
        pq.write_table(table, "/tmp/benchscore/profile_cmp.parquet", **options)
        steps[f"(compare: Parquet write {label})"] = time.perf_counter() - began
    return {
        "rows": len(ids),
        "steps": steps,
        "memory": memory,
        "features_bytes_per_row": encoded.nbytes / len(ids),
        "log_bytes_per_row": Path(writer.path).stat().st_size / len(ids),
        "log_columns_bytes": {name: table.column(name).nbytes for name in table.column_names},
        "parquet_options": str(PARQUET_OPTIONS),
    }


def _memory() -> tuple[int, int]:
    """This process's resident memory now and its peak so far (VmRSS, VmHWM), in bytes."""
    found = dict.fromkeys(("VmRSS:", "VmHWM:"), 0)
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(" ", 1)[0].split("\t", 1)[0]
        if key in found:
            found[key] = int(line.split()[1]) * 1024
    return found["VmRSS:"], found["VmHWM:"]


def child(kind: str, world: Path, subscribers: int, trees: int, shard_rows: int) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    if kind == "setup":
        result = setup_world(world, subscribers, trees, shard_rows)
    elif kind == "floor":
        result = floor(world, shard_rows)
    elif kind == "nightly":
        result = nightly(world, shard_rows)
    else:
        result = profile(world, shard_rows)
    result["peak_rss"] = _features_bench().peak_rss_bytes()
    print(json.dumps(result))


def _run_child(kind: str, world: Path, subscribers: int, trees: int, shard_rows: int) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--home",
            str(world),
            "--subscribers",
            str(subscribers),
            "--trees",
            str(trees),
            "--shard-rows",
            str(shard_rows),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"{kind} child failed at {subscribers:,} subscribers")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def prepare(world: Path, subscribers: int, trees: int, shard_rows: int, console: Console) -> None:
    """Write the world and its champion unless a matching one is there (else start afresh)."""
    marker = world / "_bench_world.json"
    wanted = _world_marker(subscribers, trees)
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        console.print(f"{subscribers:,} subscribers: world reused ({world})")
        return
    if world.exists():
        shutil.rmtree(world)
    world.mkdir(parents=True)
    with console.status(f"writing the {subscribers:,}-subscriber world and its champion"):
        r = _run_child("setup", world, subscribers, trees, shard_rows)
    marker.write_text(json.dumps(wanted))
    console.print(
        f"{subscribers:,} subscribers: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
        + f"; {r['feature_service']} ({r['features']} features)"
        + f"; champion v{r['version']} ({r['trees']} trees, synthetic holdout AUC "
        f"{r['holdout_auc']:.3f}, churn rate {r['churn_rate']:.1%}); setup peak "
        f"{r['peak_rss'] / 2**20:,.0f} MiB"
    )


def _add_row(
    table: Table, size: int, base: float, stage: str, seconds: float, rows: int, peak: int | None
) -> None:
    table.add_row(
        f"{size:,}",
        stage,
        f"{seconds:.1f}",
        f"{rows / seconds:,.0f}" if seconds > 0 else "—",
        f"{peak / 2**20:,.0f}" if peak is not None else "",
        f"{seconds / base:.2f}",
    )


NIGHTLY_STAGES = (
    ("plan", "plan (active subscribers, models, shards)"),
    ("shard features", "features (bulk point-in-time read)"),
    ("shard contract + encode", "contract check + features struct"),
    ("shard predict", "predict (model matrix + compiled trees)"),
    ("reasons", "reasons (SHAP, the file's rows)"),
    ("log write", "prediction log write"),
    ("log publish", "prediction log publish"),
    ("high-risk file", "high-risk file"),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--subscribers",
        default="1000000,10000000",
        help="comma-separated sizes (subscribers in service on the score day)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=ROOT / "bench" / "out" / "score",
        help="root of the bench worlds: each size lives in <home>/score_<N> (its CHURN_HOME)",
    )
    parser.add_argument("--shard-rows", type=int, default=500_000, help="CHURN_SCORE_SHARD_ROWS")
    parser.add_argument("--trees", type=int, default=200, help="trees of the bench champion")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run floor and nightly path this many times, alternately; report the fastest of each",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile one shard, step by step"
    )
    parser.add_argument("--child", choices=("setup", "floor", "nightly", "profile"))
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in str(args.subscribers).split(",") if s.strip()]
    if args.child:
        child(args.child, args.home, sizes[0], args.trees, args.shard_rows)
        return

    console = Console(width=150)
    table = Table(
        title=(
            f"Nightly scoring of {DAY} against a bare predict ({args.trees} trees, "
            f"{PREDICT_THREADS} threads, shards of {args.shard_rows:,})"
        ),
        title_justify="left",
    )
    for column in ("subscribers", "stage", "seconds", "rows/s", "peak RSS MiB", "× floor"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    verdicts = []
    for size in sizes:
        world = args.home / f"score_{size}"
        prepare(world, size, args.trees, args.shard_rows, console)
        floors, nights = [], []
        for attempt in range(1, args.repeat + 1):
            with console.status(f"floor at {size:,} ({attempt} of {args.repeat})"):
                floors.append(_run_child("floor", world, size, args.trees, args.shard_rows))
            with console.status(f"nightly path at {size:,} ({attempt} of {args.repeat})"):
                nights.append(_run_child("nightly", world, size, args.trees, args.shard_rows))
        # Best of the repeats (noise only ever adds time); the highest peak of them.
        fl = min(floors, key=lambda r: r["predict_s"]) | {
            "peak_rss": max(r["peak_rss"] for r in floors)
        }
        nt = min(nights, key=lambda r: r["timings"]["total"]) | {
            "peak_rss": max(r["peak_rss"] for r in nights)
        }
        base = fl["predict_s"]

        rows = [
            ("floor: predict only", fl["predict_s"], fl["rows"], None),
            ("floor: read + predict", fl["read_predict_s"], fl["rows"], fl["peak_rss"]),
            ("(compiled trees: predict only)", fl["compiled_s"], fl["rows"], None),
        ]
        timings = nt["timings"]
        for key, label in NIGHTLY_STAGES:
            rows.append((f"  {label}", timings.get(key, 0.0), nt["rows"], None))
        rows.append(("whole nightly path", timings["total"], nt["rows"], nt["peak_rss"]))
        for stage, seconds, count, peak in rows:
            _add_row(table, size, base, stage, seconds, count, peak)
        table.add_section()
        ratio = timings["total"] / base
        checks = [
            f"whole path {ratio:.2f}× the floor (target ≤ {TARGET_RATIO:g}×): "
            + ("met" if ratio <= TARGET_RATIO else "NOT met"),
            f"peak {nt['peak_rss'] / 2**30:.2f} GiB (target ≤ {TARGET_PEAK / 2**30:g} GiB): "
            + ("met" if nt["peak_rss"] <= TARGET_PEAK else "NOT met"),
        ]
        # CPU seconds (all threads) hardly depend on what else the machine runs; wall seconds do.
        cpu_ratio = nt["cpu_s"] / fl["predict_cpu_s"]
        checks.append(
            f"CPU seconds {nt['cpu_s']:.0f} against the floor's {fl['predict_cpu_s']:.0f} "
            f"({cpu_ratio:.2f}×)"
        )
        checks.append(
            f"compiled trees {fl['predict_s'] / fl['compiled_s']:.1f}× LightGBM's predict, "
            f"largest difference {fl['compiled_gap']:.1e} (allowed 1e-6); compiling took "
            f"{fl['compile_s']:.1f} s (once per model version, not in the nightly path)"
        )
        extra = (
            f"scored {nt['rows']:,} of {nt['subscribers']:,} in {nt['shards']} shards, "
            f"not scored {sum(nt['not_scored'].values()):,}, high-risk file {nt['high_risk_rows']:,} rows, "
            f"log {nt['log_bytes'] / 2**20:,.0f} MiB"
        )
        verdicts.append((size, checks, extra))
    console.print(table)
    for size, checks, extra in verdicts:
        console.print(f"{size:,} subscribers: " + "; ".join(checks) + f" — {extra}")
    for size in sizes if args.profile else []:
        world = args.home / f"score_{size}"
        with console.status(f"profiling one shard at {size:,}"):
            pr = _run_child("profile", world, size, args.trees, args.shard_rows)
        ptable = Table(
            title=(
                f"Plan over {size:,} subscribers, then one shard of {pr['rows']:,} rows, "
                "step by step (rows/s and share: per shard row)"
            ),
            title_justify="left",
        )
        for column in ("step", "seconds", "rows/s", "share", "RSS after MiB", "peak so far MiB"):
            ptable.add_column(column, justify="left" if column == "step" else "right")
        spent = sum(v for k, v in pr["steps"].items() if not k.startswith(("(compare", "plan:")))
        for step, seconds in pr["steps"].items():
            rss, hwm = pr["memory"].get(step, (0, 0))
            ptable.add_row(
                step,
                f"{seconds:.2f}",
                f"{pr['rows'] / seconds:,.0f}"
                if seconds > 0 and not step.startswith("plan:")
                else "",
                "" if step.startswith(("(compare", "plan:")) else f"{seconds / spent:.0%}",
                f"{rss / 2**20:,.0f}" if rss else "",
                f"{hwm / 2**20:,.0f}" if hwm else "",
            )
        console.print(ptable)
        console.print(
            f"features struct {pr['features_bytes_per_row']:.0f} B/row in memory, log file "
            f"{pr['log_bytes_per_row']:.0f} B/row; profile peak {pr['peak_rss'] / 2**20:,.0f} MiB"
        )


if __name__ == "__main__":
    main()
