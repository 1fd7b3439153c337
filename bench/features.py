"""Benchmark the training frame: the project's Feast path against a raw DuckDB ASOF JOIN.

    python bench/features.py [--sizes 100000 1000000] [--days 210] [--workdir bench/out]

For each size it simulates a world (once; reused on later runs), builds the feature partitions
of the training snapshot days, then builds the same training frame three ways, each in a fresh
child process so its peak RSS is its own:

* project   — ``tasks.features.frames.build_training_frame``: Feast ``get_historical_features`` on the
              feature service, served by the partition-pruning offline store;
* raw asof  — one hand-written DuckDB query: the label spine ASOF LEFT JOIN each feature table
              (whole history, TTL applied), the baseline the target is measured against;
* feast stock — Feast's own DuckDB offline store (only up to --stock-max subscribers).

It checks that every path returns identical rows and prints rows/s, peak RSS and the ratio of
each path's time to the raw ASOF JOIN. Target: project ≤ 1.5× raw, ≤ 4 GB peak at 1M subscribers.
"""

from __future__ import annotations

import argparse
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import (
    ROOT,
    START,
    gib,
    new_table,
    peak_rss_bytes,
    per_second,
    prepare_world,
    report_to_parent,
    run_child,
    settings_for,
)
from rich.console import Console

PATHS = ("project", "raw asof", "feast stock")
"""Ways to build the training frame; each runs in its own child process."""


def raw_asof_frame(settings, as_of: date) -> pa.Table:
    """The same frame from one DuckDB query over whole tables: the baseline."""
    from tasks.core.schema import PROTECTED_ATTRIBUTES
    from tasks.core.sql import connect
    from tasks.features.frames import LABEL, TIMESTAMP, training_entities
    from tasks.features.store import feature_service, open_store, service_views

    store = open_store(settings)
    views = service_views(store, feature_service(store, settings.feature_service))
    entities = pa.Table.from_pandas(training_entities(settings, as_of), preserve_index=False)
    con = connect()
    con.register("entities", entities)
    selects, joins = [], []
    for i, (view, names) in enumerate(views):
        glob = str(settings.features_dir / view.name / "*" / "*.parquet")
        con.read_parquet(glob, hive_partitioning=False).create_view(f"v{i}")
        joins.append(
            f"ASOF LEFT JOIN v{i} ON e.subscriber_id = v{i}.subscriber_id "
            f"AND e.{TIMESTAMP} >= v{i}.snapshot_ts"
        )
        ttl_us = int(view.ttl / timedelta(microseconds=1))
        selects += [
            f"CASE WHEN v{i}.snapshot_ts >= e.{TIMESTAMP} - to_microseconds({ttl_us}) "
            f"THEN v{i}.{n} END AS {n}"
            for n in names
        ]
    query = (
        f"SELECT e.subscriber_id, e.snapshot_date, e.{TIMESTAMP}, {', '.join(selects)}, e.{LABEL}, "
        + ", ".join(f"e.{c}" for c in PROTECTED_ATTRIBUTES)
        + " FROM entities e "
        + " ".join(joins)
        + " ORDER BY e.snapshot_date, e.subscriber_id"
    )
    return con.sql(query).to_arrow_table()


def child(path: str, home: Path, as_of: date, out: Path) -> None:
    """Build one frame in this fresh process and report seconds and peak RSS as JSON."""
    from tasks.core.telemetry import disable_telemetry

    disable_telemetry()
    settings = settings_for(home)
    from tasks.features.frames import build_training_frame
    from tasks.features.store import open_store

    began = time.perf_counter()
    if path == "materialize":
        from tasks.features.tables import materialize_online

        rows = materialize_online(settings, as_of)["subscriber_profile"]
        peak = peak_rss_bytes()
        seconds = time.perf_counter() - began
        report_to_parent({"seconds": seconds, "peak_rss": peak, "rows": rows})
        return
    if path == "project":
        frame = build_training_frame(settings, as_of)
    elif path == "raw asof":
        frame = raw_asof_frame(settings, as_of)
    else:
        frame = build_training_frame(
            settings, as_of, store=open_store(settings, stock_offline_store=True)
        )
    seconds = time.perf_counter() - began
    pq.write_table(frame.replace_schema_metadata(None), out)
    peak = peak_rss_bytes()
    report_to_parent({"seconds": seconds, "peak_rss": peak, "rows": frame.num_rows})


def _same_rows(a: Path, b: Path) -> bool:
    left = pq.read_table(a).sort_by(
        [("snapshot_date", "ascending"), ("subscriber_id", "ascending")]
    )
    right = pq.read_table(b).sort_by(
        [("snapshot_date", "ascending"), ("subscriber_id", "ascending")]
    )
    right = right.select(left.column_names).cast(left.schema)
    return left.equals(right)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--days",
        type=int,
        default=210,
        help="days simulated (≥ 210: window + horizon + feature history); the frame is built at the last one",
    )
    parser.add_argument(
        "--full-history-max",
        type=int,
        default=100_000,
        help="largest size whose every day is built (larger ones build only the days the frame reads)",
    )
    parser.add_argument(
        "--stock-max", type=int, default=100_000, help="largest size to run Feast's stock store on"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--child", choices=(*PATHS, "materialize"))
    parser.add_argument("--home", type=Path)
    parser.add_argument("--as-of", type=date.fromisoformat)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home, args.as_of, args.out)
        return

    console = Console(width=150)
    as_of = START + timedelta(days=args.days - 1)
    table = new_table(
        f"Training frame at {as_of} (rolling window, weekly snapshots)",
        ("subscribers", "path", "rows", "seconds", "rows/s", "peak RSS", "× raw asof", "same rows"),
        left={"path"},
    )
    online_table = new_table(
        f"Online store: materialize {as_of} (batched writes)",
        ("subscribers", "rows", "seconds", "rows/s", "peak RSS"),
    )
    for size in args.sizes:
        home = args.workdir / f"world_{size}_{args.days}d"
        prep = prepare_world(
            home, size, args.days, as_of, console, full_history=size <= args.full_history_max
        )
        console.print(
            f"{size:,} subscribers: "
            + (", ".join(f"{k} {v:.1f}" for k, v in prep.items()) or "world reused")
        )
        results, outputs = {}, {}
        for path in PATHS:
            if path == "feast stock" and size > args.stock_max:
                continue
            outputs[path] = home / f"frame_{path.replace(' ', '_')}.parquet"
            with console.status(f"{path} at {size:,}"):
                results[path] = _run_child(path, home, as_of, outputs[path])

        base = results["raw asof"]["seconds"]
        for path, r in results.items():
            same = (
                "—"
                if path == "raw asof"
                else ("yes" if _same_rows(outputs["raw asof"], outputs[path]) else "NO")
            )
            table.add_row(
                f"{size:,}",
                path,
                f"{r['rows']:,}",
                f"{r['seconds']:.2f}",
                per_second(r["rows"], r["seconds"]),
                f"{gib(r['peak_rss'])} GB",
                f"{r['seconds'] / base:.2f}",
                same,
            )
        with console.status(f"materialize at {size:,}"):
            online = _run_child("materialize", home, as_of, home / "unused")
        online_table.add_row(
            f"{size:,}",
            f"{online['rows']:,}",
            f"{online['seconds']:.1f}",
            per_second(online["rows"], online["seconds"]),
            f"{gib(online['peak_rss'])} GB",
        )
    console.print(table)
    console.print(online_table)


def _run_child(path: str, home: Path, as_of: date, out: Path) -> dict:
    return run_child(
        __file__,
        *("--child", path, "--home", home, "--as-of", as_of.isoformat(), "--out", out),
        failure=f"{path} failed at {home}",
    )


if __name__ == "__main__":
    main()
