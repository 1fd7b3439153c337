"""`python -m flows` is the `churn` command."""

from flows.cli import run

run()
