"""The demo story on simulated data: what `make demo` runs (`churn demo`)."""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tasks.core.settings import Settings
from tasks.frames import build_scoring_frame, build_training_frame, write_frame
from tasks.simulate import WorldSpec, simulate_world


def _shown(path: Path) -> str:
    """A path as the operator would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_demo(
    settings: Settings, *, subscribers: int, days: int, start: date, seed: int, console: Console
) -> None:
    """Simulate a world, build and apply its features, build the frames, and train the first model."""
    from flows.features import build_features_flow
    from flows.retrain import retrain_flow

    timings: dict[str, float] = {}
    began = time.perf_counter()
    console.rule("[bold]1. Simulate the subscriber world")
    with console.status(f"simulating {subscribers:,} subscribers × {days} days"):
        world = simulate_world(
            WorldSpec(subscribers=subscribers, days=days, start=start, seed=seed),
            settings.source_dir,
            settings.truth_dir,
            chunk_days=settings.sim_chunk_days,
        )
    timings["simulate"] = time.perf_counter() - began
    console.print(
        f"  {world.subscribers_ever:,} subscribers ever, {world.churned:,} churned, "
        f"{world.rows['usage_daily']:,} usage rows → {_shown(world.source_dir)}"
    )

    console.rule("[bold]2. Build features (Prefect flow build-features)")
    began = time.perf_counter()
    build = build_features_flow(start=None, end=None)
    timings["build features"] = time.perf_counter() - began

    console.rule("[bold]3. Point-in-time frames through Feast")
    as_of = world.end
    began = time.perf_counter()
    training = build_training_frame(settings, as_of)
    training_path = write_frame(training, settings.home / "frames" / f"training_{as_of}.parquet")
    timings["training frame"] = time.perf_counter() - began
    began = time.perf_counter()
    scoring = build_scoring_frame(settings, as_of)
    scoring_path = write_frame(scoring, settings.home / "frames" / f"scoring_{as_of}.parquet")
    timings["scoring frame"] = time.perf_counter() - began

    console.rule("[bold]4. Retrain: LightGBM, gates, MLflow (Prefect flow retrain)")
    began = time.perf_counter()
    result = retrain_flow(as_of=as_of, reason="demo: first training")
    timings["retrain"] = time.perf_counter() - began
    m = result.challenger.metrics
    limit = f" (best achievable {result.best_auc:.3f})" if result.best_auc is not None else ""
    console.print(f"  decision: {result.decision.summary()}")
    console.print(
        f"  holdout ROC-AUC {m['roc_auc']:.3f}{limit}, PR-AUC {m['pr_auc']:.3f}, "
        f"lift at top {settings.retention_capacity}/day {m['lift_at_k']:.2f}, "
        f"calibration error {m['calibration_error']:.4f}"
    )

    first, last = settings.training_window(as_of)
    labels = training.column("churned_30d").to_pylist()
    table = Table(title="churn-ops demo: what was made, and where", title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("size", justify="right")
    table.add_column("where", overflow="fold")
    table.add_row(
        "source tables",
        f"{sum(v for k, v in world.rows.items() if k != 'true_churn_probability'):,} rows",
        _shown(world.source_dir),
    )
    table.add_row(
        "feature tables", f"{sum(build.rows.values()):,} rows", _shown(build.features_dir)
    )
    table.add_row(
        "Feast registry / online store", "4 views, churn_model_v1", _shown(settings.feast_dir)
    )
    table.add_row(
        f"training frame (snapshots {first} .. {last})",
        f"{training.num_rows:,} rows, {sum(labels) / max(len(labels), 1):.1%} churned",
        _shown(training_path),
    )
    table.add_row(
        f"scoring frame ({as_of})", f"{scoring.num_rows:,} subscribers", _shown(scoring_path)
    )
    model_state = (
        f"version {result.version}, {'champion' if result.promoted else 'challenger'}"
        if result.version
        else "refused: an MLflow run with its failed gates, no version"
    )
    table.add_row("model telecom_churn_model", model_state, _shown(settings.mlflow_dir))
    console.print(table)
    console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    console.print(
        f"the model trained at {as_of} learned from snapshots up to "
        f"{as_of - timedelta(days=settings.label_horizon_days)} (labels need {settings.label_horizon_days} days "
        "to mature); see `churn model list`, and the model card in MLflow."
    )
