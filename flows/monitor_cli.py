"""``churn monitor`` and ``churn performance``: drift on the night's inputs, realized performance
once outcomes have matured.

Registered by :mod:`flows.cli`, under the contract stated there.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flows.cli_common import console, parse_day, print_summary, use_prefect


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
    use_prefect()
    from flows.monitor import monitor_flow

    result = monitor_flow(
        score_date=parse_day(date_, "--date") if date_ else None, retrain_on_drift=retrain_on_drift
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
    print_summary(
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


def performance(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Evaluate outcomes known at this day.")
    ] = None,
    recompute: Annotated[
        bool, typer.Option(help="Evaluate every matured score date again.")
    ] = False,
) -> None:
    """Run the evaluate-performance flow: realized AUC, lift and calibration once outcomes matured."""
    use_prefect()
    from flows.performance import performance_flow

    outcome = performance_flow(
        as_of=parse_day(as_of, "--as-of") if as_of else None, recompute=recompute
    )
    print_summary(
        f"Realized performance at {outcome['as_of']}",
        [
            ("new score dates", len(outcome["new_dates"])),
            *((f["kind"], f["message"]) for f in outcome["findings"]),
            ("trend chart", outcome["chart"]),
        ],
    )


def register(app: typer.Typer) -> None:
    app.command()(monitor)
    app.command()(performance)
