"""``churn score``: the nightly scoring flow run by hand, and the summary it prints.

Registered by :mod:`flows.cli`, under the contract stated there.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_common import parse_day, print_summary, use_prefect


def score(
    date_: Annotated[
        str | None,
        typer.Option(
            "--date", help="Score date (YYYY-MM-DD); default: yesterday in CHURN_TIMEZONE."
        ),
    ] = None,
) -> None:
    """Run the nightly scoring flow: every subscriber in service, the high-risk file, the prediction log."""
    use_prefect()
    from flows.score import score_nightly_flow

    summary = score_nightly_flow(score_date=parse_day(date_, "--date") if date_ else None)
    _print_score_summary(summary)


def _print_score_summary(summary) -> None:
    versions = ", ".join(f"v{v} ({role})" for v, role in summary.models)
    tiers = summary.tiers.get("champion", {})
    print_summary(
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


def register(app: typer.Typer) -> None:
    app.command()(score)
