"""Benchmark one whole night: features, online store, scoring and monitoring of one day, each stage
against its floor.

    python bench/night.py [--sizes 1000000 10000000] [--workdir bench/out] [--redis | --no-redis]
                          [--sqlite-max 1000000] [--chunk-days N] [--trees 200]

The world (``<workdir>/night_<size>/``, simulated once and reused while its
``_bench_world.json`` matches) holds just the history the night needs: the night's day D is the
last simulated day, and D-1 is built first (untimed, from scratch) so that D is built
incrementally from D-1's usage-window state, as every real night is. D-1's newest feature windows
reach back ``LOOKBACK_DAYS`` = 91 days (D-91 .. D-1: the 90-day windows and the 91-day source
reads of ``sql/features/*.sql``), so the world has ``LOOKBACK_DAYS + 1`` = 92 days, D-91 .. D
(2026-01-01 .. 2026-04-02). The simulator writes ``--chunk-days`` days per usage file (default 1:
one file per day, as a daily import lands; memory then follows one day, not a month, which is
what lets 10M subscribers simulate in a few GB). The simulation runs in a child of its own and
its seconds and peak RSS are printed.

Prepared once per world (untimed, in a child; kept in ``_bench_night_prepared.json``): ``feast
apply``; the features of D-1, from scratch; a bench champion trained on D-1 (a seeded sample of
200,000 subscribers plus 50,000 held out for its AUC, the configured feature service's features
of D-1, labels drawn as Bernoulli(``true_churn_prob_30d`` of D-1) from the world's truth,
``model_spec``/``model_params``, exactly ``--trees`` rounds), logged, registered and promoted in
an MLflow SQLite store inside the world, with its drift reference saved (``drift_reference`` over
the training sample) and compiled for scoring, so the night pays neither, as a night after a
retraining does not. Before every timed night, day D is set back to "not built yet": D's feature
partitions and usage-window state, the source-day fingerprint of the usage file holding D (a new
day's file is hashed by its night), D's prediction-log files and their ledger lines, D's
high-risk file, D's monitoring profiles, drift history, report and retrain trigger; D-1's state
stays. So a rerun re-times the same night.

The night, each stage in a fresh child process (its peak RSS, ``VmHWM``, is its own), in order:

* features — ``build_feature_tables(settings, D, D)``: the five tables of the service, stepped
  from D-1's state (the row says so; "from scratch" would mean the state was unusable), their
  contracts ("of which contracts") and the publish;
* materialize sqlite — ``materialize_online`` into Feast's SQLite online store (emptied first:
  every row is an insert), only up to ``--sqlite-max`` subscribers; above it the seconds (and
  the SQLite file's size) are extrapolated from the view rows/s (bytes a row) measured at the
  largest size at or below it (this run's or one saved in the workdir), and marked so;
* materialize redis — ``CHURN_ONLINE_STORE=redis``: the bulk writer into a fresh ``redis-server``
  (no persistence); the CPU seconds include the server's, and its ``used_memory`` after loading
  and its peak RSS are printed: at 10M the server's memory is what bounds this stage;
* score — ``run_scoring(settings, D)`` in process (shards of ``CHURN_SCORE_SHARD_ROWS``, 2
  threads, the compiled champion): the prediction log and the high-risk file, checked after the
  clock (the file exists, the log holds one row per scored subscriber, ids unique);
* monitor — ``monitor_day(settings, D)``: profiles, contracts, drift against the champion's
  reference, severity, report.

Floors, each in its own child, on the same day:

* features floor — DuckDB's raw aggregation over the same day: one query summing D's 90-day usage
  window (D-89 .. D) per subscriber from the source (COUNT and the SUMs of data_gb,
  voice_minutes, dropped_calls) into Arrow, with the build's memory limit: no other table, no
  contracts, no writes. The incremental build reads 5 days of usage, not 90, so it may beat it;
* score floor — a bare LightGBM predict with 2 threads over D's feature matrix for the champion,
  500,000 rows at a time (as bench/score.py); the partitions' files (all of them) are read and
  the matrix built outside the clock;
* monitoring and materialisation have none ("—").

Totals: the night without materialisation (features + score + monitor) against the sum of the
floors, its peak RSS the largest of its stages; then with the online store. Targets (issue 15)
at 10M on this 2-core machine: the night without materialisation ≤ 600 s and ≤ 8 GB peak RSS;
with the online store the figure and what bounds it are stated. CPU seconds are each child's
own (all threads) plus its children's; the 1-minute load average is printed before → after each
stage. The table is printed and saved as ``<workdir>/night.md`` (``night_<size>_<size>.md`` for
several sizes), the raw results as ``<workdir>/night_<size>.json``; ``--report`` prints the saved
results of ``--sizes`` again, e.g. both sizes of two separate runs in one table.

At 10M, D-1's untimed scratch build (``sql/features/usage_windows.sql`` over 90 days, 900M usage
rows into 10.7M groups) filled the disk under the default 4GB DuckDB limit (over 25 GB of
spill); ``--prepare-duckdb-memory 14GB`` gives that one build more memory (about 6.3 GB RSS,
143 s). The night itself always runs with the configured limit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from common import (
    ROOT,
    SEED,
    START,
    feature_repo_fingerprint,
    gib,
    new_table,
    peak_rss_bytes,
    report_to_parent,
    run_child,
    settings_for,
    stamp_matches,
    start_redis,
    world_spec,
)
from rich.console import Console

WORLD_DAYS = 92
"""LOOKBACK_DAYS (91) of history for D-1, plus D itself (checked against the code in main)."""
NIGHT = START + timedelta(days=WORLD_DAYS - 1)
TRAIN_ROWS = 200_000
HOLDOUT_ROWS = 50_000
PREDICT_THREADS = 2
FLOOR_ROWS = 500_000
TARGET_SECONDS = 600.0
TARGET_PEAK = 8 * 2**30
TARGET_SIZE = 10_000_000
STAGES = ("features", "materialize sqlite", "materialize redis", "score", "monitor")
FLOORS = {"features": "features floor", "score": "score floor"}
NIGHT_CORE = ("features", "score", "monitor")


# ----------------------------------------------------------------------------- settings


def night_settings(home: Path, store: str = "sqlite"):
    """The world's settings: its MLflow store, 2 model threads, shards in process, one store."""
    from tasks.core.telemetry import disable_telemetry

    disable_telemetry()
    env = {
        "CHURN_MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db",
        "CHURN_MODEL_THREADS": str(PREDICT_THREADS),
        "CHURN_SCORE_TASK_RUNNER": "local",
        "CHURN_ONLINE_STORE": store,
    }
    if store == "redis":
        env["CHURN_REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    return settings_for(home, **env)


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(work: Callable[[], dict]) -> dict:
    """Run ``work`` under the clocks: wall and CPU seconds (this process's threads and its
    children's), the peak RSS right after it, the 1-minute load before and after."""
    load = os.getloadavg()[0]
    children = _cpu_of_children()
    began, cpu = time.perf_counter(), time.process_time()
    extra = work()
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu + _cpu_of_children() - children
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss": peak_rss_bytes(),
        "load": [load, os.getloadavg()[0]],
        **extra,
    }


# ----------------------------------------------------------------------------- children


def child_simulate(home: Path, size: int, chunk_days: int) -> dict:
    from tasks.data.simulate import simulate_world

    settings = settings_for(home)

    def work() -> dict:
        summary = simulate_world(
            world_spec(size, WORLD_DAYS),
            settings.source_dir,
            settings.truth_dir,
            chunk_days=chunk_days,
        )
        return {"rows": summary.rows, "active_at_end": summary.active_at_end}

    return measured(work)


def child_prepare(home: Path, trees: int, train: bool) -> dict:
    """Feast apply; D-1's features unless they and a current state are there; the champion."""
    from tasks.features.store import apply_feature_repo
    from tasks.features.tables import build_feature_tables

    settings = night_settings(home)
    timings: dict[str, float] = {}
    began = time.perf_counter()
    apply_feature_repo(settings)
    timings["feast apply"] = time.perf_counter() - began
    before = NIGHT - timedelta(days=1)
    if not _day_before_ready(settings, before):
        began = time.perf_counter()
        build_feature_tables(settings, before, before)
        timings[f"build {before} from scratch"] = time.perf_counter() - began
    out: dict = {"timings": timings}
    if train:
        began = time.perf_counter()
        out |= train_champion(settings, before, trees)
        timings["train, register, reference, compile"] = time.perf_counter() - began
    out["peak_rss"] = peak_rss_bytes()
    return out


def _day_before_ready(settings, day: date) -> bool:
    """D-1's partitions are published and its usage-window state is there, from this code."""
    import pyarrow.parquet as pq

    from tasks.features.feast_offline import partition_files
    from tasks.features.tables import FEATURE_TABLES
    from tasks.features.windows import CODE_KEY, STATE_DIR, STATE_NAME, code_fingerprint

    if any(not partition_files(settings.features_dir / t, day, day) for t in FEATURE_TABLES):
        return False
    state = _state_path(settings.features_dir / STATE_DIR / STATE_NAME, day)
    if not state.exists():
        return False
    meta = pq.read_metadata(state).metadata or {}
    return meta.get(CODE_KEY, b"").decode() == code_fingerprint()


def _state_path(root: Path, day: date) -> Path:
    return root / f"snapshot_date={day.isoformat()}" / "part_0.parquet"


def train_champion(settings, day: date, trees: int) -> dict:
    """Train the bench champion on D-1 (see the module docstring); register, promote, reference,
    compile."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from common import train_booster
    from sklearn.metrics import roc_auc_score

    from tasks.core.layout import table_glob
    from tasks.core.schema import TRUE_CHURN_PROBABILITY
    from tasks.core.sql import connect
    from tasks.features.feast_offline import partition_files
    from tasks.features.frames import view_reads
    from tasks.monitoring.reference import save_reference
    from tasks.scoring.models import compile_for_scoring
    from tasks.training.candidates import log_candidate
    from tasks.training.model_spec import TrainedModel, model_inputs, model_params, model_spec
    from tasks.training.registry import promote, register_version
    from tasks.training.retrain import drift_reference

    reads = view_reads(settings)
    features = [c for r in reads for c in r.columns]
    files = partition_files(reads[0].directory, day, day)
    ids = pq.read_table(files, columns=["subscriber_id"]).column(0).to_numpy()
    rng = np.random.default_rng(SEED)
    n = min(len(ids), TRAIN_ROWS + HOLDOUT_ROWS)
    picked = np.sort(rng.choice(ids, size=n, replace=False))
    con = connect()
    con.register("picked", pa.table({"subscriber_id": picked}))
    joins, columns = [], []
    for i, r in enumerate(reads):
        con.read_parquet(partition_files(r.directory, day, day)).create_view(f"v{i}")
        joins.append(f"JOIN v{i} ON v{i}.subscriber_id = picked.subscriber_id")
        columns += [f'v{i}."{c}"' for c in r.columns]
    truth = table_glob(settings.truth_dir, TRUE_CHURN_PROBABILITY)
    frame = con.sql(
        f"SELECT picked.subscriber_id, {', '.join(columns)}, t.true_churn_prob_30d "
        f"FROM picked {' '.join(joins)} "
        "JOIN (SELECT subscriber_id, true_churn_prob_30d FROM read_parquet($truth) "
        "      WHERE date = $day) AS t ON t.subscriber_id = picked.subscriber_id "
        "ORDER BY picked.subscriber_id",
        params={"truth": truth, "day": day},
    ).to_arrow_table()
    truth_p = frame.column("true_churn_prob_30d").to_numpy()
    label = (rng.random(frame.num_rows) < truth_p).astype(np.float32)
    order = rng.permutation(frame.num_rows)
    # Small worlds: 4 in 5 to train, the rest held out.
    cut = min(TRAIN_ROWS, frame.num_rows * 4 // 5)
    train_at, hold_at = np.sort(order[:cut]), np.sort(order[cut:])
    train = frame.select(features).take(pa.array(train_at))
    holdout = frame.select(features).take(pa.array(hold_at))
    train_df = train.to_pandas()
    spec = model_spec(train_df, features)
    params = model_params(settings)
    booster = train_booster(params, train_df, label[train_at], spec, trees)
    auc = float(roc_auc_score(label[hold_at], booster.predict(model_inputs(holdout, spec))))
    run_id = log_candidate(
        settings,
        booster=booster,
        model_spec=spec.to_dict(),
        input_example=model_inputs(holdout.slice(0, 5), spec),
        params={**params, "num_boost_round": trees},
        metrics={"roc_auc": auc},
        gate_results={"bench_setup": {"passed": True, "detail": "bench/night.py champion"}},
        tags={"bench": "bench/night.py"},
        artifacts=None,
        run_name="bench-night",
    )
    version = register_version(
        settings,
        run_id,
        {"reason": "bench/night.py champion", "training_window_end": day.isoformat()},
    )
    promote(settings, version, by="bench/night.py", reason="bench champion")
    model = TrainedModel(booster=booster, spec=spec, params=params, best_iteration=trees)
    reference, profile = drift_reference(settings, train, model)
    save_reference(settings, version, reference, profile)
    compiled = compile_for_scoring(settings, version) is not None
    return {
        "version": version,
        "trees": booster.num_trees(),
        "holdout_auc": auc,
        "train_rows": train.num_rows,
        "churn_rate": float(label.mean()),
        "mean_truth": float(truth_p.mean()),
        "compiled": compiled,
    }


class _Notes(logging.Handler):
    """Collects what the usage windows log: whether the build stepped or summed from scratch."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def child_features(home: Path) -> dict:
    from tasks.features.tables import build_feature_tables

    settings = night_settings(home)
    notes = _Notes()
    windows_log = logging.getLogger("tasks.features.windows")
    windows_log.addHandler(notes)
    windows_log.setLevel(logging.INFO)

    def work() -> dict:
        summary = build_feature_tables(settings, NIGHT, NIGHT)
        return {
            "contract_seconds": sum(r.seconds for r in summary.contracts),
            "rows": summary.rows,
            "subscribers": summary.rows["subscriber_profile"],
        }

    result = measured(work)
    scratch = any("from scratch" in m or "another sql/features" in m for m in notes.messages)
    result["path"] = "from scratch" if scratch else "incremental"
    result["notes"] = notes.messages
    return result


def child_materialize(home: Path, store: str) -> dict:
    from tasks.features.tables import materialize_online

    settings = night_settings(home, store)
    if store == "sqlite":
        _empty_sqlite(settings.feast_dir / "online_store.db")

    def work() -> dict:
        rows = materialize_online(settings, NIGHT)
        return {"rows": sum(rows.values()), "subscribers": rows["subscriber_profile"]}

    result = measured(work)
    if store == "sqlite":
        result["store_bytes"] = (settings.feast_dir / "online_store.db").stat().st_size
    return result


def _empty_sqlite(path: Path) -> None:
    """Every table of the SQLite online store emptied (Feast created them at apply)."""
    from materialize import empty_sqlite

    if path.exists():
        empty_sqlite(path)


def child_score(home: Path) -> dict:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tasks.scoring.nightly import run_scoring

    settings = night_settings(home)
    summary = None

    def work() -> dict:
        nonlocal summary
        summary = run_scoring(settings, NIGHT)
        return {}

    result = measured(work)
    champion_log = summary.log_files[0]
    ids = pq.read_table(champion_log, columns=["subscriber_id"]).column(0)
    log_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in summary.log_files)
    checks = {
        "high-risk file": summary.high_risk_csv.exists() and summary.high_risk_parquet.exists(),
        "log rows = scored": len(ids) == summary.scored == log_rows,
        "ids unique": pc.count_distinct(ids).as_py() == len(ids),
        "scored + not scored = in service": summary.scored + sum(summary.not_scored.values())
        == summary.subscribers,
    }
    return result | {
        "timings": summary.timings,
        "subscribers": summary.subscribers,
        "scored": summary.scored,
        "not_scored": summary.not_scored,
        "high_risk_rows": summary.high_risk_rows,
        "shards": summary.shards,
        "log_bytes": sum(Path(f).stat().st_size for f in summary.log_files),
        "predictors": summary.predictors,
        "checks": checks,
    }


def child_monitor(home: Path) -> dict:
    from tasks.monitoring.monitor import monitor_day

    settings = night_settings(home)

    def work() -> dict:
        found = monitor_day(settings, NIGHT)
        return {
            "timings": found.timings,
            "subscribers": found.subscribers,
            "monitored": found.monitored,
            "severity": found.severity.level,
            "contracts_passed": found.contracts_passed(),
        }

    return measured(work)


def child_features_floor(home: Path) -> dict:
    from tasks.core.layout import table_glob
    from tasks.core.schema import SOURCE_TABLES
    from tasks.core.sql import connect

    settings = night_settings(home)
    usage = table_glob(settings.source_dir, SOURCE_TABLES["usage_daily"])
    con = connect(
        memory_limit=settings.duckdb_memory_limit,
        spill_dir=settings.home / "tmp" / "duckdb_floor",
    )

    def work() -> dict:
        table = con.sql(
            "SELECT subscriber_id, COUNT(*) AS days_90, SUM(data_gb) AS data_gb_90, "
            "SUM(voice_minutes) AS voice_minutes_90, SUM(dropped_calls) AS dropped_calls_90 "
            "FROM read_parquet($usage) WHERE usage_date BETWEEN $first AND $day "
            "GROUP BY subscriber_id",
            params={"usage": usage, "first": NIGHT - timedelta(days=89), "day": NIGHT},
        ).to_arrow_table()
        return {"subscribers": table.num_rows}

    result = measured(work)
    shutil.rmtree(settings.home / "tmp" / "duckdb_floor", ignore_errors=True)
    return result


def child_score_floor(home: Path) -> dict:
    """Bare predict over D's feature matrix (built outside the clock), 2 threads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.features.feast_offline import partition_files
    from tasks.features.frames import view_reads
    from tasks.training.model_spec import ModelSpec, model_inputs
    from tasks.training.registry import load_model

    settings = night_settings(home)
    reads = view_reads(settings)
    booster, spec_dict, _ = load_model(settings, "champion")
    spec = ModelSpec.from_dict(spec_dict)
    began = time.perf_counter()
    ids, columns = None, {}
    files = 0
    for r in reads:
        paths = partition_files(r.directory, NIGHT, NIGHT)
        files += len(paths)
        part = pq.read_table(paths, columns=["subscriber_id", *r.columns]).sort_by("subscriber_id")
        if ids is None:
            ids = part.column("subscriber_id")
        elif not part.column("subscriber_id").equals(ids):
            raise SystemExit(f"view {r.name} holds other subscribers on {NIGHT} than the first")
        columns |= {c: part.column(c) for c in r.columns}
        del part
    matrix = pa.table(columns)
    del columns
    read_s = time.perf_counter() - began
    state = {"predict": 0.0, "cpu": 0.0, "inputs": 0.0, "rows": 0, "sum": 0.0}
    load = os.getloadavg()[0]
    for start in range(0, matrix.num_rows, FLOOR_ROWS):
        clock = time.perf_counter()
        inputs = model_inputs(matrix.slice(start, FLOOR_ROWS), spec)
        state["inputs"] += time.perf_counter() - clock
        clock, cpu = time.perf_counter(), time.process_time()
        p = booster.predict(inputs, num_threads=PREDICT_THREADS)
        state["predict"] += time.perf_counter() - clock
        state["cpu"] += time.process_time() - cpu
        state["rows"] += len(p)
        state["sum"] += float(p.sum())
    return {
        "seconds": state["predict"],
        "cpu_seconds": state["cpu"],
        "peak_rss": peak_rss_bytes(),
        "load": [load, os.getloadavg()[0]],
        "rows": state["rows"],
        "read_s": read_s,
        "inputs_s": state["inputs"],
        "files": files,
        "mean_p": state["sum"] / max(state["rows"], 1),
    }


CHILDREN = {
    "features": child_features,
    "score": child_score,
    "monitor": child_monitor,
    "features floor": child_features_floor,
    "score floor": child_score_floor,
}


def child(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    kind = args.child
    if kind == "simulate":
        result = child_simulate(args.home, args.size, args.chunk)
    elif kind == "prepare":
        result = child_prepare(args.home, args.trees, args.train)
    elif kind.startswith("materialize"):
        result = child_materialize(args.home, kind.split()[1])
    else:
        result = CHILDREN[kind](args.home)
    report_to_parent(result)


def _run(kind: str, home: Path, *extra: object) -> dict:
    return run_child(
        __file__, "--child", kind, "--home", home, *extra, failure=f"{kind} failed at {home}"
    )


# ----------------------------------------------------------------------------- world and reset


def world_stamp(size: int, chunk_days: int) -> dict:
    from tasks.data.simulate import GENERATOR_VERSION

    return {
        "subscribers": size,
        "days": WORLD_DAYS,
        "start": START.isoformat(),
        "seed": SEED,
        "chunk_days": chunk_days,
        "generator_version": GENERATOR_VERSION,
    }


def prepared_stamp(trees: int) -> dict:
    """What the prepared state depends on: another feature service or repo means a fresh one."""
    return {
        "trees": trees,
        "train_rows": TRAIN_ROWS,
        "night": NIGHT.isoformat(),
        "feature_service": os.environ.get("CHURN_FEATURE_SERVICE", "(default)"),
        "feature_repo_sha256": feature_repo_fingerprint(),
    }


DERIVED = ("features", "feast", "mlflow", "monitoring", "predictions", "retention", "cache", "tmp")
"""Everything under a world's home that is not its source and truth."""


def ensure_world(home: Path, size: int, chunk_days: int | None, console: Console) -> dict:
    """The simulated world (reused when its stamp matches); the simulation's measurement."""
    marker = home / "_bench_world.json"
    saved = home / "_simulate.json"
    if chunk_days is None and marker.exists():
        chunk_days = json.loads(marker.read_text()).get("chunk_days", 1)
    stamp = world_stamp(size, chunk_days or 1)
    if stamp_matches(marker, stamp):
        console.print(f"{size:,}: world reused ({home})")
        return json.loads(saved.read_text()) if saved.exists() else {}
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    with console.status(
        f"simulating {size:,} × {WORLD_DAYS} days (chunks of {stamp['chunk_days']})"
    ):
        r = _run("simulate", home, "--size", size, "--chunk", stamp["chunk_days"])
    r["chunk_days"] = stamp["chunk_days"]
    saved.write_text(json.dumps(r))
    marker.write_text(json.dumps(stamp))
    console.print(
        f"{size:,}: simulated {WORLD_DAYS} days in {r['seconds']:.0f} s ({r['cpu_seconds']:.0f} "
        f"CPU s), peak RSS {gib(r['peak_rss'])} GB, chunks of {stamp['chunk_days']} day(s)"
    )
    return r


def ensure_prepared(home: Path, trees: int, memory: str | None, console: Console) -> dict:
    marker = home / "_bench_night_prepared.json"
    stamp = prepared_stamp(trees)
    train = not stamp_matches(marker, stamp)
    if train:
        for name in DERIVED:
            shutil.rmtree(home / name, ignore_errors=True)
    saved = os.environ.get("CHURN_DUCKDB_MEMORY_LIMIT")
    if memory:
        # D-1's scratch sum only (untimed): the night's stages keep the configured limit.
        os.environ["CHURN_DUCKDB_MEMORY_LIMIT"] = memory
    try:
        with console.status(f"preparing {home.name}: feast apply, D-1, champion"):
            r = _run("prepare", home, "--trees", trees, *(["--train"] if train else []))
    finally:
        if saved is None:
            os.environ.pop("CHURN_DUCKDB_MEMORY_LIMIT", None)
        else:
            os.environ["CHURN_DUCKDB_MEMORY_LIMIT"] = saved
    if train:
        marker.write_text(json.dumps(stamp))
        (home / "_champion.json").write_text(json.dumps(r))
    console.print(
        f"{home.name}: prepared — "
        + ", ".join(f"{k} {v:.1f} s" for k, v in r["timings"].items())
        + (
            f"; champion v{r['version']} ({r['trees']} trees on {r['train_rows']:,} rows of "
            f"{NIGHT - timedelta(days=1)}, holdout AUC {r['holdout_auc']:.3f}, label rate "
            f"{r['churn_rate']:.2%}, compiled: {r['compiled']})"
            if train
            else ""
        )
    )
    champion = home / "_champion.json"
    return json.loads(champion.read_text()) if champion.exists() else {}


def reset_night(home: Path) -> list[str]:
    """Set day D back to "not built yet" (see the module docstring); returns what was removed."""
    from tasks.features.tables import FEATURE_TABLES
    from tasks.features.windows import STATE_DIR, STATE_NAME
    from tasks.scoring.high_risk import high_risk_paths

    settings = settings_for(home)
    day = NIGHT.isoformat()
    removed: list[str] = []

    def remove(path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            return
        removed.append(str(path.relative_to(home)))

    def drop_lines(path: Path, keep: Callable[[dict], bool]) -> None:
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if not line.strip() or keep(json.loads(line))]
        if len(kept) != len(lines):
            path.write_text("".join(f"{line}\n" for line in kept))
            removed.append(f"{path.relative_to(home)}: {len(lines) - len(kept)} line(s)")

    features = settings.features_dir
    for name in FEATURE_TABLES:
        remove(features / name / f"snapshot_date={day}")
    remove(features / STATE_DIR / STATE_NAME / f"snapshot_date={day}")
    cache = features / STATE_DIR / "usage_days.json"
    if cache.exists():
        content = json.loads(cache.read_text())
        files = content.get("files", {})
        holding = [name for name, entry in files.items() if day in entry.get("days", {})]
        if holding:
            for name in holding:
                del files[name]
            cache.write_text(json.dumps(content))
            removed.append(f"{cache.relative_to(home)}: fingerprints of {', '.join(holding)}")
    remove(settings.predictions_dir / f"score_date={day}")
    drop_lines(settings.predictions_dir / "_ledger.jsonl", lambda e: e.get("score_date") != day)
    for path in high_risk_paths(settings, NIGHT):
        remove(path)
    monitoring = settings.monitoring_dir
    remove(monitoring / "profiles" / day)
    remove(monitoring / "drift" / f"{day}.parquet")
    remove(monitoring / "reports" / day)
    drop_lines(monitoring / "drift_triggers.jsonl", lambda e: e.get("score_date") != day)
    remove(home / "tmp")
    return removed


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


# ----------------------------------------------------------------------------- the night


def redis_stage(home: Path, console: Console, size: int) -> dict:
    """The Redis materialisation against a fresh server; its memory and CPU added."""
    import psutil
    import redis

    scratch = Path(tempfile.mkdtemp(prefix="bench-night-redis-"))
    server, url = start_redis(scratch)
    os.environ["BENCH_REDIS_URL"] = url
    try:
        process = psutil.Process(server.pid)
        server_cpu = sum(process.cpu_times()[:2])
        with console.status(f"materialize redis at {size:,}"):
            r = _run("materialize redis", home)
        server_cpu = sum(process.cpu_times()[:2]) - server_cpu
        client = redis.Redis.from_url(url)
        info = client.info("memory")
        keys = client.dbsize()
        client.close()
        status = Path(f"/proc/{server.pid}/status").read_text().splitlines()
        hwm = next(int(x.split()[1]) * 1024 for x in status if x.startswith("VmHWM"))
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(scratch, ignore_errors=True)
    r["client_cpu_seconds"] = r["cpu_seconds"]
    r["server_cpu_seconds"] = server_cpu
    r["cpu_seconds"] += server_cpu
    r["redis_used_memory"] = info["used_memory"]
    r["redis_peak_memory"] = info["used_memory_peak"]
    r["redis_server_peak_rss"] = hwm
    r["redis_keys"] = keys
    return r


def run_night(home: Path, size: int, args: argparse.Namespace, console: Console) -> dict:
    stages: dict[str, dict] = {}
    with console.status(f"features of {NIGHT} at {size:,}"):
        stages["features"] = _run("features", home)
    if size <= args.sqlite_max:
        with console.status(f"materialize sqlite at {size:,}"):
            stages["materialize sqlite"] = _run("materialize sqlite", home)
    if args.redis:
        stages["materialize redis"] = redis_stage(home, console, size)
    with console.status(f"score at {size:,}"):
        stages["score"] = _run("score", home)
    with console.status(f"monitor at {size:,}"):
        stages["monitor"] = _run("monitor", home)
    floors = {}
    for stage, kind in FLOORS.items():
        with console.status(f"{kind} at {size:,}"):
            floors[stage] = _run(kind, home)
    return {"stages": stages, "floors": floors}


def extrapolate(
    store: str, size: int, view_rows: int, results: dict[int, dict], workdir: Path, limit: int
) -> dict | None:
    """Seconds (and Redis memory) of a store at ``size``, from the largest size measured at or
    below ``limit``: this run's, else one saved in the workdir."""
    known = {s: r for s, r in results.items() if s != size}
    for path in workdir.glob("night_*.json"):
        saved = json.loads(path.read_text())
        known.setdefault(saved["subscribers"], saved)
    measured_at = [
        s for s, r in known.items() if store in r["night"]["stages"] and s <= limit and s != size
    ]
    if not measured_at:
        return None
    base = max(measured_at)
    stage = known[base]["night"]["stages"][store]
    rate = stage["rows"] / stage["seconds"]
    out = {
        "from_size": base,
        "rows_per_s": rate,
        "seconds": view_rows / rate,
        "peak_rss": stage["peak_rss"],
    }
    for key in ("redis_used_memory", "store_bytes"):
        if key in stage:
            out[key] = stage[key] * view_rows / stage["rows"]
    return out


def extrapolations(size: int, results: dict[int, dict], args: argparse.Namespace) -> dict:
    """The stores a size's night did not run, extrapolated (see :func:`extrapolate`)."""
    stages = results[size]["night"]["stages"]
    view_rows = sum(stages["features"]["rows"].values())
    return {
        store: extrapolate(store, size, view_rows, results, args.workdir, limit)
        for store, limit in (("materialize sqlite", args.sqlite_max), ("materialize redis", 10**12))
        if store not in stages
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--redis",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="materialize into a fresh redis-server too (else extrapolated)",
    )
    parser.add_argument(
        "--sqlite-max",
        type=int,
        default=1_000_000,
        help="SQLite materialisation only up to this size; above it extrapolated",
    )
    parser.add_argument(
        "--chunk-days",
        type=int,
        help="days per simulated usage file (default: the world's, else 1)",
    )
    parser.add_argument("--trees", type=int, default=200, help="trees of the bench champion")
    parser.add_argument(
        "--prepare-duckdb-memory",
        help="CHURN_DUCKDB_MEMORY_LIMIT for the untimed scratch build of D-1 only (e.g. 14GB: "
        "at 10M, under the default 4GB, its 90-day usage sum spilled over 25 GB to disk)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only print and save the tables of the sizes' saved results (night_<size>.json)",
    )
    parser.add_argument("--child")
    parser.add_argument("--home", type=Path)
    parser.add_argument("--size", type=int)
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from tasks.features.tables import LOOKBACK_DAYS

    if WORLD_DAYS != LOOKBACK_DAYS + 1:
        raise SystemExit(f"LOOKBACK_DAYS is {LOOKBACK_DAYS}: set WORLD_DAYS to {LOOKBACK_DAYS + 1}")
    console = Console(width=200)
    if args.report:
        saved = {s: json.loads((args.workdir / f"night_{s}.json").read_text()) for s in args.sizes}
        for size, res in saved.items():
            res["extrapolated"] = extrapolations(size, saved, args)
        report(saved, args.workdir, console)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict] = {}
    for size in args.sizes:
        home = (args.workdir / f"night_{size}").resolve()
        simulated = ensure_world(home, size, args.chunk_days, console)
        removed = reset_night(home)
        if removed:
            console.print(f"{size:,}: reset {NIGHT}, removed: " + "; ".join(removed))
        champion = ensure_prepared(home, args.trees, args.prepare_duckdb_memory, console)
        night = run_night(home, size, args, console)
        disk = {
            name: disk_bytes(home / name)
            for name in ("source", "truth", "features", "predictions", "feast", "monitoring")
        }
        results[size] = {
            "subscribers": size,
            "night_day": NIGHT.isoformat(),
            "world_days": WORLD_DAYS,
            "simulate": simulated,
            "champion": champion,
            "night": night,
            "disk": disk,
            "load_end": list(os.getloadavg()),
        }
        results[size]["extrapolated"] = extrapolations(size, results, args)
        (args.workdir / f"night_{size}.json").write_text(json.dumps(results[size], indent=1))
    report(results, args.workdir, console)


# ----------------------------------------------------------------------------- the table


COLUMNS = (
    "subscribers",
    "stage",
    "seconds",
    "CPU s",
    "peak RSS",
    "floor s",
    "× floor",
    "load (1 min)",
    "notes",
)


def _load(r: dict) -> str:
    return " → ".join(f"{x:.1f}" for x in r["load"])


def stage_notes(stage: str, r: dict) -> str:
    if stage == "features":
        return (
            f"{r['path']}; of which contracts {r['contract_seconds']:.1f} s; "
            f"{r['subscribers']:,} subscribers"
        )
    if stage == "materialize sqlite":
        return (
            f"{r['rows']:,} view rows, {r['rows'] / r['seconds']:,.0f} rows/s; store emptied "
            f"first; SQLite file {gib(r.get('store_bytes', 0))} GB"
        )
    if stage == "materialize redis":
        return (
            f"{r['rows']:,} view rows, {r['rows'] / r['seconds']:,.0f} rows/s; server CPU "
            f"{r['server_cpu_seconds']:.1f} s; Redis used_memory {gib(r['redis_used_memory'])} GB "
            f"(server peak RSS {gib(r['redis_server_peak_rss'])} GB, {r['redis_keys']:,} keys)"
        )
    if stage == "score":
        t = r["timings"]
        inner = ", ".join(
            f"{k.removeprefix('shard ')} {v:.1f}" for k, v in t.items() if k != "total"
        )
        ok = all(r["checks"].values())
        return (
            f"scored {r['scored']:,} of {r['subscribers']:,} in {r['shards']} shards, "
            f"file {r['high_risk_rows']:,} rows, log {r['log_bytes'] / 2**20:,.0f} MiB, checks "
            + ("passed" if ok else f"FAILED {r['checks']}")
            + f"; {inner}"
        )
    if stage == "monitor":
        t = ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items())
        return f"{r['monitored']:,} monitored, severity {r['severity']}; {t}"
    return ""


def floor_notes(stage: str, r: dict) -> str:
    if stage == "features":
        return f"DuckDB: 90-day usage sums of {r['subscribers']:,} subscribers into Arrow"
    return (
        f"LightGBM predict, {PREDICT_THREADS} threads, {r['rows']:,} rows ({r['files']} files "
        f"read in {r['read_s']:.1f} s, inputs {r['inputs_s']:.1f} s, outside the clock)"
    )


def size_rows(size: int, res: dict) -> tuple[list[list[str]], list[str]]:
    """The table's rows of one size, and its verdict lines."""
    stages, floors = res["night"]["stages"], res["night"]["floors"]
    extra = res.get("extrapolated", {})
    rows: list[list[str]] = []
    n = f"{size:,}"
    for stage in STAGES:
        if stage in stages:
            r = stages[stage]
            floor = floors.get(stage)
            rows.append(
                [
                    n,
                    stage,
                    f"{r['seconds']:.1f}",
                    f"{r['cpu_seconds']:.1f}",
                    f"{gib(r['peak_rss'])} GB",
                    f"{floor['seconds']:.1f}" if floor else "—",
                    f"{r['seconds'] / floor['seconds']:.2f}" if floor else "—",
                    _load(r),
                    stage_notes(stage, r),
                ]
            )
        elif extra.get(stage):
            e = extra[stage]
            memory = (
                f"; Redis used_memory ≈ {gib(e['redis_used_memory'])} GB"
                if "redis_used_memory" in e
                else ""
            )
            if "store_bytes" in e:
                memory += f"; SQLite file ≈ {gib(e['store_bytes'])} GB"
            note = (
                f"not run: extrapolated from {e['rows_per_s']:,.0f} view rows/s measured at "
                f"{e['from_size']:,}{memory}"
            )
            rows.append([n, stage, f"≈ {e['seconds']:.0f}", "", "", "—", "—", "", note])
        elif stage in extra:
            rows.append(
                [n, stage, "not run", "", "", "—", "—", "", "no measurement to extrapolate"]
            )
    for stage, r in floors.items():
        rows.append(
            [
                n,
                f"  floor: {stage}",
                f"{r['seconds']:.1f}",
                f"{r['cpu_seconds']:.1f}",
                f"{gib(r['peak_rss'])} GB",
                "",
                "",
                _load(r),
                floor_notes(stage, r),
            ]
        )
    core = [stages[s] for s in NIGHT_CORE]
    seconds = sum(r["seconds"] for r in core)
    cpu = sum(r["cpu_seconds"] for r in core)
    peak = max(r["peak_rss"] for r in core)
    floor = sum(r["seconds"] for r in floors.values())
    note = "features + score + monitor; peak: the largest stage's; floor: the two floors"
    rows.append(
        [n, "night without materialisation", f"{seconds:.1f}", f"{cpu:.1f}", f"{gib(peak)} GB",
         f"{floor:.1f}", f"{seconds / floor:.2f}", "", note]
    )  # fmt: skip
    summary = (
        f"{n}: night without materialisation {seconds:.0f} s ({seconds / 60:.1f} min), "
        f"{cpu:.0f} CPU s, peak RSS {gib(peak)} GB; {seconds / floor:.2f}× the floors' "
        f"{floor:.1f} s"
    )
    verdicts = [summary]
    if size == TARGET_SIZE:
        verdicts.append(
            f"{n}: target ≤ {TARGET_SECONDS:.0f} s: "
            + ("met" if seconds <= TARGET_SECONDS else "NOT met")
            + f"; target peak ≤ {TARGET_PEAK / 2**30:.0f} GB: "
            + ("met" if peak <= TARGET_PEAK else "NOT met")
        )
    for store in ("materialize redis", "materialize sqlite"):
        r = stages.get(store) or extra.get(store)
        if not r:
            continue
        sure = store in stages
        total = seconds + r["seconds"]
        with_peak = max(peak, r["peak_rss"])
        label = store.split()[1]
        rows.append(
            [n, f"night with {label}", ("" if sure else "≈ ") + f"{total:.1f}",
             f"{cpu + r['cpu_seconds']:.1f}" if sure else "", f"{gib(with_peak)} GB", "", "",
             "", "measured" if sure else "materialisation extrapolated"]
        )  # fmt: skip
        bound = (
            f"the writer at {r['rows'] / r['seconds'] if sure else r['rows_per_s']:,.0f} view "
            "rows/s"
        )
        if "server_cpu_seconds" in r:
            bound += (
                f" with the Redis server on the same 2 cores ({r['server_cpu_seconds']:.0f} of "
                f"the stage's {r['cpu_seconds']:.0f} CPU s)"
            )
        if "redis_used_memory" in r:
            bound += f", Redis holding {gib(r['redis_used_memory'])} GB"
        if r.get("store_bytes"):
            bound += f", a SQLite file of {'' if sure else '≈ '}{gib(r['store_bytes'])} GB"
        verdicts.append(
            f"{n}: with {label}: {'' if sure else '≈ '}{total:.0f} s ({total / 60:.1f} min); "
            f"bounded by {bound}"
        )
    return rows, verdicts


def to_markdown(rows: list[list[str]]) -> str:
    def cell(value: str) -> str:
        return value.replace("|", "\\|")

    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("stage", "notes") else "---:" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report(results: dict[int, dict], workdir: Path, console: Console) -> None:
    title = f"One night ({NIGHT}, a {WORLD_DAYS}-day world): stages against their floors"
    table = new_table(title, COLUMNS, left={"stage", "notes"})
    all_rows: list[list[str]] = []
    verdicts: list[str] = []
    extras: list[str] = []
    for size, res in results.items():
        rows, lines = size_rows(size, res)
        for row in rows:
            table.add_row(*row)
        table.add_section()
        all_rows += rows
        verdicts += lines
        sim = res.get("simulate") or {}
        disk = res["disk"]
        extras.append(
            f"{size:,}: world on disk: source {gib(disk['source'])} GB, truth "
            f"{gib(disk['truth'])} GB, features {gib(disk['features'])} GB, prediction log "
            f"{gib(disk['predictions'])} GB, feast (the SQLite online store) {gib(disk['feast'])} GB"
            + (
                f"; simulated in {sim['seconds']:.0f} s, peak RSS {gib(sim['peak_rss'])} GB "
                f"(chunks of {sim.get('chunk_days', '?')} day(s))"
                if sim
                else ""
            )
        )
    console.print(table)
    for line in verdicts + extras:
        console.print(line)
    load = os.getloadavg()
    console.print(f"load average now {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores)")
    text = (
        f"# {title}\n\n"
        + to_markdown(all_rows)
        + "\n"
        + "".join(f"- {line}\n" for line in verdicts + extras)
    )
    name = "night.md" if len(results) == 1 else f"night_{'_'.join(map(str, results))}.md"
    (workdir / name).write_text(text)


if __name__ == "__main__":
    main()
