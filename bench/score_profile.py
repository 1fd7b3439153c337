"""``--profile`` of bench/score.py: the plan over the whole base, then one shard from its middle,
step by step, with the resident memory after each step (what it times: bench/score.py's docstring).

Imported by bench/score.py, whose ``profile`` child runs :func:`profile`.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import memory_now, mib, new_table, per_second
from rich.console import Console
from score_setup import DAY, PREDICT_THREADS, score_settings


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

    settings = score_settings(world, shard_rows)
    steps: dict[str, float] = {}
    memory: dict[str, tuple[int, int]] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[step] = now - clock
        memory[step] = memory_now()
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


def print_profile(console: Console, size: int, pr: dict) -> None:
    """The profile child's steps as a table (rows/s and share per shard row), then its sizes."""
    table = new_table(
        f"Plan over {size:,} subscribers, then one shard of {pr['rows']:,} rows, "
        "step by step (rows/s and share: per shard row)",
        ("step", "seconds", "rows/s", "share", "RSS after MiB", "peak so far MiB"),
        left={"step"},
    )
    spent = sum(v for k, v in pr["steps"].items() if not k.startswith(("(compare", "plan:")))
    for step, seconds in pr["steps"].items():
        rss, hwm = pr["memory"].get(step, (0, 0))
        table.add_row(
            step,
            f"{seconds:.2f}",
            per_second(pr["rows"], seconds) if seconds > 0 and not step.startswith("plan:") else "",
            "" if step.startswith(("(compare", "plan:")) else f"{seconds / spent:.0%}",
            mib(rss) if rss else "",
            mib(hwm) if hwm else "",
        )
    console.print(table)
    console.print(
        f"features struct {pr['features_bytes_per_row']:.0f} B/row in memory, log file "
        f"{pr['log_bytes_per_row']:.0f} B/row; profile peak {mib(pr['peak_rss'])} MiB"
    )
