"""Prefect flow: the feature stage, from source contracts to a Feast registry that serves the new days."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.core.settings import get_settings
from tasks.feature_jobs import check_feature_tables, check_sources, materialize_online
from tasks.feature_store import apply_feature_repo
from tasks.features import BuildSummary, build_feature_tables


@task
def check_source_contracts() -> list[str]:
    """Source tables pass their data contracts on the newest day."""
    return [r.table for r in check_sources(get_settings())]


@task
def apply_registry() -> list[str]:
    """Feast registry holds the declarations of feature_repo/."""
    return apply_feature_repo(get_settings()).feature_views


@task
def build_tables(start: date | None, end: date | None) -> BuildSummary:
    """Feature tables hold one partition per snapshot day in [start, end]."""
    return build_feature_tables(get_settings(), start, end)


@task
def check_feature_contracts(day: date) -> list[str]:
    """Feature tables pass their data contracts on ``day``."""
    return [r.table for r in check_feature_tables(get_settings(), day)]


@task
def materialize(day: date) -> dict[str, int]:
    """The online store serves the features as of ``day``."""
    return materialize_online(get_settings(), day)


@flow(
    name="build-features",
    description="Source contracts → sql/features → feature contracts → feast apply → online store.",
)
def build_features_flow(
    start: date | None = None, end: date | None = None, materialize_online_store: bool = True
) -> BuildSummary:
    logger = get_run_logger()
    sources = check_source_contracts()
    views = apply_registry()
    summary = build_tables(start, end)
    checked = check_feature_contracts(summary.end)
    online = materialize(summary.end) if materialize_online_store else {}
    logger.info("built %s .. %s: %s", summary.start, summary.end, summary.rows)
    create_markdown_artifact(
        key="feature-build",
        description="Feature tables built by this run",
        markdown="\n".join(
            [
                f"# Feature build {summary.start} .. {summary.end}",
                "",
                "| feature table | rows written | online rows |",
                "|---|---:|---:|",
                *(
                    f"| {name} | {rows:,} | {online.get(name, 0):,} |"
                    for name, rows in summary.rows.items()
                ),
                "",
                f"Contracts passed: {', '.join(sources + checked)}.",
                f"Feast views applied: {', '.join(views)}. Tables under `{summary.features_dir}`.",
            ]
        ),
    )
    return summary
