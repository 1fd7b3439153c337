"""The demo story on simulated data: what `make demo` runs (`churn demo`)."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tasks.core.settings import Settings
from tasks.registry import CHAMPION, current_alias
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
    """Simulate a world, build its features, train the first champion and score the last day."""
    from flows.features import build_features_flow
    from flows.retrain import retrain_flow
    from flows.score import score_nightly_flow

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

    as_of = world.end
    console.rule("[bold]3. Retrain: LightGBM, gates, MLflow (Prefect flow retrain)")
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

    summary = None
    if current_alias(settings, CHAMPION) is not None:
        console.rule(f"[bold]4. Nightly scoring of {as_of} (Prefect flow score-nightly)")
        began = time.perf_counter()
        summary = score_nightly_flow(score_date=as_of)
        timings["score"] = time.perf_counter() - began
        _show_high_risk(console, summary)
    else:
        console.print("  no champion: nightly scoring skipped (see the gates above)")

    first, last = settings.training_window(as_of)
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
    model_state = (
        f"version {result.version}, {'champion' if result.promoted else 'challenger'}, "
        f"trained on snapshots {first} .. {last}"
        if result.version
        else "refused: an MLflow run with its failed gates, no version"
    )
    table.add_row(f"model {settings.model_name}", model_state, _shown(settings.mlflow_dir))
    if summary is not None:
        table.add_row(
            f"high-risk file {as_of}",
            f"{summary.high_risk_rows:,} subscribers",
            _shown(summary.high_risk_csv),
        )
        table.add_row(
            "prediction log",
            f"{summary.scored:,} predictions",
            _shown(settings.predictions_dir),
        )
    console.print(table)
    console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    console.print(
        f"the model trained at {as_of} learned from snapshots up to {last} (labels need "
        f"{settings.label_horizon_days} days to mature); see `churn model list`, the model card "
        'in MLflow, and `churn audit sql "SELECT * FROM daily_volumes"`.'
    )


def _show_high_risk(console: Console, summary) -> None:
    tiers = summary.tiers.get("champion", {})
    console.print(
        f"  scored {summary.scored:,} of {summary.subscribers:,} subscribers: "
        + ", ".join(f"{t} {c:,}" for t, c in tiers.items())
    )
    top = Table(title=f"top of {_shown(summary.high_risk_csv)}", title_justify="left")
    for column in ("rank", "subscriber", "probability", "revenue at risk", "reasons"):
        top.add_column(column, overflow="fold")
    for row in summary.top[:10]:
        reasons = "; ".join(r for r in (row["reason_1"], row["reason_2"], row["reason_3"]) if r)
        top.add_row(
            str(row["rank"]),
            str(row["subscriber_id"]),
            f"{row['probability']:.3f}",
            f"{row['revenue_at_risk']:.2f}",
            reasons,
        )
    console.print(top)
