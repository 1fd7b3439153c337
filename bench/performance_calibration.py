"""Concept drift caught by realized performance: `support_decline` on the simulator.

Inputs barely move under `support_decline` (tickets weigh 2.5x more in the hazard from day 200),
so drift monitoring stays quiet; the realized-performance check must speak once the affected
30-day outcomes mature. This replays the nights: a champion trained before the change (day 195),
every day scored with the nightly path (in process), then `update_history` and
`performance_findings` day by day as the deployment would run them. Printed: the champion's
realized AUC and calibration before and after the change, and the first finding of each kind
with how many days after the change it came.

    python bench/performance_calibration.py [--subscribers 5000] [--home DIR]

Takes about 10 minutes on the 2-core machine (world, features, ~130 scored nights).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

from common import START, build_world, new_table, world_spec

from tasks.core.telemetry import disable_telemetry

disable_telemetry()

CHANGE_DAY = 200
TRAIN_DAY = 195
DAYS = 330


def day(i: int) -> date:
    return START + timedelta(days=i)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=5_000)
    parser.add_argument("--home", type=Path, default=Path("bench/out/performance_calibration"))
    args = parser.parse_args()
    home = args.home.resolve()
    # A shorter window with more snapshots: a 5,000-subscriber world needs the rows; the gates are
    # relaxed for its small groups (this measures monitoring, not the gates).
    os.environ.update(
        {
            "CHURN_HOME": str(home),
            "CHURN_TRAINING_WINDOW_DAYS": "60",
            "CHURN_TRAINING_SNAPSHOT_EVERY_DAYS": "3",
            "CHURN_FAIRNESS_MAX_EO_DIFFERENCE": "0.9",
            "CHURN_FAIRNESS_MIN_DP_RATIO": "0.1",
            "CHURN_GATE_MIN_AUC": "0.55",
        }
    )
    from rich.console import Console

    from tasks.core.settings import get_settings, reset_settings
    from tasks.monitoring.performance import read_history, update_history
    from tasks.monitoring.performance_findings import champion_reference, performance_findings
    from tasks.scoring.nightly import run_scoring
    from tasks.training.retrain import retrain

    console = Console()
    reset_settings()
    settings = get_settings()
    began = time.perf_counter()
    if not (home / "features").exists():
        shutil.rmtree(home, ignore_errors=True)
        spec = world_spec(
            args.subscribers, DAYS, scenario="support_decline", scenario_start=day(CHANGE_DAY)
        )
        build_world(settings, spec)
    console.print(f"world ready in {time.perf_counter() - began:.0f} s")
    if champion_reference(settings) is None:
        result = retrain(settings, day(TRAIN_DAY), "bench: champion before the change")
        if not result.promoted:
            raise SystemExit(f"the first model was not promoted: {result.decision.summary()}")
    version, holdout_auc = champion_reference(settings)
    began = time.perf_counter()
    for i in range(TRAIN_DAY + 1, DAYS - 30):
        run_scoring(settings, day(i))
    console.print(f"{DAYS - 31 - TRAIN_DAY} nights scored in {time.perf_counter() - began:.0f} s")

    first: dict[str, tuple[int, date, str]] = {}
    for i in range(TRAIN_DAY + 31, DAYS):
        new = update_history(settings, day(i))
        dates = sorted(set(new.column("score_date").to_pylist()))
        if not dates:
            continue
        for finding in performance_findings(
            read_history(settings), version, holdout_auc, settings, new_dates=dates
        ):
            key = f"{finding.kind} ({finding.scope})"
            if key not in first:
                first[key] = (i, finding.last_date, finding.message)

    history = [r for r in read_history(settings).to_pylist() if r["model_version"] == version]

    def mean(rows, column):
        values = [r[column] for r in rows if r[column] is not None]
        return sum(values) / len(values) if values else float("nan")

    before = [r for r in history if r["score_date"] < day(CHANGE_DAY)]
    after = [r for r in history if r["score_date"] >= day(CHANGE_DAY)]
    table = new_table(
        f"champion v{version} (holdout AUC {holdout_auc:.3f})",
        ("score days", "days", "realized AUC", "realized rate", "mean probability"),
        justify="left",
    )
    for label, rows in (("before the change", before), ("after the change", after)):
        table.add_row(
            label,
            str(len(rows)),
            f"{mean(rows, 'roc_auc'):.3f}",
            f"{mean(rows, 'realized_rate'):.4f}",
            f"{mean(rows, 'mean_probability'):.4f}",
        )
    console.print(table)
    findings = new_table(
        "first finding of each kind",
        ("finding", "evaluated on", "newest score date", "days after the change", "message"),
        justify="left",
        overflow="fold",
    )
    for key, (i, last, message) in sorted(first.items(), key=lambda kv: kv[1][0]):
        findings.add_row(key, str(day(i)), str(last), str(i - CHANGE_DAY), message)
    console.print(findings)
    # A score date's outcome window (d, d + 30] reaches into the change from CHANGE_DAY - 30 on.
    affected = day(CHANGE_DAY - 30)
    early = [k for k, (_, last, _) in first.items() if last < affected]
    caught = [k for k, (_, last, _) in first.items() if last >= affected]
    console.print(
        f"concept drift alerted by realized performance: {'met' if caught else 'NOT met'}"
        f"{'; findings before any affected outcome: ' + ', '.join(early) if early else ''}"
    )


if __name__ == "__main__":
    main()
