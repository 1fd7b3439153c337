"""What the ``churn`` command groups share: the consoles, day parsing, the progress bar and the
summary table, and the step that puts Prefect's state under ``CHURN_HOME`` before a flow runs.

Imported by every ``flows/*_cli.py`` group module and by ``flows/cli.py``; it imports none of
them back. Nothing here reads settings at import: ``use_prefect`` reads them when a command
calls it, after the main app's callback has set ``CHURN_HOME``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks.core.settings import get_settings

console = Console()
err_console = Console(stderr=True)

DateOption = Annotated[str, typer.Option(help="A day, YYYY-MM-DD.")]


def parse_day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=name) from None


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
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


def print_summary(title: str, rows: list[tuple[str, object]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)


def use_prefect() -> None:
    """Before a command runs a flow: Prefect's own state (its local database when no server is
    configured) lives with ours, in a directory that exists before Prefect is imported."""
    if "PREFECT_HOME" not in os.environ:
        prefect_home = get_settings().home / "prefect"
        prefect_home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(prefect_home)
