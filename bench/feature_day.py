"""Benchmark one feature day: built from scratch, and incrementally from the day before's state.

    python bench/feature_day.py [--sizes 100000 1000000] [--days 210] [--workdir bench/out]
                                [--world PATH] [--day YYYY-MM-DD] [--previous DIR]

For each size it takes a simulated world (``<workdir>/world_<size>_<days>d``, simulated once and
reused, as bench/features.py does; or ``--world``, whose source is only read) and builds its last
day (or ``--day``) in fresh data roots beside it (``<workdir>/feature_day_<size>/``) whose
``source`` is a link to the world's. Each build runs in a fresh child process, so its peak RSS is
its own:

* from scratch  — no usage-window state and no source-day cache: the usage windows are summed
                  over the 90 days (``sql/features/usage_windows.sql``), the full recompute;
* incremental   — the state of the day before is there (built first, in an untimed child): the
                  windows step from it (``usage_windows_step.sql``), reading five days of usage;
* previous code — with ``--previous DIR``: the same day built by an earlier version of the code
                  imported from DIR (``git archive <rev> tasks sql feature_repo | tar -x -C DIR``),
                  e.g. the running totals and ASOF joins over 90 days that came before the state;
* incremental, N shards / on Dask, W workers — with ``--shards N`` (and ``--dask-workers W...``):
                  the incremental day split into N subscriber-id ranges
                  (``CHURN_FEATURE_SHARD_SUBSCRIBERS``), built one after the other in the process,
                  then on a LocalCluster of W worker processes (``CHURN_FEATURE_RUNNER=dask``,
                  DuckDB threads = cores / W each). The cluster starts inside the timed build, as
                  a night's does. Peak RSS there is the sampled sum over the process and its
                  descendants (the workers, the nannies), not VmHWM, and CPU s adds the
                  descendants' CPU seconds.

Every build is the whole ``build_feature_tables``: all five tables of feature service v2, their
contracts (whylogs) and the publish; "of which contracts" is the time spent checking contracts.
"same rows": whether the build published the same partitions as the scratch build (schema and
values to the bit; row order too for the usage tables, which are written in subscriber order,
while DuckDB's partitioned writes of the others and of the previous code fix no order, so those
are compared ordered by subscriber), and for the scratch build whether it equals the world's own
partition of the day where it has one (built by whatever code built the world).
Target (issue 15): one day at 1M subscribers ≤ 20 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
from common import (
    START,
    TreePeakRss,
    gib,
    new_table,
    peak_rss_bytes,
    per_second,
    report_to_parent,
    run_child,
    settings_for,
    world_spec,
)
from rich.console import Console

PATHS = ("from scratch", "incremental")


def child(step: str, home: Path, day: date) -> None:
    """``prepare`` (feast apply; the day before, for the incremental root) or ``build`` ``day``."""
    from tasks.core.telemetry import disable_telemetry

    disable_telemetry()
    settings = settings_for(home)
    from tasks.features.store import apply_feature_repo
    from tasks.features.tables import build_feature_tables

    if step.startswith("prepare"):
        if not (settings.feast_dir / "registry.db").exists():
            apply_feature_repo(settings)
        if step == "prepare incremental":
            build_feature_tables(settings, day - timedelta(days=1), day - timedelta(days=1))
        report_to_parent({})
        return
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    cpu_began = time.process_time()
    with TreePeakRss() as tree:
        summary = build_feature_tables(settings, day, day)
    seconds = time.perf_counter() - began
    report_to_parent(
        {
            "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu_began + tree.descendants_cpu_seconds,
            "contract_seconds": sum(r.seconds for r in summary.contracts),
            "rows": summary.rows["subscriber_profile"],
            "peak_rss": max(peak_rss_bytes(), tree.peak),
            "load": [load_before, os.getloadavg()[0]],
        }
    )


def _partition(root: Path, name: str, day: date):
    files = sorted((root / name / f"snapshot_date={day.isoformat()}").glob("*.parquet"))
    return pq.read_table([str(f) for f in files]) if files else None


def same_partitions(left: Path, right: Path, day: date, *, ordered: bool) -> bool | None:
    """Whether every feature table's partition of ``day`` is equal under both roots (None: the
    right root has none).

    The usage tables are written in subscriber order; the others by DuckDB's partitioned write,
    whose row order varies from run to run at this size, so they are ordered by subscriber
    first, and so is every table when ``ordered`` is False.
    """
    from tasks.features.tables import FEATURE_TABLES
    from tasks.features.windows import WINDOW_TABLES

    for name in FEATURE_TABLES:
        a, b = _partition(left, name, day), _partition(right, name, day)
        if b is None:
            return None
        if a is not None and not (ordered and name in WINDOW_TABLES):
            a, b = a.sort_by("subscriber_id"), b.sort_by("subscriber_id")
        if a is None or not a.equals(b):
            return False
    return True


def _world(args: argparse.Namespace, size: int, console: Console) -> Path:
    """The world's data root: ``--world``, or a simulated one under the workdir."""
    if args.world:
        return args.world
    home = args.workdir / f"world_{size}_{args.days}d"
    settings = settings_for(home)
    if not (settings.source_dir / "_manifest.json").exists():
        from tasks.data.simulate import simulate_world

        with console.status(f"simulating {size:,} × {args.days} days"):
            simulate_world(world_spec(size, args.days), settings.source_dir, settings.truth_dir)
    return home


def _fresh_root(root: Path, world: Path) -> None:
    """A data root whose source is the world's, with no features, state or staging."""
    root.mkdir(parents=True, exist_ok=True)
    for leftover in ("features", "tmp"):
        shutil.rmtree(root / leftover, ignore_errors=True)
    source = root / "source"
    if not source.is_symlink():
        source.symlink_to((world / "source").resolve(), target_is_directory=True)


def _folder(path: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in path)


def _same(equal: bool | None) -> str:
    return "—" if equal is None else ("yes" if equal else "NO")


def _run(
    step: str, home: Path, day: date, code: Path | None = None, env: dict[str, str] | None = None
) -> dict:
    """``step`` in a child with ``env`` set; with ``code``, the child imports ``tasks`` from there."""
    env = {**(env or {}), **({"PYTHONPATH": str(code.resolve())} if code is not None else {})}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return run_child(
            __file__,
            *("--child", step, "--home", home, "--day", day.isoformat()),
            failure=f"{step} failed at {home}",
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _split_paths(world: Path, shards: int, workers: list[int]) -> dict[str, dict[str, str]]:
    """The sharded incremental paths and the settings each runs with: ``shards`` equal ranges
    of the world's ids (arrivals included)."""
    if shards < 2:
        return {}
    import pyarrow.compute as pc

    from tasks.core.layout import table_path
    from tasks.core.schema import SOURCE_TABLES

    path = table_path(world / "source", SOURCE_TABLES["subscribers"])
    max_id = pc.max(pq.read_table(path, columns=["subscriber_id"])["subscriber_id"]).as_py()
    split = {"CHURN_FEATURE_SHARD_SUBSCRIBERS": str(-(-max_id // shards))}
    paths = {f"incremental, {shards} shards": split}
    for w in workers:
        paths[f"incremental, {shards} shards on Dask, {w} worker{'s' if w > 1 else ''}"] = {
            **split,
            "CHURN_FEATURE_RUNNER": "dask",
            "CHURN_MODEL_THREADS": str(w),
        }
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--days", type=int, default=210, help="days of a simulated world")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--world", type=Path, help="an existing world's data root (one size)")
    parser.add_argument("--day", type=date.fromisoformat, help="default: the world's last day")
    parser.add_argument(
        "--previous",
        type=Path,
        help="a copy of an earlier version's tasks/, sql/, feature_repo/ (e.g. `git archive "
        "<rev> tasks sql feature_repo | tar -x -C DIR`): its build of the day is measured too",
    )
    parser.add_argument(
        "--shards", type=int, default=1, help="also the incremental day in N shards"
    )
    parser.add_argument(
        "--dask-workers", type=int, nargs="*", default=[], help="with --shards: on Dask, W workers"
    )
    parser.add_argument("--child")
    parser.add_argument("--home", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.home, args.day)
        return

    console = Console(width=200)
    table = new_table(
        "One feature day (build_feature_tables: five tables, contracts, publish)",
        (
            "subscribers",
            "path",
            "rows",
            "seconds",
            "of which contracts",
            "without contracts",
            "CPU s",
            "rows/s",
            "peak RSS",
            "× from scratch (without contracts)",
            "same rows",
            "load (1 min)",
        ),
        left={"path"},
    )
    sizes = args.sizes[:1] if args.world else args.sizes
    for size in sizes:
        world = _world(args, size, console)
        day = args.day or START + timedelta(days=args.days - 1)
        base = args.workdir / f"feature_day_{size}"
        results, same = {}, {}
        split = _split_paths(world, args.shards, args.dask_workers)
        paths = [*PATHS, *(["previous code"] if args.previous else []), *split]
        for path in paths:
            root = base / _folder(path)
            code = args.previous if path == "previous code" else None
            _fresh_root(root, world)
            prepare = "prepare incremental" if path.startswith("incremental") else "prepare"
            with console.status(f"{path} at {size:,}: preparing"):
                _run(prepare, root, day, code)
            with console.status(f"{path} at {size:,}: building {day}"):
                results[path] = _run("build", root, day, code, split.get(path))
        scratch_root = base / "from_scratch" / "features"
        same["from scratch"] = "as the world's: " + _same(
            same_partitions(scratch_root, world / "features", day, ordered=False)
        )
        for path in paths[1:]:
            root = base / _folder(path) / "features"
            ordered = path.startswith("incremental")  # the shards' files read in name order
            same[path] = _same(same_partitions(scratch_root, root, day, ordered=ordered))
        scratch = results["from scratch"]
        for path, r in results.items():
            table.add_row(
                args.world.name if args.world else f"{size:,}",
                path,
                f"{r['rows']:,}",
                f"{r['seconds']:.1f}",
                f"{r['contract_seconds']:.1f}",
                f"{r['seconds'] - r['contract_seconds']:.1f}",
                f"{r['cpu_seconds']:.1f}",
                per_second(r["rows"], r["seconds"]),
                f"{gib(r['peak_rss'])} GB",
                f"{r['seconds'] / scratch['seconds']:.2f} "
                f"({(r['seconds'] - r['contract_seconds']) / (scratch['seconds'] - scratch['contract_seconds']):.2f})",
                same[path],
                " → ".join(f"{x:.1f}" for x in r["load"]),
            )
    console.print(table)


if __name__ == "__main__":
    main()
