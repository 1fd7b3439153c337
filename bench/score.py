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
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import (
    ROOT,
    gib,
    mib,
    new_table,
    peak_rss_bytes,
    per_second,
    report_to_parent,
    run_child,
    stamp_matches,
)
from rich.console import Console
from rich.table import Table
from score_profile import print_profile, profile
from score_setup import DAY, PREDICT_THREADS, score_settings, setup_world, world_marker

TARGET_RATIO = 2.0
TARGET_PEAK = 3 * 2**30


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

    settings = score_settings(world, shard_rows)
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

    settings = score_settings(world, shard_rows)
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
    result["peak_rss"] = peak_rss_bytes()
    report_to_parent(result)


def _run_child(kind: str, world: Path, subscribers: int, trees: int, shard_rows: int) -> dict:
    return run_child(
        __file__,
        *("--child", kind, "--home", world, "--subscribers", subscribers),
        *("--trees", trees, "--shard-rows", shard_rows),
        failure=f"{kind} child failed at {subscribers:,} subscribers",
    )


# ----------------------------------------------------------------------------- main


def prepare(world: Path, subscribers: int, trees: int, shard_rows: int, console: Console) -> None:
    """Write the world and its champion unless a matching one is there (else start afresh)."""
    marker = world / "_bench_world.json"
    wanted = world_marker(subscribers, trees)
    if stamp_matches(marker, wanted):
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
        f"{mib(r['peak_rss'])} MiB"
    )


def _add_row(
    table: Table, size: int, base: float, stage: str, seconds: float, rows: int, peak: int | None
) -> None:
    table.add_row(
        f"{size:,}",
        stage,
        f"{seconds:.1f}",
        per_second(rows, seconds) if seconds > 0 else "—",
        mib(peak) if peak is not None else "",
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
    table = new_table(
        f"Nightly scoring of {DAY} against a bare predict ({args.trees} trees, "
        f"{PREDICT_THREADS} threads, shards of {args.shard_rows:,})",
        ("subscribers", "stage", "seconds", "rows/s", "peak RSS MiB", "× floor"),
        left={"stage"},
    )
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
            f"peak {gib(nt['peak_rss'])} GiB (target ≤ {TARGET_PEAK / 2**30:g} GiB): "
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
            f"log {mib(nt['log_bytes'])} MiB"
        )
        verdicts.append((size, checks, extra))
    console.print(table)
    for size, checks, extra in verdicts:
        console.print(f"{size:,} subscribers: " + "; ".join(checks) + f" — {extra}")
    for size in sizes if args.profile else []:
        world = args.home / f"score_{size}"
        with console.status(f"profiling one shard at {size:,}"):
            pr = _run_child("profile", world, size, args.trees, args.shard_rows)
        print_profile(console, size, pr)


if __name__ == "__main__":
    main()
