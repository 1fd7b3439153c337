"""Benchmark the data contracts of one feature day: this code against an earlier version.

    python bench/contracts.py [--world PATH] [--day YYYY-MM-DD] [--before REV] [--tables ...]

Reads each feature table's partition of ``--day`` from the world (read only) and checks it with
the project's contract specs (``feature_table_specs(open_store(settings), settings)``, as
``tasks/features/tables.py`` does, over a copy of the world's Feast registry in a temporary home)
the way ``_check_day`` calls ``check_table``. "before" is the contract code of ``--before``
(default ``HEAD``: ``git show REV:tasks/data/contract*.py``, imported under another name), "after"
the working tree, in the same process, alternating per table. "same" says whether both found the
same violations (column, rule, count, detail) and the same whylogs constraint results.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
import types
from datetime import date
from pathlib import Path
from typing import Any

from common import new_table, settings_for
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
WORLD = Path("/tmp/bench1m/world_1000000_210d")
DAY = date(2026, 7, 29)


def load_before(rev: str) -> types.ModuleType:
    """``tasks.data.contracts`` as it was at ``rev``, importing its own ``contract_values``."""
    modules = {}
    for name in ("contract_values", "contracts"):
        source = subprocess.run(
            ["git", "show", f"{rev}:tasks/data/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        source = source.replace("tasks.data.contract_values", "bench_before_contract_values")
        module_name = f"bench_before_{name}"
        spec = importlib.util.spec_from_loader(module_name, loader=None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        exec(compile(source, f"{rev}:tasks/data/{name}.py", "exec"), module.__dict__)  # noqa: S102
        modules[name] = module
    return modules["contracts"]


def outcome(report: Any) -> tuple[list[tuple], list[tuple]]:
    """Violations and constraint results, comparable across the two versions."""
    violations = [(v.column, v.rule, v.count, v.detail) for v in report.violations]
    results = [(r.name, r.passed, r.failed) for r in report.whylogs_report]
    return violations, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, default=WORLD)
    parser.add_argument("--day", type=date.fromisoformat, default=DAY)
    parser.add_argument("--before", default="HEAD")
    parser.add_argument("--tables", nargs="*", default=None)
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from tasks.core.telemetry import disable_telemetry

    disable_telemetry()
    with tempfile.TemporaryDirectory(prefix="bench_contracts_") as tmp:
        home = Path(tmp)
        shutil.copytree(args.world / "feast", home / "feast")
        settings = settings_for(home)
        from tasks.data.contracts import check_table
        from tasks.features.store import open_store
        from tasks.features.tables import feature_table_specs

        specs = feature_table_specs(open_store(settings), settings)
        before = load_before(args.before)
        console = Console(width=120)
        table = new_table(
            f"contracts of {args.day} ({args.world.name}); before = {args.before}",
            ["table", "rows", "columns", "before s", "after s", "ratio", "violations", "same"],
            left=("table",),
        )
        totals = [0.0, 0.0]
        for name, spec in specs.items():
            if args.tables and name not in args.tables:
                continue
            part = args.world / "features" / name / f"snapshot_date={args.day.isoformat()}"
            data = pq.read_table(sorted(part.glob("*.parquet")))
            began = time.perf_counter()
            old = before.check_table(spec, data)
            old_s = time.perf_counter() - began
            began = time.perf_counter()
            new = check_table(spec, data)
            new_s = time.perf_counter() - began
            totals[0] += old_s
            totals[1] += new_s
            same = outcome(old) == outcome(new)
            table.add_row(
                name,
                f"{data.num_rows:,}",
                str(data.num_columns),
                f"{old_s:.2f}",
                f"{new_s:.2f}",
                f"{old_s / new_s:.1f}x",
                str(len(new.violations)),
                "yes" if same else "NO",
            )
        table.add_row(
            "total", "", "", f"{totals[0]:.2f}", f"{totals[1]:.2f}", f"{totals[0] / totals[1]:.1f}x"
        )
        console.print(table)


if __name__ == "__main__":
    main()
