"""Drift thresholds against the simulator's scenarios: does a shift alert on its first day, and
does a stable world stay quiet?

Three worlds with the same seed (baseline, price_shock, usage_shift; the shift starts 31 days
after the training day T, so the days before it are identical to the baseline). A model is
trained on the baseline at T and its training window is the drift reference, as in retraining.
Then every day is compared with the reference exactly as the monitor flow does (bulk feature
read, the model's probabilities, ``feature_drift``, ``day_severity``) with the thresholds in
settings. Printed: per world, the severity per day around the shift, and for the baseline the
worst PSI and KS over all days with the feature that reached them.

Targets (issue "Monitoring"): price_shock and usage_shift alert within one scoring day of the
shift, naming the shifted features; baseline: no alert in 60 consecutive stable days.

    python bench/drift_calibration.py [--subscribers 10000] [--stable-days 78] [--home DIR]
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

from common import START, build_world, new_table, world_spec

from tasks.core.telemetry import disable_telemetry

disable_telemetry()

HISTORY_DAYS = 210  # 90-day features + 30-day labels + 90-day window before T


def build_scenario_world(
    home: Path, subscribers: int, days: int, scenario: str, shift: date
) -> None:
    from tasks.core.settings import Settings

    if (home / "features").exists():
        return
    shutil.rmtree(home, ignore_errors=True)
    spec = world_spec(
        subscribers,
        days,
        scenario=scenario,
        scenario_start=None if scenario == "baseline" else shift,
    )
    build_world(Settings(home=home), spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--stable-days", type=int, default=78)
    parser.add_argument("--home", type=Path, default=Path("bench/out/drift_calibration"))
    args = parser.parse_args()

    from rich.console import Console

    from tasks.core.settings import Settings
    from tasks.data.sources import active_subscribers
    from tasks.features.frames import build_training_frame, features_from, view_reads
    from tasks.features.tables import as_of_timestamp
    from tasks.monitoring.drift import day_severity, feature_drift
    from tasks.monitoring.reference import build_reference
    from tasks.training.time_split import split_by_time
    from tasks.training.train import predict_proba, train_model

    console = Console()
    train_day = START + timedelta(days=HISTORY_DAYS)
    shift = train_day + timedelta(days=31)
    days = HISTORY_DAYS + args.stable_days + 2
    began = time.perf_counter()
    for scenario in ("baseline", "price_shock", "usage_shift"):
        build_scenario_world(args.home / scenario, args.subscribers, days, scenario, shift)
    console.print(f"worlds ready in {time.perf_counter() - began:.0f} s")

    base = Settings(home=args.home / "baseline")
    reads = view_reads(base)
    features = [c for r in reads for c in r.columns]
    categorical = [
        c for r in reads for c, t in zip(r.columns, r.dtypes, strict=True) if t == "String"
    ]
    frame = build_training_frame(base, train_day)
    split = split_by_time(frame, base.holdout_snapshots, base.validation_snapshots)
    model = train_model(split, features, base)
    reference = build_reference(
        frame,
        features,
        categorical,
        predict_proba(model, frame),
        max_rows=base.drift_reference_rows,
    )

    def judge(world: str, day: date):
        settings = Settings(home=args.home / world)
        current = features_from(
            view_reads(settings), as_of_timestamp(day), active_subscribers(settings, day)
        )
        table = feature_drift(reference, current, predict_proba(model, current), base)
        return table, day_severity(table, base)

    shifts = new_table(
        f"shift on {shift} ({args.subscribers:,} subscribers)",
        ("world", "day", "days after shift", "severity", "features"),
        justify="left",
    )
    for world in ("price_shock", "usage_shift"):
        for offset in range(-2, 3):
            day = shift + timedelta(days=offset)
            _, severity = judge(world, day)
            shifts.add_row(
                world, str(day), str(offset), severity.level, ", ".join(severity.features[:4])
            )
    console.print(shifts)

    levels: dict[str, int] = {}
    worst_psi = (0.0, "", None)
    worst_ks = (0.0, "", None)
    for k in range(1, args.stable_days + 1):
        day = train_day + timedelta(days=k)
        table, severity = judge("baseline", day)
        levels[severity.level] = levels.get(severity.level, 0) + 1
        for row in table.to_pylist():
            if row["psi"] > worst_psi[0]:
                worst_psi = (row["psi"], row["feature"], day)
            if (
                row["statistic"] is not None
                and row["kind"] != "categorical"
                and row["statistic"] > worst_ks[0]
            ):
                worst_ks = (row["statistic"], row["feature"], day)
    stable = new_table(
        f"baseline: {args.stable_days} days after training",
        ("days per severity", "worst PSI", "worst KS", "thresholds (warn / alert)"),
        justify="left",
    )
    stable.add_row(
        ", ".join(f"{level} {n}" for level, n in sorted(levels.items())),
        f"{worst_psi[0]:.3f} ({worst_psi[1]}, {worst_psi[2]})",
        f"{worst_ks[0]:.3f} ({worst_ks[1]}, {worst_ks[2]})",
        f"PSI {base.drift_psi_warn} / {base.drift_psi_alert}, KS {base.drift_ks_warn} / {base.drift_ks_alert}",
    )
    console.print(stable)
    quiet = levels.get("alert", 0) + levels.get("retrain", 0) == 0
    console.print(
        f"baseline without alert for {args.stable_days} days: {'met' if quiet else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
