"""Prefect flow: retrain the churn model at ``as_of`` and let the gates decide (DESIGN §6)."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact

from tasks.core.settings import get_settings
from tasks.retrain import RetrainResult, retrain


@flow(
    name="retrain",
    description="Training frame → LightGBM → holdout metrics → fairness → champion/challenger → MLflow.",
)
def retrain_flow(as_of: date, reason: str = "scheduled") -> RetrainResult:
    logger = get_run_logger()
    result = retrain(get_settings(), as_of, reason, flow_run_id=str(runtime.flow_run.id))
    logger.info("%s", result.decision.summary())
    create_markdown_artifact(
        key="retrain-decision",
        description=f"Retraining at {as_of}: {result.decision.verdict}",
        markdown=result.model_card
        + f"\nMLflow run `{result.run_id}`"
        + (f", registered as version {result.version}" if result.version else ", not registered")
        + (" and promoted to champion." if result.promoted else "."),
    )
    return result
