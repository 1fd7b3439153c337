"""The ``churn`` command line: one entry point for operators, each command a thin call into ``tasks``.

This module only assembles the Typer app: the root callback, the command groups (one
``flows/*_cli.py`` module each, registered in the order ``churn --help`` lists them), and
:func:`run`, the console entry point. The contract every group relies on: the callback has set
``CHURN_HOME`` (and dropped cached settings) and the log levels before any command runs, so
commands read settings inside themselves, never at import; a
:class:`~tasks.core.errors.ChurnError` a command raises is printed by :func:`run` as one
``error:`` line, exit code 1.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from flows import (
    backtest_cli,
    cold_start_cli,
    demo_cli,
    features_cli,
    model_cli,
    monitor_cli,
    score_cli,
    serve_cli,
    stack_cli,
)
from flows.audit_cli import audit_app
from flows.cli_common import err_console
from tasks.core.errors import ChurnError
from tasks.core.settings import reset_settings
from tasks.core.telemetry import disable_telemetry

app = typer.Typer(
    help="churn-ops: telecom churn scoring and retraining.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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
        logging.getLogger("tasks.alerting").setLevel(logging.ERROR)


# Typer lists an app's own commands in registration order, then its sub-apps in theirs: the data
# commands first, the local stack after them, and the features, model, audit groups last.
features_cli.register(app)
model_cli.register(app)
cold_start_cli.register(app)
score_cli.register(app)
monitor_cli.register(app)
demo_cli.register(app)
backtest_cli.register(app)
serve_cli.register(app)
app.add_typer(audit_app, name="audit", help="Read-only audit of the prediction log.")
stack_cli.register(app)


def run() -> None:
    """Entry point: a ChurnError becomes one clear line on stderr and exit code 1 (usage errors exit 2)."""
    try:
        app()
    except ChurnError as exc:
        # soft_wrap: one error is one line however narrow the terminal (logs and grep see it whole).
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
