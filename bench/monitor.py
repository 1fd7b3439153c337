"""Benchmark nightly monitoring (whylogs profile + drift) against scoring the same day.

    python bench/monitor.py [--rows 1000000,10000000] [--trees 200] [--profile-rows 250000]
                            [--reference-rows 1000000] [--full-profile]

Each size runs in a fresh child process (its peak RSS, ``VmHWM``, is its own), on one synthetic
day of ``--rows`` subscribers with the 31 inputs of ``churn_model_v2`` (the 20 of v1 plus the 11
usage-relative-to-baseline ratios; Feast types: Int32 counts, Float32 amounts, String categories,
values inside every feature contract). Steps, timed in the same process one after the other:

* **scoring floor** — ``tasks.training.model_spec.model_inputs`` over the whole day, then ``booster.predict``
  with 2 threads on a LightGBM model of exactly ``--trees`` rounds (trained once per child on
  200,000 synthetic rows with ``tasks.training.model_spec.model_params``). This is the floor of nightly
  scoring (the whole nightly path is held to at most 2x it), so the ratio below is conservative:
  against the full nightly time it would be about half.
* **reference** — ``tasks.monitoring.reference.build_reference`` on a separate ``--reference-rows`` training
  window (shown for information: it runs when a model is trained, not nightly).
* **monitor** — what the nightly monitor adds: ``tasks.monitoring.profiles.profile_frame`` of the day's
  inputs and probabilities (a ``--profile-rows`` sample, see the module's error bound),
  ``tasks.monitoring.drift.feature_drift`` (PSI over every row, KS on 200,000 sampled rows) and
  ``tasks.monitoring.drift.day_severity``.
* ``--full-profile`` also times a whylogs profile of every row (no sampling), to show what
  sampling saves.

Target (issue 5): monitor <= 25% of the scoring time measured in the same run, at 10M rows.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyarrow as pa
from common import (
    ROOT,
    gib,
    new_table,
    peak_rss_bytes,
    report_to_parent,
    run_child,
    train_booster,
    v1_features,
)

TARGET = 0.25
TRAIN_ROWS = 200_000
THREADS = 2
CATEGORICAL = ["plan", "contract_type", "payment_method"]


def synthetic_day(rng: np.random.Generator, n: int) -> pa.Table:
    """``n`` subscribers' inputs of churn_model_v2, typed as the feature tables type them."""
    f32 = np.float32
    columns = v1_features(rng, n)
    data_30 = columns["data_gb_30d"].to_numpy()
    voice_30 = columns["voice_minutes_30d"].to_numpy()
    # Null where there was no usage: those rows are masked again below.
    trend = columns["data_trend_7d_30d"].to_numpy(zero_copy_only=False)
    no_usage = data_30 == 0
    columns["data_gb_per_day_90d"] = pa.array(data_30 / f32(30), mask=no_usage)
    columns["voice_minutes_per_day_90d"] = pa.array(voice_30 / f32(30))
    for window in ("30d", "14d", "7d"):
        data = (trend * rng.lognormal(0, 0.1, n)).astype(f32)
        voice = rng.lognormal(0, 0.2, n).astype(f32)
        columns[f"data_ratio_{window}_baseline"] = pa.array(data, mask=no_usage)
        columns[f"voice_ratio_{window}_baseline"] = pa.array(voice)
        columns[f"usage_ratio_{window}_baseline"] = pa.array(np.sqrt(data * voice), mask=no_usage)
    return pa.table(columns)


def churn_labels(rng: np.random.Generator, day: pa.Table) -> np.ndarray:
    """A label with something to learn (about 5% churn)."""

    def num(name: str) -> np.ndarray:
        return np.nan_to_num(day.column(name).to_numpy(zero_copy_only=False).astype(np.float64))

    contract = np.asarray(day.column("contract_type").to_numpy(zero_copy_only=False), dtype=str)
    logit = (
        -4.0
        + 1.1 * (contract == "month_to_month")
        + 0.7 * num("support_calls_30d")
        + 0.8 * num("late_payments_90d")
        - 0.0006 * num("tenure_days")
        + 1.3 * (num("data_trend_7d_30d") < 0.7)
        + 1.5 * np.maximum(num("charge_to_list_ratio") - 1.1, 0)
    )
    return (rng.random(day.num_rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)


def measure(rows: int, trees: int, profile_rows: int, reference_rows: int, full: bool) -> dict:
    """One size, in this (child) process: scoring floor, reference, monitor."""
    os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")
    from tasks.core.settings import Settings
    from tasks.monitoring.drift import day_severity, feature_drift
    from tasks.monitoring.profiles import profile_frame
    from tasks.monitoring.reference import build_reference
    from tasks.training.model_spec import model_inputs, model_params, model_spec
    from tasks.training.time_split import to_pandas

    settings = Settings(model_threads=THREADS)
    rng = np.random.default_rng(1)
    train = synthetic_day(rng, TRAIN_ROWS)
    features = train.column_names
    spec = model_spec(to_pandas(train), features)
    params = model_params(settings) | {"num_threads": THREADS}
    booster = train_booster(params, train, churn_labels(rng, train), spec, trees)
    window = synthetic_day(np.random.default_rng(2), reference_rows)
    window_p = booster.predict(model_inputs(window, spec), num_threads=THREADS)
    day = synthetic_day(np.random.default_rng(3), rows)
    generated_rss = peak_rss_bytes()
    # Imports and first-call set-up (whylogs, scipy) are not part of a night's work: warm up.
    warm = synthetic_day(np.random.default_rng(4), 2_000)
    small = build_reference(warm, features, CATEGORICAL, window_p[:2_000], max_rows=1_000)
    profile_frame(warm.append_column("probability", pa.array(window_p[:2_000])))
    feature_drift(small, warm, window_p[:2_000], settings)

    out: dict = {"rows": rows, "features": len(features), "trees": trees}
    started = time.perf_counter()
    matrix = model_inputs(day, spec)
    out["inputs_s"] = time.perf_counter() - started
    started = time.perf_counter()
    probabilities = booster.predict(matrix, num_threads=THREADS)
    out["predict_s"] = time.perf_counter() - started
    out["scoring_s"] = out["inputs_s"] + out["predict_s"]
    del matrix
    out["scoring_peak"] = peak_rss_bytes()

    started = time.perf_counter()
    reference = build_reference(
        window, features, CATEGORICAL, window_p, max_rows=settings.drift_reference_rows, seed=0
    )
    out["reference_s"] = time.perf_counter() - started
    del window

    started = time.perf_counter()
    monitored = day.append_column("probability", pa.array(probabilities))
    handle = profile_frame(monitored, max_rows=profile_rows, seed=0)
    out["profile_s"] = time.perf_counter() - started
    out["profiled_rows"] = handle.profiled_rows
    started = time.perf_counter()
    table = feature_drift(reference, day, probabilities, settings)
    severity = day_severity(table, settings)
    out["drift_s"] = time.perf_counter() - started
    out["monitor_s"] = out["profile_s"] + out["drift_s"]
    out["severity"] = severity.level
    out["monitor_peak"] = peak_rss_bytes()
    out["generated_peak"] = generated_rss
    if full:
        started = time.perf_counter()
        profile_frame(monitored, max_rows=None)
        out["full_profile_s"] = time.perf_counter() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1000000,10000000")
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--profile-rows", type=int, default=250_000)
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--full-profile", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    if args.child:
        result = measure(sizes[0], args.trees, args.profile_rows, args.reference_rows,
                         args.full_profile)  # fmt: skip
        report_to_parent(result)
        return

    from rich.console import Console

    results = [
        run_child(
            __file__, "--child", "--rows", rows, "--trees", args.trees,
            "--profile-rows", args.profile_rows, "--reference-rows", args.reference_rows,
            *(["--full-profile"] if args.full_profile else []),
            failure=f"{rows:,} rows failed", cwd=ROOT,
        )
        for rows in sizes
    ]  # fmt: skip

    table = new_table(
        f"Nightly monitoring vs scoring ({args.trees} trees, {THREADS} threads)",
        (
            "rows", "inputs s", "predict s", "scoring s", "profile s (rows)", "drift s",
            "monitor s", "monitor / scoring", "peak RSS scoring", "peak RSS monitor",
            "reference s (rows)",
        ) + (("profile every row s",) if args.full_profile else ()),
        title_justify="center",
    )  # fmt: skip
    for r in results:
        ratio = r["monitor_s"] / r["scoring_s"]
        mark = "[green]" if ratio <= TARGET else "[red]"
        table.add_row(
            f"{r['rows']:,}", f"{r['inputs_s']:.1f}", f"{r['predict_s']:.1f}",
            f"{r['scoring_s']:.1f}", f"{r['profile_s']:.1f} ({r['profiled_rows']:,})",
            f"{r['drift_s']:.1f}", f"{r['monitor_s']:.1f}", f"{mark}{ratio:.1%}",
            f"{gib(r['scoring_peak'])} GiB", f"{gib(r['monitor_peak'])} GiB",
            f"{r['reference_s']:.1f} ({args.reference_rows:,})",
            *([f"{r['full_profile_s']:.1f}"] if args.full_profile else []),
        )  # fmt: skip
    Console(width=250).print(table)
    print(
        f"target: monitor <= {TARGET:.0%} of scoring (model inputs + predict, the floor of the "
        "nightly path) in the same process; peak RSS is the process's VmHWM after each step "
        "(the day itself is held by both)."
    )


if __name__ == "__main__":
    main()
