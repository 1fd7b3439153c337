"""``churn audit …``: read-only SQL over the prediction log, a subscriber's history, checksums.

Registered on the main app in ``flows/cli.py``; its callback has set ``CHURN_HOME`` by the time
a command here runs. A :class:`~tasks.core.errors.ChurnError` (a refused write, bad SQL) is
left to ``flows.cli.run``, which prints one ``error:`` line and exits 1.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime
from enum import Enum
from typing import Annotated

import pyarrow as pa
import typer
from rich.console import Console
from rich.table import Table

from tasks.core.settings import get_settings

audit_app = typer.Typer(
    help="Read-only audit of the prediction log: SQL over its views, a subscriber's "
    "history, checksums.",
    no_args_is_help=True,
)

console = Console()


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"


FormatOption = Annotated[
    OutputFormat, typer.Option("--format", help="A table for people, or CSV for tools.")
]
LimitOption = Annotated[
    int, typer.Option(min=1, help="Most rows shown in table format (CSV prints every row).")
]


@audit_app.command("sql")
def audit_sql(
    query: Annotated[
        str,
        typer.Argument(
            help="Read-only SQL over the views predictions, promotions, subscriber_predictions, "
            "champion_on_date, daily_volumes, shadow_disagreement."
        ),
    ],
    format_: FormatOption = OutputFormat.table,
    limit: LimitOption = 100,
) -> None:
    """Run QUERY read-only; anything but SELECT / EXPLAIN / DESCRIBE / SHOW is refused."""
    from tasks.audit.views import audit_connection, run_readonly

    conn = audit_connection(get_settings())
    try:
        result = run_readonly(conn, query)
    finally:
        conn.close()
    _print(result, format_, limit, title=None)


@audit_app.command("subscriber")
def audit_subscriber(
    subscriber: Annotated[
        str,
        typer.Argument(
            help="The subscriber to report on: its subscriber_id, or the customer's own id "
            "where the import numbered them (customer_key)."
        ),
    ],
    format_: FormatOption = OutputFormat.table,
    limit: LimitOption = 1000,
) -> None:
    """Every prediction logged for SUBSCRIBER, oldest first, champion and shadow."""
    from tasks.audit.views import subscriber_report
    from tasks.data.customer_keys import subscriber_of

    settings = get_settings()
    subscriber_id = subscriber_of(settings.source_dir, subscriber)
    report = subscriber_report(settings, subscriber_id)
    if format_ is OutputFormat.table:
        # The feature values are for CSV (as JSON) and SQL (features.<name>, to_json(features));
        # a terminal shows the decision and its reasons.
        report = report.select(
            [
                "score_date",
                "model_name",
                "model_version",
                "role",
                "probability",
                "risk_tier",
                "reasons",
                "scored_at",
                "flow_run_id",
            ]
        )
        if report.num_rows == 0:
            console.print(
                f"no predictions logged for subscriber {subscriber_id} under "
                f"{settings.predictions_dir}"
            )
            return
    named = f" ({subscriber.strip()})" if subscriber.strip() != str(subscriber_id) else ""
    _print(report, format_, limit, title=f"Subscriber {subscriber_id}{named}")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check every log file against the ledger's checksums and row counts; exit 1 on any mismatch."""
    from tasks.audit.ledger import verify_log

    settings = get_settings()
    report = verify_log(settings)
    table = Table(title="Prediction log", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("directory", str(settings.predictions_dir))
    table.add_row("ok", f"{report.ok:,}")
    table.add_row("modified", f"{len(report.modified):,}")
    table.add_row("missing", f"{len(report.missing):,}")
    table.add_row("unexpected", f"{len(report.unexpected):,}")
    if report.in_flight:
        table.add_row("being written (ignored)", f"{len(report.in_flight):,}")
    table.add_row("ledger lines", f"{report.ledger_lines:,}")
    console.print(table)
    for mismatch in report.modified:
        console.print(f"[bold red]modified[/]   {mismatch}", highlight=False)
    for path in report.missing:
        console.print(f"[bold red]missing[/]    {path}", highlight=False)
    for path in report.unexpected:
        console.print(f"[bold red]unexpected[/] {path}", highlight=False)
    if not report.clean:
        console.print(f"[bold red]log does not match its ledger:[/] {report.summary()}")
        raise typer.Exit(1)
    console.print(f"clean: {report.summary()}")


# ----------------------------------------------------------------------------- output


def _print(result: pa.Table, format_: OutputFormat, limit: int, title: str | None) -> None:
    if format_ is OutputFormat.csv:
        typer.echo(_csv(result), nl=False)
        return
    shown = result.slice(0, limit)
    table = Table(title=title, title_justify="left")
    for name in result.column_names:
        table.add_column(name, overflow="fold")
    # Column-wise: a query may name two columns alike, which row dicts would merge.
    for row in zip(*(column.to_pylist() for column in shown.columns), strict=True):
        table.add_row(*(_cell(value) for value in row))
    console.print(table)
    if result.num_rows == 0:
        console.print("(no rows)")
    elif shown.num_rows < result.num_rows:
        console.print(
            f"showing {shown.num_rows:,} of {result.num_rows:,} rows (--limit, or --format csv)"
        )


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):  # a struct, such as the feature values: name=value, in order
        return ", ".join(f"{name}={_cell(v)}" for name, v in value.items())
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.6g}"  # for the eye; --format csv keeps every digit
    return str(value)


def _csv(result: pa.Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.column_names)
    for batch in result.to_batches():
        for row in zip(*(column.to_pylist() for column in batch.columns), strict=True):
            writer.writerow(_csv_value(v) for v in row)
    return buffer.getvalue()


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
