"""Benchmark the simulator end to end (simulation and Parquet writing) at two sizes.

    python bench/simulate.py [--subscribers 100000] [--days 180] [--seed 7]

Runs a quarter-size world first as the baseline, then the full one, each into a fresh
temporary directory, and prints rows written, wall time, throughput (subscriber-days per
second) and the peak resident memory sampled during each run, so the ratio shows how time and
memory scale with the population (memory should follow the chunk, not the number of days).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import psutil
from common import TreePeakRss, mib, new_table, per_second
from rich.console import Console

from tasks.core.schema import USAGE_DAILY
from tasks.data.sim_population import WorldSpec
from tasks.data.simulate import WorldSummary, simulate_world


@dataclass(frozen=True)
class Run:
    """One timed simulation."""

    label: str
    spec: WorldSpec
    summary: WorldSummary
    seconds: float
    peak_rss: int
    disk_bytes: int

    @property
    def subscriber_days(self) -> int:
        return self.summary.rows[USAGE_DAILY.name]


def _disk_bytes(*roots: Path) -> int:
    return sum(p.stat().st_size for root in roots for p in root.rglob("*") if p.is_file())


def run_once(label: str, spec: WorldSpec, chunk_days: int) -> Run:
    """Simulate ``spec`` into a temporary directory and measure it."""
    with tempfile.TemporaryDirectory(prefix="churn-bench-") as tmp:
        source, truth = Path(tmp) / "source", Path(tmp) / "truth"
        with TreePeakRss(every_s=0.01) as rss:
            started = time.perf_counter()
            summary = simulate_world(spec, source, truth, chunk_days=chunk_days)
            seconds = time.perf_counter() - started
        return Run(label, spec, summary, seconds, rss.peak, _disk_bytes(source, truth))


def report(runs: list[Run], console: Console) -> None:
    table = new_table(
        "simulate_world, end to end including Parquet writing",
        ("run", "subscribers", "days", "rows", "seconds", "sub-days/s", "peak RSS", "disk"),
        title_justify="center",
        no_wrap=True,
    )
    for r in runs:
        table.add_row(
            r.label,
            f"{r.spec.subscribers:,}",
            f"{r.spec.days:,}",
            f"{sum(r.summary.rows.values()):,}",
            f"{r.seconds:.2f}",
            per_second(r.subscriber_days, r.seconds),
            f"{mib(r.peak_rss)} MiB",
            f"{mib(r.disk_bytes)} MiB",
        )
    console.print(table)
    base, full = runs
    console.print(
        f"full / quarter: {full.subscriber_days / base.subscriber_days:.2f}x the subscriber-days "
        f"in {full.seconds / base.seconds:.2f}x the time, "
        f"{full.peak_rss / base.peak_rss:.2f}x the peak memory"
    )
    per_table = ", ".join(f"{name} {n:,}" for name, n in full.summary.rows.items())
    console.print(f"rows of the full run: {per_table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--chunk-days", type=int, default=31)
    args = parser.parse_args()

    start = date(2024, 1, 1)
    rss_before = psutil.Process().memory_info().rss
    # A small warm-up so first-call costs (lazy imports, allocator growth) stay out of the timings.
    run_once("warm-up", WorldSpec(1_000, 10, start, seed=args.seed), args.chunk_days)
    quarter = WorldSpec(max(args.subscribers // 4, 1), args.days, start, seed=args.seed)
    full = WorldSpec(args.subscribers, args.days, start, seed=args.seed)
    runs = [
        run_once("quarter", quarter, args.chunk_days),
        run_once("full", full, args.chunk_days),
    ]
    console = Console(width=max(Console().width, 110))
    console.print(f"RSS before the runs (interpreter and libraries): {mib(rss_before)} MiB")
    report(runs, console)


if __name__ == "__main__":
    main()
