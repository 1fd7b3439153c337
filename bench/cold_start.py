"""Benchmark the cold start from one customer export: import, features, train, score.

    python bench/cold_start.py [--sizes 7000 70000] [--workdir bench/out/cold_start]

For each size a telco-style export is generated (``examples/telco/make_export.py``, untimed) and
taken through the README's cold-start commands twice, each time in a fresh data root:

* ``churn`` commands — the four commands as a person types them, each its own process:
  ``churn import``, ``churn features build``, ``churn train --cold-start``, ``churn score``;
  first with no Prefect server configured (each flow command starts Prefect's temporary server,
  about 12 s, and stops it), then against a Prefect server started once before them (as after
  ``churn up``: ``PREFECT_API_URL`` set);
* ``churn cold-start`` — the same four steps as one command (one process, one temporary server);
* in process        — the same work as plain functions in one child process: ``import_file``;
  ``apply_feature_repo``, ``build_feature_tables`` and ``materialize_online`` (the build flow's
  steps); ``retrain(cold_start=True)``; ``run_scoring``;
* floor             — in that same child, after the rest: the export read with pyarrow and a bare
  LightGBM fit on the same rows and parameters, then a predict of everyone: what no pipeline
  can beat.

Target (issue 16): a 7,000-customer export imported, trained and scored, high-risk file written,
in under 60 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from common import gib, new_table, peak_rss_bytes, per_second, report_to_parent, run_child
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "telco"
EXPORT_DAY = date(2026, 11, 30)  # the example mapping's snapshot_date
ENV = {
    "CHURN_FEATURE_DEFINITIONS": str(EXAMPLE / "features.yaml"),
    "CHURN_FEATURE_SERVICE": "telco_export_v1",
}


def make_export(customers: int, out: Path) -> Path:
    if not out.exists():
        subprocess.run(
            [sys.executable, str(EXAMPLE / "make_export.py"), "--customers", str(customers),
             "--out", str(out)],
            check=True, capture_output=True,
        )  # fmt: skip
    return out


def commands(export: Path, home: Path, api_url: str | None = None) -> dict[str, float]:
    env = {**os.environ, **ENV, "CHURN_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    steps = {
        "import": ["import", str(export), "--mapping", str(EXAMPLE / "subscribers_mapping.yaml")],
        "features build": ["features", "build"],
        "train --cold-start": ["train", "--cold-start"],
        "score": ["score", "--date", EXPORT_DAY.isoformat()],
    }
    seconds = {}
    for name, args in steps.items():
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "flows", *args], env=env, capture_output=True, text=True,
            cwd=ROOT, check=False,
        )  # fmt: skip
        seconds[name] = time.perf_counter() - began
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
            raise SystemExit(f"churn {' '.join(args)} failed")
    return seconds


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect API server on a free port for the block; its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port), "--no-ui"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the Prefect server did not start: see {home / 'server.log'}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def one_command(export: Path, home: Path) -> float:
    env = {**os.environ, **ENV, "CHURN_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    mapping = str(EXAMPLE / "subscribers_mapping.yaml")
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "flows", "cold-start", str(export), "--mapping", mapping],
        env=env, capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
        raise SystemExit("churn cold-start failed")
    return time.perf_counter() - began


def in_process(export: Path, home: Path) -> dict:
    """The child's work: the pipeline's functions, then the floor."""
    os.environ.update({**ENV, "CHURN_HOME": str(home)})
    sys.path.insert(0, str(ROOT))
    from tasks.core.settings import get_settings, reset_settings
    from tasks.data.importer import import_file
    from tasks.features.store import apply_feature_repo
    from tasks.features.tables import build_feature_tables, materialize_online
    from tasks.scoring.nightly import run_scoring
    from tasks.training.retrain import retrain

    reset_settings()
    settings = get_settings()
    seconds: dict[str, float] = {}

    def timed(name: str, work):
        began = time.perf_counter()
        result = work()
        seconds[name] = time.perf_counter() - began
        return result

    timed(
        "import",
        lambda: import_file(export, EXAMPLE / "subscribers_mapping.yaml", settings.source_dir),
    )
    timed("features build", lambda: _build(settings, apply_feature_repo, build_feature_tables,
                                          materialize_online))  # fmt: skip
    trained = timed("train --cold-start", lambda: retrain(settings, None, "bench", cold_start=True))
    scored = timed("score", lambda: run_scoring(settings, EXPORT_DAY))
    peak = peak_rss_bytes()
    seconds["floor"] = _floor(export)
    return {
        "seconds": seconds,
        "peak": peak,
        "auc": trained.challenger.metrics["roc_auc"],
        "scored": scored.scored,
        "high_risk_rows": scored.high_risk_rows,
    }


def _build(settings, apply_feature_repo, build_feature_tables, materialize_online) -> None:
    apply_feature_repo(settings)
    summary = build_feature_tables(settings)
    materialize_online(settings, summary.end)


def _floor(export: Path) -> float:
    """Read the export, fit LightGBM on its columns as they are, predict everyone."""
    import lightgbm as lgb
    import pyarrow.csv as pacsv

    began = time.perf_counter()
    frame = pacsv.read_csv(export).to_pandas()
    label = (frame.pop("Churn") == "Yes").astype(int)
    frame = frame.drop(columns=["customerID", "gender", "SeniorCitizen"])
    for column in frame.columns[frame.dtypes == object]:
        frame[column] = frame[column].astype("category")
    booster = lgb.train(
        {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "verbose": -1},
        lgb.Dataset(frame, label),
        num_boost_round=200,
    )
    booster.predict(frame)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[7000])
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "cold_start")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        report_to_parent(in_process(Path(args.child[0]), Path(args.child[1])))
        return

    console = Console()
    table = new_table(
        "Cold start from one export (README: Importing your data)",
        ["customers", "path", "import", "features", "train", "score", "total", "customers/s",
         "peak GB", "ROC-AUC"],
        left=["path"],
    )  # fmt: skip
    for size in args.sizes:
        work = args.workdir / f"export_{size}"
        work.mkdir(parents=True, exist_ok=True)
        export = make_export(size, work / "export.csv")
        for home in ("cli", "cli_server", "one_command", "in_process", "prefect"):
            shutil.rmtree(work / home, ignore_errors=True)
        cli = commands(export, work / "cli")
        with prefect_server(work / "prefect") as url:
            served = commands(export, work / "cli_server", url)
        single = one_command(export, work / "one_command")
        child = run_child(
            __file__, "--child", export, work / "in_process", failure="in-process run failed"
        )
        stages = ["import", "features build", "train --cold-start", "score"]
        for path, seconds, peak, auc in (
            ("churn commands", cli, None, None),
            ("churn commands, Prefect server up", served, None, None),
            ("in process", child["seconds"], child["peak"], child["auc"]),
        ):
            total = sum(seconds[s] for s in stages)
            table.add_row(
                f"{size:,}", path, *(f"{seconds[s]:.1f}" for s in stages), f"{total:.1f}",
                per_second(size, total), gib(peak) if peak else "—",
                f"{auc:.3f}" if auc is not None else "—",
            )  # fmt: skip
        table.add_row(
            f"{size:,}", "churn cold-start (one command)", "", "", "", "", f"{single:.1f}",
            per_second(size, single), "", "",
        )  # fmt: skip
        floor = child["seconds"]["floor"]
        table.add_row(
            f"{size:,}", "floor (read + bare LightGBM)", "", "", "", "", f"{floor:.1f}",
            per_second(size, floor), "", "",
        )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
