"""The demo story on simulated data: what `make demo` runs (`churn demo`).

A world with a price rise part-way through its last weeks: the first champion is trained before
the nights begin; every night is scored (high-risk file, prediction log) and monitored; the night
of the shock, monitoring opens a drift incident and asks for a retraining, which runs with reason
"drift" and is judged by the gates like any other candidate. The incident is one story in Slack
(onset, at most one update, resolution): the summary lists its messages.
"""

from __future__ import annotations

import json
import time
from datetime import date, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tasks.core.settings import Settings
from tasks.data.sim_population import WorldSpec
from tasks.data.simulate import simulate_world
from tasks.monitoring.incident import read_incidents
from tasks.training.mlflow_store import CHAMPION
from tasks.training.registry import current_alias, list_versions

FEATURE_HISTORY_DAYS = 210
"""Days before the first training day the window needs: 90-day features + 30-day labels + 90-day window."""
MAX_NIGHTS = 14


def _shown(path: Path) -> str:
    """A path as the operator would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def demo_calendar(start: date, days: int) -> tuple[date, list[date], date]:
    """The first training day, the nights scored after it, and the day the price shock starts."""
    nights = max(1, min(MAX_NIGHTS, days - FEATURE_HISTORY_DAYS))
    last = start + timedelta(days=days - 1)
    first_training = last - timedelta(days=nights)
    scored = [first_training + timedelta(days=i + 1) for i in range(nights)]
    shock = scored[len(scored) // 2]
    return first_training, scored, shock


def run_demo(
    settings: Settings, *, subscribers: int, days: int, start: date, seed: int, console: Console
) -> None:
    """Simulate, build features, train the first champion, then score and monitor every night."""
    from flows.features import build_features_flow
    from flows.monitor import monitor_flow
    from flows.retrain import retrain_flow
    from flows.score import score_nightly_flow

    first_training, nights, shock = demo_calendar(start, days)
    timings: dict[str, float] = {}
    began = time.perf_counter()
    console.rule("[bold]1. Simulate the subscriber world")
    with console.status(f"simulating {subscribers:,} subscribers × {days} days"):
        world = simulate_world(
            WorldSpec(
                subscribers=subscribers,
                days=days,
                start=start,
                seed=seed,
                scenario="price_shock",
                scenario_start=shock,
            ),
            settings.source_dir,
            settings.truth_dir,
            chunk_days=settings.sim_chunk_days,
        )
    timings["simulate"] = time.perf_counter() - began
    console.print(
        f"  {world.subscribers_ever:,} subscribers ever, {world.churned:,} churned, "
        f"{world.rows['usage_daily']:,} usage rows; on {shock} ~30% of subscribers get a 25% "
        f"price rise → {_shown(world.source_dir)}"
    )

    console.rule("[bold]2. Build features (Prefect flow build-features)")
    began = time.perf_counter()
    build = build_features_flow(start=None, end=None)
    timings["build features"] = time.perf_counter() - began

    console.rule(f"[bold]3. Train the first champion at {first_training} (Prefect flow retrain)")
    began = time.perf_counter()
    result = retrain_flow(as_of=first_training, reason="demo: first training")
    timings["retrain"] = time.perf_counter() - began
    _print_training(console, settings, result)
    if current_alias(settings, CHAMPION) is None:
        console.print("  no champion: nothing to score (see the gates above)")
        return

    console.rule(f"[bold]4. Every night {nights[0]} .. {nights[-1]}: score, then monitor")
    began = time.perf_counter()
    nightly = Table(title="nights", title_justify="left")
    for column in ("night", "champion", "scored", "high tier", "drift", "retraining"):
        nightly.add_column(column)
    last_summary = None
    first_alert = None
    for night in nights:
        summary = score_nightly_flow(score_date=night)
        watched = monitor_flow(score_date=night, retrain_on_drift=True)
        last_summary = summary
        if first_alert is None and watched.severity.level in ("alert", "retrain"):
            first_alert = watched
        nightly.add_row(
            night.isoformat(),
            ", ".join(f"v{v} ({role})" for v, role in summary.models),
            f"{summary.scored:,}",
            f"{summary.tiers['champion']['high']:,}",
            watched.severity.level,
            "requested, ran" if watched.retrain_requested else "—",
        )
    timings["nights"] = time.perf_counter() - began
    console.print(nightly)
    if first_alert is not None:
        _show_drift(console, first_alert)
    _show_incidents(console, settings)
    if last_summary is not None:
        _show_high_risk(console, last_summary)
    _final_summary(console, settings, build, nights, timings)


def _print_training(console: Console, settings: Settings, result) -> None:
    m = result.challenger.metrics
    limit = (
        f" (best achievable {result.best_auc:.3f}, observable oracle {result.observable_auc:.3f})"
        if result.best_auc is not None and result.observable_auc is not None
        else ""
    )
    console.print(f"  decision: {result.decision.summary()}")
    console.print(
        f"  holdout ROC-AUC {m['roc_auc']:.3f}{limit}, PR-AUC {m['pr_auc']:.3f}, "
        f"lift at top {settings.retention_capacity}/day {m['lift_at_k']:.2f}, "
        f"calibration error {m['calibration_error']:.4f}"
    )


def _show_high_risk(console: Console, summary) -> None:
    top = Table(title=f"top of {_shown(summary.high_risk_csv)}", title_justify="left")
    for column in ("rank", "subscriber", "probability", "revenue at risk", "reasons"):
        top.add_column(column, overflow="fold")
    for row in summary.top[:8]:
        reasons = "; ".join(r for r in (row["reason_1"], row["reason_2"], row["reason_3"]) if r)
        top.add_row(
            str(row["rank"]),
            str(row["subscriber_id"]),
            f"{row['probability']:.3f}",
            f"{row['revenue_at_risk']:.2f}",
            reasons,
        )
    console.print(top)


def _show_drift(console: Console, result) -> None:
    table = Table(
        title=f"drift on {result.score_date} against version {result.model_version}'s training "
        f"window: {result.severity.level} (report {_shown(result.report.html)})",
        title_justify="left",
    )
    for column in ("feature", "PSI", "KS", "level"):
        table.add_column(column)
    for row in sorted(result.drifted, key=lambda r: -r["psi"])[:8]:
        ks = (
            "—"
            if row["kind"] == "categorical" or row["statistic"] is None
            else f"{row['statistic']:.3f}"
        )
        table.add_row(row["feature"], f"{row['psi']:.3f}", ks, row["level"])
    console.print(table)


def _show_incidents(console: Console, settings: Settings) -> None:
    """Each drift incident's Slack messages: role, what became of it, what it said."""
    for incident in read_incidents(settings):
        state = (
            "open"
            if incident.is_open
            else f"resolved on {incident.resolved_on}: {incident.resolution}"
        )
        table = Table(
            title=f"drift incident of {incident.onset} ({state}): "
            f"{len(incident.messages)} Slack message(s)",
            title_justify="left",
        )
        for column in ("message", "decided on", "delivery", "says"):
            table.add_column(column, overflow="fold")
        for message in incident.messages:
            table.add_row(message.role, str(message.day), message.status, message.why)
        console.print(table)


def _incident_messages(settings: Settings) -> str:
    """The drift incidents' messages in one line: how many, of which kind."""
    incidents = read_incidents(settings)
    if not incidents:
        return "no drift incident"
    return "; ".join(
        f"incident of {i.onset} ({'open' if i.is_open else 'resolved'}): {len(i.messages)} "
        f"message(s): {', '.join(m.role for m in i.messages)}"
        for i in incidents
    )


def _alerts(settings: Settings) -> dict[str, int]:
    """Alerts raised so far by kind (sent to Slack, or kept in the outbox when it is not set)."""
    counts: dict[str, int] = {}
    for path in sorted((settings.alerts_dir / "outbox").glob("*.json")):
        kind = json.loads(path.read_text()).get("alert", {}).get("kind", "other")
        counts[kind] = counts.get(kind, 0) + 1
    sent = settings.alerts_dir / "sent.jsonl"
    if sent.exists():
        for line in sent.read_text().splitlines():
            if line.strip():
                kind = json.loads(line).get("kind", "other")
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def _final_summary(console: Console, settings: Settings, build, nights, timings) -> None:
    versions = list_versions(settings)
    table = Table(title="churn-ops demo: what was made, and where", title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("result", overflow="fold")
    table.add_column("where", overflow="fold")
    table.add_row(
        "feature tables", f"{sum(build.rows.values()):,} rows", _shown(build.features_dir)
    )
    table.add_row(
        "nights scored and monitored",
        f"{len(nights)} ({nights[0]} .. {nights[-1]})",
        f"{_shown(settings.retention_dir)}, {_shown(settings.predictions_dir)}",
    )
    alerts = _alerts(settings)
    table.add_row(
        "alerts",
        ", ".join(f"{kind} {n}" for kind, n in sorted(alerts.items())) or "none",
        _shown(settings.alerts_dir) + " (Slack when CHURN_SLACK_* is set)",
    )
    table.add_row(
        "drift incidents",
        _incident_messages(settings),
        _shown(settings.monitoring_dir / "incidents.json"),
    )
    table.add_row(
        f"model {settings.model_name}",
        "; ".join(
            f"v{v.version} {'/'.join(v.aliases) or 'no alias'} "
            f"(AUC {v.metrics.get('roc_auc', float('nan')):.3f})"
            for v in versions
        ),
        _shown(settings.mlflow_dir),
    )
    table.add_row(
        "drift reports", "HTML + PNG per night", _shown(settings.monitoring_dir / "reports")
    )
    console.print(table)
    console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    console.print(
        "Open the UIs on this data: `churn up` (Prefect http://127.0.0.1:4200, MLflow "
        'http://127.0.0.1:5000); `churn audit sql "SELECT * FROM daily_volumes"` for the '
        "auditors' view; `churn down` to stop."
    )
