"""``churn backtest``: every retraining policy replayed on a simulated world, night by night.

Registered by :mod:`flows.cli`, under the contract stated there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli_common import DateOption, console, parse_day, use_prefect
from tasks.core.settings import get_settings
from tasks.ops.backtest import POLICIES, SCENARIOS, recovered_share_interval


def backtest(
    scenario: Annotated[
        str, typer.Option(help=f"World to replay: {', '.join(SCENARIOS)}.")
    ] = "price_shock",
    subscribers: Annotated[int, typer.Option(min=500, help="Subscribers in the world.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed of the world.")] = 7,
    world_start: DateOption = "2026-01-01",
    start: Annotated[
        str | None,
        typer.Option(
            help="First night (YYYY-MM-DD); default: the first day with the 210 days of history "
            "a first training needs."
        ),
    ] = None,
    nights_before: Annotated[
        int, typer.Option(min=1, help="Nights replayed before the shift starts.")
    ] = 14,
    nights_after: Annotated[
        int,
        typer.Option(
            min=1,
            help="Nights replayed from the shift on (the 45..120-day recovery window needs 121).",
        ),
    ] = 121,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Policies to replay (repeat the option): {', '.join(POLICIES)}; default all."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where worlds, policy homes and results go; default $CHURN_HOME/backtest."
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option(help="Simulate the world again even if one with the same spec exists.")
    ] = False,
    reuse: Annotated[
        bool,
        typer.Option(help="Keep the replays of policies already run on the same world."),
    ] = False,
) -> None:
    """Replay a simulated world night by night once per retraining policy (score, monitor,
    retrain by policy) and measure realized precision at capacity and AUC as outcomes mature."""
    use_prefect()
    from flows.backtest import run_backtest
    from tasks.ops.backtest import BacktestError, backtest_calendar, check_policies

    if scenario not in SCENARIOS:
        raise BacktestError(f"unknown scenario {scenario!r}: choose from {', '.join(SCENARIOS)}")
    settings = get_settings()
    calendar = backtest_calendar(
        parse_day(world_start, "--world-start"),
        nights_before,
        nights_after,
        settings.label_horizon_days,
        first_night=parse_day(start, "--start") if start else None,
    )
    result = run_backtest(
        (out or settings.home / "backtest").resolve(),
        scenario,
        subscribers=subscribers,
        seed=seed,
        calendar=calendar,
        policies=check_policies(policy or POLICIES),
        fresh=fresh,
        reuse=reuse,
        progress=lambda line: console.print(f"  {line}"),
    )
    table = Table(
        title=f"backtest {scenario}: {subscribers:,} subscribers, nights {calendar.nights[0]} .. "
        f"{calendar.nights[-1]}, shift {calendar.shift}",
        title_justify="left",
    )
    for column in result.summary.columns:
        table.add_column(str(column))
    for row in result.summary.itertuples(index=False):
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)
    for policy_name in ("weekly", "drift", "drift-matured", "deployed"):
        share = recovered_share_interval(result.realized, policy_name, result.calendar.shift)
        if share is not None:
            console.print(
                f"  {policy_name} closes {share.text()} of the none→nightly gap in realized "
                "precision@K over shift +45..+120 days"
            )
    for name, path in result.files.items():
        console.print(f"  {name}: {path}")


def register(app: typer.Typer) -> None:
    app.command()(backtest)
