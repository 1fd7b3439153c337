"""Benchmark materialization into the online store: SQLite (Feast's writer) and Redis side by side.

    python bench/materialize.py [--sizes 20000 1000000] [--days 95] [--workdir bench/out]
                                [--feast-redis-max 20000] [--redis-url redis://…]

For each size it simulates a world (once; reused on later runs) and builds the feature
partitions of its last two days, then materializes the last day (``materialize_online``, every
view of ``feature_repo/``) in a fresh child process per store, so each peak RSS is its own:

* sqlite       — Feast's SQLite online store, as ``CHURN_ONLINE_STORE`` unset (a fresh file);
* redis        — ``CHURN_ONLINE_STORE=redis``: the project's bulk writer (tasks/features/redis_online.py);
* feast redis  — Feast's own Redis writer on the same data (only up to ``--feast-redis-max``).

Redis is a ``redis-server`` this script starts on a free port without persistence (flushed
before each run), unless ``--redis-url`` names one (its database is flushed: use a spare one).
Rows are the view rows written (every view: subscribers × 5). "same" says whether the endpoint's
Redis reader returns the SQLite reader's features for a sample of 2,000 subscribers.
Target (issue 14): 1M subscribers into Redis in ≤ 60 s on this 2-core machine, memory flat.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from common import (
    ROOT,
    START,
    gib,
    memory_now,
    new_table,
    per_second,
    report_to_parent,
    run_child,
    settings_for,
    start_redis,
    world_spec,
)
from rich.console import Console

STORES = ("sqlite", "redis", "feast redis")
SAMPLE = 2_000


def prepare(home: Path, subscribers: int, days: int, console: Console) -> date:
    """The world and the feature partitions of its last two days (reused when there)."""
    from tasks.data.simulate import simulate_world
    from tasks.features.store import apply_feature_repo
    from tasks.features.tables import build_feature_tables, built_days

    settings = settings_for(home, CHURN_ONLINE_STORE="sqlite")
    day = START + timedelta(days=days - 1)
    if not (settings.source_dir / "_manifest.json").exists():
        with console.status(f"simulating {subscribers:,} × {days} days"):
            simulate_world(world_spec(subscribers, days), settings.source_dir, settings.truth_dir)
    apply_feature_repo(settings)
    if not {day - timedelta(days=1), day} <= set(built_days(settings, "subscriber_billing_90d")):
        with console.status(f"building the features of {day - timedelta(days=1)} and {day}"):
            build_feature_tables(settings, day - timedelta(days=1), day)
    return day


def child(store: str, home: Path, day: date, redis_url: str) -> None:
    """Materialize ``day`` into one store in this fresh process; report seconds, rows and memory."""
    from tasks.core.telemetry import disable_telemetry

    disable_telemetry()
    env = {"CHURN_ONLINE_STORE": "sqlite" if store == "sqlite" else "redis"}
    if store != "sqlite":
        env["CHURN_REDIS_URL"] = redis_url
    settings = settings_for(home, **env)
    from tasks.features.tables import FEATURE_TABLES, as_of_timestamp, materialize_online

    rss_before, _ = memory_now()
    began = time.perf_counter()
    if store == "feast redis":
        import contextlib
        import io

        from tasks.features.store import open_store

        end = as_of_timestamp(day)
        with contextlib.redirect_stdout(io.StringIO()):
            open_store(settings).materialize(
                start_date=end - timedelta(days=1), end_date=end, feature_views=list(FEATURE_TABLES)
            )
    else:
        materialize_online(settings, day)
    seconds = time.perf_counter() - began
    _, peak = memory_now()
    rows = _view_rows(settings, day)
    report_to_parent(
        {"seconds": seconds, "rows": rows, "peak_rss": peak, "growth": max(0, peak - rss_before)}
    )


def _view_rows(settings, day: date) -> int:
    """Rows Feast's window holds over every view: the newest row per subscriber in (day-1, day)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tasks.features.feast_offline import partition_files
    from tasks.features.tables import FEATURE_TABLES

    total = 0
    for name in FEATURE_TABLES:
        files = partition_files(settings.features_dir / name, day - timedelta(days=1), day)
        ids = pq.read_table(files, columns=["subscriber_id"]).column("subscriber_id")
        total += len(pc.unique(ids))
    return total


def same_features(home: Path, redis_url: str) -> bool:
    """The Redis reader and the SQLite reader agree on a sample of the materialized subscribers."""
    import random

    from tasks.features.store import open_store
    from tasks.serving.reader import OnlineFeatureReader, UnknownSubscriber
    from tasks.serving.redis_reader import RedisFeatureReader

    sqlite = settings_for(home, CHURN_ONLINE_STORE="sqlite")
    sqlite_reader = OnlineFeatureReader(open_store(sqlite), sqlite)
    redis = settings_for(home, CHURN_ONLINE_STORE="redis", CHURN_REDIS_URL=redis_url)
    redis_reader = RedisFeatureReader(open_store(redis), redis)
    sample = random.Random(7).sample(range(1, _max_id(home) + 1), SAMPLE)
    for sid in sample:
        try:
            expected = sqlite_reader.read(sid)
        except UnknownSubscriber:
            expected = None
        try:
            found = redis_reader.read(sid)
        except UnknownSubscriber:
            found = None
        if found != expected:
            return False
    redis_reader.close()
    return True


def _max_id(home: Path) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted((home / "features" / "subscriber_profile").glob("*/*.parquet"))
    return pc.max(pq.read_table(files[-1], columns=["subscriber_id"]).column(0)).as_py()


def empty_sqlite(path: Path) -> None:
    """Every table of the SQLite online store emptied (Feast created them at apply)."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        for (name,) in tables.fetchall():
            connection.execute(f'DELETE FROM "{name}"')
    with sqlite3.connect(path) as connection:
        connection.execute("VACUUM")


def flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000])
    parser.add_argument("--days", type=int, default=95, help="days simulated (≥ 93: 91 of history)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--feast-redis-max", type=int, default=20_000)
    parser.add_argument("--redis-url", help="a Redis to use instead of starting one (flushed!)")
    parser.add_argument("--child", choices=STORES)
    parser.add_argument("--home", type=Path)
    parser.add_argument("--day", type=date.fromisoformat)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home, args.day, os.environ.get("BENCH_REDIS_URL", ""))
        return

    console = Console(width=150)
    table = new_table(
        "Online store: materialize one day, every view (5 per subscriber)",
        ("subscribers", "store", "view rows", "seconds", "rows/s", "subscribers/s", "peak RSS",
         "growth", "same"),
        left={"store"},
    )  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    server, url = (None, args.redis_url) if args.redis_url else start_redis(scratch)
    os.environ["BENCH_REDIS_URL"] = url  # to the children through their environment, not argv
    try:
        for size in args.sizes:
            home = args.workdir / f"materialize_{size}_{args.days}d"
            day = prepare(home, size, args.days, console)
            results = {}
            for store in STORES:
                if store == "feast redis" and size > args.feast_redis_max:
                    continue
                if store == "sqlite":
                    empty_sqlite(home / "feast" / "online_store.db")
                else:
                    flush(url)
                with console.status(f"{store} at {size:,}"):
                    results[store] = run_child(
                        __file__, "--child", store, "--home", home, "--day", day.isoformat(),
                        failure=f"{store} failed at {size:,}",
                    )  # fmt: skip
                if store == "redis":
                    results[store]["same"] = "yes" if same_features(home, url) else "NO"
            for store, r in results.items():
                table.add_row(
                    f"{size:,}",
                    store,
                    f"{r['rows']:,}",
                    f"{r['seconds']:.2f}",
                    per_second(r["rows"], r["seconds"]),
                    per_second(size, r["seconds"]),
                    f"{gib(r['peak_rss'])} GB",
                    f"{gib(r['growth'])} GB",
                    r.get("same", "—"),
                )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    console.print(table)
    load = os.getloadavg()
    console.print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores)")


if __name__ == "__main__":
    main()
