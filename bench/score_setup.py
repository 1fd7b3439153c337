"""The world of bench/score.py: one score day of synthetic feature partitions, the source tables
scoring reads, and a registered champion (what they hold: bench/score.py's docstring).

Imported by bench/score.py, whose ``setup`` child runs :func:`setup_world`.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import feature_repo_fingerprint, settings_for, strings, train_booster, v1_features

DAY = date(2026, 6, 30)
GENERATOR_VERSION = 1
ROW_GROUP = 122_880
"""DuckDB's Parquet row group (rows): the feature build writes these."""
CHUNK = ROW_GROUP * 8
TRAIN_ROWS = 200_000
PREDICT_THREADS = 2
CANCELLED_EVERY = 51
"""Every 51st id left a month before the score day: subscribers who are not in service."""

REGIONS = ("north", "south", "east", "west", "central")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
GENDERS = ("female", "male", "unspecified")


def score_settings(world: Path, shard_rows: int):
    """Settings of the world at ``world``: its MLflow store, shard size, threads, shards in process."""
    from tasks.core.telemetry import disable_telemetry

    disable_telemetry()
    return settings_for(
        world,
        CHURN_MLFLOW_TRACKING_URI=f"sqlite:///{world}/mlflow/mlflow.db",
        CHURN_SCORE_SHARD_ROWS=str(shard_rows),
        CHURN_MODEL_THREADS=str(PREDICT_THREADS),
        CHURN_SCORE_TASK_RUNNER="local",
    )


def _stamp(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), dtime.min, tzinfo=UTC)


def synthetic_features(rng: np.random.Generator, n: int, reads: list) -> dict[str, pa.Array]:
    """Every input of the configured feature service for ``n`` subscribers, inside its contract.

    The 20 inputs of ``churn_model_v1`` have shapes of their own; any other feature of the
    service is drawn from its Feast type and contract (allowed values, range, nullability).
    """
    values = v1_features(rng, n)
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
        return strings(rng, tuple(column.allowed), [1 / k] * k, n)
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


def world_marker(subscribers: int, trees: int) -> dict:
    """What a world was made from; another feature service or repo means a new world."""
    return {
        "subscribers": subscribers,
        "trees": trees,
        "score_date": DAY.isoformat(),
        "generator_version": GENERATOR_VERSION,
        "feature_service": os.environ.get("CHURN_FEATURE_SERVICE", "(default)"),
        "feature_repo_sha256": feature_repo_fingerprint(),
    }


def setup_world(world: Path, subscribers: int, trees: int, shard_rows: int) -> dict:
    """Write the synthetic world of one score day and register its champion (see bench/score.py)."""
    import pyarrow.parquet as pq

    from tasks.core.layout import MANIFEST_NAME, table_path
    from tasks.core.schema import SOURCE_TABLES
    from tasks.features.frames import view_reads
    from tasks.features.store import apply_feature_repo
    from tasks.features.tables import FEAST_TO_ARROW

    settings = score_settings(world, shard_rows)
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
                    "region": strings(rng, REGIONS, [0.2] * 5, n),
                    "age_band": strings(rng, AGE_BANDS, [1 / 6] * 6, n),
                    "gender": strings(rng, GENDERS, [0.49, 0.49, 0.02], n),
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
    booster = train_booster(params, train, label[:TRAIN_ROWS], spec, trees)
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
