"""``churn demo``: the whole loop on simulated data, from the first champion to a drift retraining.

Its own module because it runs every stage (simulate, features, train, score, monitor, retrain)
and belongs to none of their groups. Registered by :mod:`flows.cli`, under the contract stated there.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_common import DateOption, console, parse_day, use_prefect
from tasks.core.settings import get_settings


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
    use_prefect()
    from flows.demo import run_demo

    run_demo(
        get_settings(),
        subscribers=subscribers,
        days=days,
        start=parse_day(start, "--start"),
        seed=seed,
        console=console,
    )


def register(app: typer.Typer) -> None:
    app.command()(demo)
