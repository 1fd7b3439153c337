"""``churn cold-start``: from one customer export with a churn column to a first high-risk file.

The four steps a person could run one by one (``churn import``, ``churn features build``,
``churn train --cold-start``, ``churn score``), in one process: each flow command without a
Prefect server starts Prefect's temporary one (about 12 s), and this starts it once. Its own
module because it runs four stages and belongs to none of their groups. Registered by
:mod:`flows.cli`, under the contract stated there.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import console, print_summary, use_prefect
from tasks.core.errors import ChurnError
from tasks.core.settings import get_settings


def cold_start(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="The export (CSV or Parquet).")
    ],
    mapping: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Its subscribers mapping, with `churn:` and `snapshot_date` (see README).",
        ),
    ],
) -> None:
    """A first model from one export: import it, build its two days of features, train split by
    subscriber, and score the customers still there on the export's day."""
    from tasks.data.import_mapping import load_mapping

    parsed = load_mapping(mapping)
    if parsed.churn is None or parsed.snapshot_date is None:
        # Before anything is written: an export without its churn column teaches nothing.
        raise ChurnError(
            f"{mapping}: a cold start needs the export's churn column (churn: {{flag: COLUMN}} "
            "or churn: {cancel_date: COLUMN}) and its snapshot_date in the mapping"
        )
    use_prefect()
    from flows.features import build_features_flow
    from flows.retrain import retrain_flow
    from flows.score import score_nightly_flow
    from tasks.data.importer import import_file

    began = time.perf_counter()
    settings = get_settings()
    imported = import_file(
        path, mapping, settings.source_dir, label_horizon_days=settings.label_horizon_days
    )
    console.print(
        f"imported {imported.rows:,} customers, {imported.churned or 0:,} of whom had left "
        f"by {parsed.snapshot_date}"
    )
    built = build_features_flow()
    console.print(f"features built for {built.start} .. {built.end}" if built else "")
    # Never paused here: in approval mode the candidate waits as challenger, and this says so.
    trained = retrain_flow(reason="cold start", cold_start=True, wait_for_approval=False)
    assert trained is not None  # a cold start never waits for history
    rows: list[tuple[str, object]] = [
        ("customers imported", imported.rows),
        ("had left by the export", imported.churned or 0),
        ("trained on", f"{trained.split_days['train'][0]}, split by subscriber"),
        ("holdout ROC-AUC", f"{trained.challenger.metrics['roc_auc']:.4f}"),
        ("decision", trained.decision.summary()),
        ("registered version", trained.version or "not registered"),
    ]
    if trained.version is not None and not trained.promoted:
        print_summary("Cold start: waiting for approval", rows)
        console.print(
            f"version {trained.version} waits for a person (CHURN_PROMOTION_MODE=approval): "
            f"`churn model approve {trained.version} --by NAME`, then "
            f"`churn score --date {parsed.snapshot_date}`"
        )
        return
    if not trained.promoted:
        print_summary("Cold start: no champion", rows)
        raise ChurnError(
            "the cold-start candidate did not become champion "
            f"({trained.decision.summary()}); nothing was scored"
        )
    day: date = parsed.snapshot_date
    scored = score_nightly_flow(score_date=day)
    rows += [
        ("scored on " + day.isoformat(), f"{scored.scored:,} customers still there"),
        ("high-risk file", f"{scored.high_risk_csv} ({scored.high_risk_rows:,} rows)"),
        ("seconds", f"{time.perf_counter() - began:.1f}"),
    ]
    print_summary(f"Cold start from {path.name}", rows)


def register(app: typer.Typer) -> None:
    app.command("cold-start")(cold_start)
