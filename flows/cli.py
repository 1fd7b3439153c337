"""The ``churn`` command line: one entry point for operators, each command a thin call into ``tasks``."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.audit_cli import audit_app
from flows.stack_cli import register as register_stack_commands
from tasks.core.errors import ChurnError
from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.core.telemetry import disable_telemetry

app = typer.Typer(
    help="churn-ops: telecom churn scoring and retraining.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
features_app = typer.Typer(
    help="Feature tables, the Feast store and point-in-time frames.", no_args_is_help=True
)
app.add_typer(features_app, name="features")
model_app = typer.Typer(
    help="The registered churn model: versions, promotion, rollback.", no_args_is_help=True
)
app.add_typer(model_app, name="model")
app.add_typer(audit_app, name="audit", help="Read-only audit of the prediction log.")

console = Console()
err_console = Console(stderr=True)

DateOption = Annotated[str, typer.Option(help="A day, YYYY-MM-DD.")]


def _day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=name) from None


@app.callback()
def main(
    home: Annotated[
        Path | None, typer.Option("--home", help="Data root (default: $CHURN_HOME or ./.churn).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    disable_telemetry()
    if home is not None:
        os.environ["CHURN_HOME"] = str(home)
    reset_settings()
    # Prefect narrates every task at INFO and logs tracebacks itself; the CLI reports errors once.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")
    if not verbose:
        # MLflow narrates its store migrations and a pip lookup uv environments never need.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # Without Slack an alert is logged in full and kept in $CHURN_HOME/alerts/outbox; the
        # commands summarise it, so the terminal shows it with -v only.
        logging.getLogger("tasks.alerting.delivery").setLevel(logging.ERROR)


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _summary(title: str, rows: list[tuple[str, object]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)


def _settings() -> Settings:
    return get_settings()


def _use_prefect() -> None:
    """Before a command runs a flow: Prefect's own state (its local database when no server is
    configured) lives with ours, in a directory that exists before Prefect is imported."""
    if "PREFECT_HOME" not in os.environ:
        prefect_home = get_settings().home / "prefect"
        prefect_home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(prefect_home)


# ----------------------------------------------------------------------------- simulate / import


class Scenario(str, Enum):
    baseline = "baseline"
    price_shock = "price_shock"
    usage_shift = "usage_shift"
    support_decline = "support_decline"


@app.command()
def simulate(
    subscribers: Annotated[
        int, typer.Option(min=1, help="Subscribers in service on the first day.")
    ] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Days to simulate.")] = 240,
    start: DateOption = "2026-01-01",
    seed: Annotated[
        int, typer.Option(min=0, help="Random seed: same seed and arguments, same bytes.")
    ] = 7,
    scenario: Annotated[Scenario, typer.Option(help="Drift to inject.")] = Scenario.baseline,
    scenario_start: Annotated[
        str | None, typer.Option(help="First day of the scenario (YYYY-MM-DD).")
    ] = None,
) -> None:
    """Simulate a subscriber world and write its source tables under $CHURN_HOME/source."""
    from tasks.data.sim_population import WorldSpec
    from tasks.data.simulate import simulate_world

    settings = _settings()
    try:
        spec = WorldSpec(
            subscribers=subscribers,
            days=days,
            start=_day(start, "--start"),
            seed=seed,
            scenario=scenario.value,
            scenario_start=_day(scenario_start, "--scenario-start") if scenario_start else None,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scenario-start") from None
    began = time.perf_counter()
    with _progress("simulating days", days) as advance:
        summary = simulate_world(
            spec,
            settings.source_dir,
            settings.truth_dir,
            chunk_days=settings.sim_chunk_days,
            progress=advance,
        )
    _summary(
        f"Simulated world {summary.start} .. {summary.end} ({scenario})",
        [
            *((f"rows: {k}", v) for k, v in summary.rows.items()),
            ("subscribers ever", summary.subscribers_ever),
            ("churned", summary.churned),
            ("active at end", summary.active_at_end),
            ("source", summary.source_dir),
            ("truth", summary.truth_dir),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


@app.command("import")
def import_(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="CSV or Parquet file to import.")
    ],
    mapping: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="Mapping YAML (see README).")
    ],
) -> None:
    """Import your own subscriber data (CSV/Parquet) into the source schema; nothing is written unless it all passes."""
    from tasks.data.importer import import_file

    summary = import_file(path, mapping, _settings().source_dir)
    _summary(
        f"Imported {path.name}",
        [
            ("table", summary.table),
            ("rows", summary.rows),
            *(("wrote", str(p)) for p in summary.written),
        ],
    )


# ----------------------------------------------------------------------------- features


@features_app.command("apply")
def features_apply() -> None:
    """Register the Feast declarations in feature_repo/ (feast apply)."""
    from tasks.features.store import apply_feature_repo

    result = apply_feature_repo(_settings())
    _summary(
        "Feast registry applied",
        [
            ("entities", ", ".join(result.entities)),
            ("feature views", ", ".join(result.feature_views)),
            ("feature services", ", ".join(result.feature_services)),
            ("registry", result.registry),
        ],
    )


@features_app.command("build")
def features_build(
    start: Annotated[
        str | None, typer.Option(help="First snapshot day (default: first source day).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Last snapshot day (default: last source day).")
    ] = None,
    materialize: Annotated[
        bool, typer.Option(help="Also load the last day into the online store.")
    ] = True,
) -> None:
    """Run the build-features flow: source contracts, sql/features, feature contracts, feast apply, online store."""
    _use_prefect()
    from flows.features import build_features_flow

    first, last = (_day(start, "--start") if start else None), (_day(end, "--end") if end else None)
    if first and last and first > last:
        raise typer.BadParameter(f"--start {first} is after --end {last}", param_hint="--start")
    began = time.perf_counter()
    summary = build_features_flow(
        start=_day(start, "--start") if start else None,
        end=_day(end, "--end") if end else None,
        materialize_online_store=materialize,
    )
    _summary(
        f"Feature tables {summary.start} .. {summary.end}",
        [
            *((f"rows: {k}", v) for k, v in summary.rows.items()),
            ("written to", summary.features_dir),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


@features_app.command("materialize")
def features_materialize(
    date_: Annotated[str, typer.Option("--date", help="Snapshot day to load (YYYY-MM-DD).")],
) -> None:
    """Load the features as of DATE into the Feast online store (SQLite), in bounded batches."""
    from tasks.features.tables import materialize_online

    settings = _settings()
    began = time.perf_counter()
    rows = materialize_online(settings, _day(date_, "--date"))
    _summary(
        f"Online store as of {date_}",
        [
            *((f"rows: {k}", v) for k, v in rows.items()),
            ("batch size", settings.online_write_batch_size),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


@features_app.command("training-frame")
def features_training_frame(
    as_of: Annotated[
        str,
        typer.Option("--as-of", help="Training day (YYYY-MM-DD): labels must be mature by then."),
    ],
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
) -> None:
    """Build the point-in-time training frame at AS_OF through Feast and write it to OUT."""
    from tasks.features.frames import build_training_frame, write_frame

    settings = _settings()
    began = time.perf_counter()
    as_of_day = _day(as_of, "--as-of")
    frame = build_training_frame(settings, as_of_day)
    write_frame(frame, out)
    first, last = settings.training_window(as_of_day)
    labels = frame.column("churned_30d").to_pylist()
    _summary(
        f"Training frame at {as_of}",
        [
            ("rows", frame.num_rows),
            ("snapshot window", f"{first} .. {last}"),
            ("snapshots every", f"{settings.training_snapshot_every_days} days"),
            ("positive rate", f"{sum(labels) / max(len(labels), 1):.2%}"),
            ("feature service", settings.feature_service),
            ("written to", out),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


@features_app.command("scoring-frame")
def features_scoring_frame(
    date_: Annotated[str, typer.Option("--date", help="Scoring day (YYYY-MM-DD).")],
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
) -> None:
    """Build the features of every active subscriber as of DATE (bulk Polars path) and write them to OUT."""
    from tasks.features.frames import build_scoring_frame, write_frame

    began = time.perf_counter()
    frame = build_scoring_frame(_settings(), _day(date_, "--date"))
    write_frame(frame, out)
    _summary(
        f"Scoring frame for {date_}",
        [
            ("subscribers", frame.num_rows),
            ("columns", frame.num_columns),
            ("written to", out),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


# ----------------------------------------------------------------------------- model


@app.command()
def train(
    as_of: Annotated[str, typer.Option("--as-of", help="Training day (YYYY-MM-DD).")],
    reason: Annotated[
        str, typer.Option(help="Why this retraining runs (recorded as lineage).")
    ] = "manual",
    wait: Annotated[
        bool,
        typer.Option(
            help="In approval mode, wait (paused) for `churn model approve` or the Prefect UI; "
            "--no-wait leaves the candidate as challenger."
        ),
    ] = True,
) -> None:
    """Run the retrain flow at AS_OF: train, evaluate, gate, and register/promote only if every gate passes."""
    _use_prefect()
    from flows.retrain import retrain_flow

    result = retrain_flow(as_of=_day(as_of, "--as-of"), reason=reason, wait_for_approval=wait)
    m = result.challenger.metrics
    _summary(
        f"Retraining at {as_of}: {result.decision.verdict}",
        [
            ("decision", result.decision.summary()),
            ("holdout ROC-AUC", f"{m['roc_auc']:.4f}"),
            (
                "best achievable",
                f"{result.best_auc:.4f}" if result.best_auc is not None else "unknown",
            ),
            (
                "observable oracle",
                f"{result.observable_auc:.4f}" if result.observable_auc is not None else "unknown",
            ),
            ("PR-AUC / lift@K", f"{m['pr_auc']:.4f} / {m['lift_at_k']:.2f}"),
            ("calibration error", f"{m['calibration_error']:.4f}"),
            ("champion compared", result.champion_version or "none yet"),
            ("MLflow run", result.run_id),
            ("registered version", result.version or "not registered"),
            ("promoted", "yes" if result.promoted else "no"),
            *([("approval", result.approval.summary())] if result.approval else []),
        ],
    )


@app.command()
def score(
    date_: Annotated[
        str | None,
        typer.Option(
            "--date", help="Score date (YYYY-MM-DD); default: yesterday in CHURN_TIMEZONE."
        ),
    ] = None,
) -> None:
    """Run the nightly scoring flow: every subscriber in service, the high-risk file, the prediction log."""
    _use_prefect()
    from flows.score import score_nightly_flow

    summary = score_nightly_flow(score_date=_day(date_, "--date") if date_ else None)
    _print_score_summary(summary)


@app.command()
def monitor(
    date_: Annotated[
        str | None,
        typer.Option("--date", help="Score date to monitor (YYYY-MM-DD); default: yesterday."),
    ] = None,
    retrain_on_drift: Annotated[
        bool,
        typer.Option(
            help="When the day asks for retraining, run the retrain flow here (without a "
            "Prefect server's deployment trigger)."
        ),
    ] = False,
) -> None:
    """Run the monitor flow: profiles, contracts, drift against the champion's reference, alert."""
    _use_prefect()
    from flows.monitor import monitor_flow

    result = monitor_flow(
        score_date=_day(date_, "--date") if date_ else None, retrain_on_drift=retrain_on_drift
    )
    drifted = sorted(result.drifted, key=lambda r: -r["psi"])
    table = Table(title=f"Drift {result.score_date}: {result.severity.level}", title_justify="left")
    for column in ("feature", "PSI", "KS / chi²", "p-value", "level"):
        table.add_column(column)
    for r in drifted or result.drift.to_pylist()[:5]:
        table.add_row(
            r["feature"],
            f"{r['psi']:.3f}",
            "—" if r["statistic"] is None else f"{r['statistic']:.3f}",
            "—" if r["p_value"] is None else f"{r['p_value']:.2g}",
            r["level"],
        )
    console.print(table)
    _summary(
        f"Monitoring {result.score_date}",
        [
            ("severity", result.severity.level),
            ("why", result.severity.reason),
            ("champion version", result.model_version),
            ("retraining requested", "yes" if result.retrain_requested else "no"),
            *([("cooldown", result.cooldown_note)] if result.cooldown_note else []),
            ("report", str(result.report.html)),
        ],
    )


@app.command()
def performance(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Evaluate outcomes known at this day.")
    ] = None,
    recompute: Annotated[
        bool, typer.Option(help="Evaluate every matured score date again.")
    ] = False,
) -> None:
    """Run the evaluate-performance flow: realized AUC, lift and calibration once outcomes matured."""
    _use_prefect()
    from flows.performance import performance_flow

    outcome = performance_flow(as_of=_day(as_of, "--as-of") if as_of else None, recompute=recompute)
    _summary(
        f"Realized performance at {outcome['as_of']}",
        [
            ("new score dates", len(outcome["new_dates"])),
            *((f["kind"], f["message"]) for f in outcome["findings"]),
            ("trend chart", outcome["chart"]),
        ],
    )


def _print_score_summary(summary) -> None:
    versions = ", ".join(f"v{v} ({role})" for v, role in summary.models)
    tiers = summary.tiers.get("champion", {})
    _summary(
        f"Nightly scoring {summary.score_date}",
        [
            ("models", versions),
            ("subscribers in service", summary.subscribers),
            ("scored", summary.scored),
            *((f"not scored: {r}", c) for r, c in summary.not_scored.items()),
            ("tiers (champion)", ", ".join(f"{t} {c:,}" for t, c in tiers.items())),
            (
                "predicted by (champion)",
                ", ".join(
                    f"{name} ({count} shard(s))"
                    for name, count in summary.predictors.get("champion", {}).items()
                ),
            ),
            ("high-risk file", f"{summary.high_risk_csv} ({summary.high_risk_rows:,} rows)"),
            ("seconds", f"{summary.timings.get('total', 0.0):.1f}"),
        ],
    )


@model_app.command("list")
def model_list() -> None:
    """Versions of the model with their aliases, holdout metrics and gate results."""
    from tasks.training.registry import list_versions

    table = Table(title=f"{_settings().model_name}", title_justify="left")
    for column in ("version", "aliases", "created", "roc_auc", "calibration", "gates"):
        table.add_column(column, overflow="fold")
    for v in list_versions(_settings()):
        table.add_row(
            str(v.version),
            ", ".join(v.aliases) or "—",
            f"{v.created:%Y-%m-%d %H:%M}",
            f"{v.metrics.get('roc_auc', float('nan')):.4f}",
            f"{v.metrics.get('calibration_error', float('nan')):.4f}",
            ", ".join(f"{k}={s}" for k, s in v.gates.items()),
        )
    console.print(table)


@model_app.command("promote")
def model_promote(
    version: Annotated[int, typer.Argument(help="Version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the promotion history).")],
    by: Annotated[str, typer.Option(help="Who decides.")] = os.environ.get("USER", "operator"),
) -> None:
    """Move the champion alias to VERSION (recorded)."""
    from tasks.training.registry import promote

    moved = promote(_settings(), version, by=by, reason=reason)
    _summary(
        "Champion moved",
        [("from", moved.from_version or "none"), ("to", moved.to_version), ("by", by)],
    )


@model_app.command("approve")
def model_approve(
    version: Annotated[int, typer.Argument(help="The challenger waiting for approval.")],
    by: Annotated[str, typer.Option(help="Your name (recorded with the decision).")],
    comment: Annotated[str, typer.Option(help="Why (recorded in the promotion history).")] = "",
    reject: Annotated[
        bool, typer.Option("--reject", help="Refuse it: the challenger alias is taken off.")
    ] = False,
) -> None:
    """Approve (or --reject) a challenger: resumes the retrain run paused for it, if one waits."""
    _use_prefect()
    from flows.approval import resume_waiting_run
    from tasks.training.approval import apply_approval

    decision = {"approve": not reject, "approver": by, "comment": comment}
    run_id = resume_waiting_run(version, decision)
    if run_id is not None:
        _summary(
            "Decision sent to the waiting retrain run",
            [
                ("flow run", run_id),
                ("version", version),
                ("decision", "reject" if reject else "approve"),
                ("by", by),
            ],
        )
        return
    outcome = apply_approval(_settings(), version, approve=not reject, approver=by, comment=comment)
    _summary("Decision recorded", [("outcome", outcome.summary())])


@model_app.command("rollback")
def model_rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the promotion history).")],
    by: Annotated[str, typer.Option(help="Who decides.")] = os.environ.get("USER", "operator"),
) -> None:
    """Restore the previous champion in one command (recorded)."""
    from tasks.training.registry import rollback

    moved = rollback(_settings(), by=by, reason=reason)
    _summary(
        "Champion rolled back", [("from", moved.from_version), ("to", moved.to_version), ("by", by)]
    )


# ----------------------------------------------------------------------------- demo


@app.command()
def demo(
    subscribers: Annotated[
        int, typer.Option(min=100, help="Subscribers in the demo world.")
    ] = 20_000,
    days: Annotated[
        int,
        typer.Option(
            min=211,
            help="Days simulated: 210 of history before the first training (90-day features + "
            "30-day labels + 90-day window), then up to 14 nights scored and monitored.",
        ),
    ] = 224,
    start: DateOption = "2026-01-01",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """The whole story on simulated data: a price rise part-way through the last nights; the first
    champion; every night scored and monitored; the shock alerted; a drift retraining judged by the gates."""
    _use_prefect()
    from flows.demo import run_demo

    run_demo(
        _settings(),
        subscribers=subscribers,
        days=days,
        start=_day(start, "--start"),
        seed=seed,
        console=console,
    )


# ----------------------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
) -> None:
    """Serve real-time churn scores over HTTP: POST /predict, /predict/features; GET /health, /metrics."""
    from flows.serve import open_service, run_server

    settings = _settings()
    service = open_service(settings)
    model = service.model
    _summary(
        "Serving churn scores (Ctrl-C to stop)",
        [
            ("url", f"http://{host}:{port}  (docs: /docs)"),
            ("model", f"{model.name} version {model.version} (champion)"),
            ("will-churn threshold", f"{model.threshold:.4f}: {model.threshold_source}"),
            ("feature service", settings.feature_service),
            ("API key", "required (X-API-Key)" if settings.api_key else "not required"),
        ],
    )
    run_server(
        service, host=host, port=port, verbose=logging.getLogger().isEnabledFor(logging.INFO)
    )
    _summary("Stopped", [("online predictions logged", service.log.written)])


def run() -> None:
    """Entry point: a ChurnError becomes one clear line on stderr and exit code 1 (usage errors exit 2)."""
    try:
        app()
    except ChurnError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(1)


# The local stack and the deployments (flows/stack_cli.py), listed after the data commands.
register_stack_commands(app)
