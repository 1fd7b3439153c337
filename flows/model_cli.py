"""``churn train`` and ``churn model …``: train a challenger; list, promote, approve, roll back.

Registered by :mod:`flows.cli`, under the contract stated there.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from flows.cli_common import console, parse_day, print_summary, use_prefect
from tasks.core.settings import get_settings

model_app = typer.Typer(
    help="The registered churn model: versions, promotion, rollback.", no_args_is_help=True
)


def train(
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Training day (YYYY-MM-DD); with --cold-start, optional (default: the newest "
            "export with a churn column).",
        ),
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Why this retraining runs (recorded as lineage).")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            help="In approval mode, wait (paused) for `churn model approve` or the Prefect UI; "
            "--no-wait leaves the candidate as challenger."
        ),
    ] = True,
    cold_start: Annotated[
        bool,
        typer.Option(
            "--cold-start",
            help="A first model from one labelled snapshot (an imported export with a churn "
            "column), split by subscriber rather than by time: a weaker guarantee, said in the "
            "model card and the MLflow tags.",
        ),
    ] = False,
) -> None:
    """Run the retrain flow at AS_OF: train, evaluate, gate, and register/promote only if every gate passes."""
    if as_of is None and not cold_start:
        raise typer.BadParameter(
            "give the training day with --as-of YYYY-MM-DD", param_hint="--as-of"
        )
    use_prefect()
    from flows.retrain import retrain_flow

    day = parse_day(as_of, "--as-of") if as_of is not None else None
    result = retrain_flow(
        as_of=day,
        reason=reason or ("cold start" if cold_start else "manual"),
        wait_for_approval=wait,
        cold_start=cold_start,
    )
    if result is None:
        print_summary(
            f"Retraining at {as_of}: waiting for history",
            [("decision", "the cold-start champion stays (see the run's log for the first day)")],
        )
        return
    m = result.challenger.metrics
    split = "by subscriber (cold start)" if cold_start else "by time"
    print_summary(
        f"Retraining at {result.as_of}: {result.decision.verdict}",
        [
            ("decision", result.decision.summary()),
            ("split", split),
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


@model_app.command("list")
def model_list() -> None:
    """Versions of the model with their aliases, holdout metrics and gate results."""
    from tasks.training.registry import list_versions

    table = Table(title=f"{get_settings().model_name}", title_justify="left")
    for column in ("version", "aliases", "created", "roc_auc", "calibration", "gates"):
        table.add_column(column, overflow="fold")
    for v in list_versions(get_settings()):
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

    moved = promote(get_settings(), version, by=by, reason=reason)
    print_summary(
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
    use_prefect()
    from flows.approval import resume_waiting_run
    from tasks.training.approval import apply_approval

    decision = {"approve": not reject, "approver": by, "comment": comment}
    run_id = resume_waiting_run(version, decision)
    if run_id is not None:
        print_summary(
            "Decision sent to the waiting retrain run",
            [
                ("flow run", run_id),
                ("version", version),
                ("decision", "reject" if reject else "approve"),
                ("by", by),
            ],
        )
        return
    outcome = apply_approval(
        get_settings(), version, approve=not reject, approver=by, comment=comment
    )
    print_summary("Decision recorded", [("outcome", outcome.summary())])


@model_app.command("rollback")
def model_rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the promotion history).")],
    by: Annotated[str, typer.Option(help="Who decides.")] = os.environ.get("USER", "operator"),
) -> None:
    """Restore the previous champion in one command (recorded)."""
    from tasks.training.registry import rollback

    moved = rollback(get_settings(), by=by, reason=reason)
    print_summary(
        "Champion rolled back", [("from", moved.from_version), ("to", moved.to_version), ("by", by)]
    )


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.add_typer(model_app, name="model")
