"""Prefect flow: the feature stage, from source contracts to an online store that serves the newest day."""

from __future__ import annotations

from datetime import date, timedelta

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.alerting import alert_on_failure
from tasks.core.settings import get_settings
from tasks.data.sources import check_sources, source_date_range
from tasks.features.store import apply_feature_repo
from tasks.features.tables import BuildSummary, build_feature_tables, built_days, materialize_online


@task
def check_source_contracts(expected_latest: date | None) -> list[str]:
    """Source tables pass their data contracts on the newest day (which must be ``expected_latest``)."""
    return [r.table for r in check_sources(get_settings(), expected_latest)]


@task
def apply_registry() -> list[str]:
    """Feast registry holds the declarations of feature_repo/."""
    return apply_feature_repo(get_settings()).feature_views


@task
def build_tables(start: date | None, end: date | None) -> BuildSummary:
    """Feature tables hold one checked partition per snapshot day in [start, end]."""
    return build_feature_tables(get_settings(), start, end)


@task
def materialize(day: date) -> dict[str, int]:
    """The online store serves the features as of ``day``."""
    return materialize_online(get_settings(), day)


@flow(
    name="build-features",
    description="Source contracts → feast apply → sql/features, checked before publishing → online store.",
    on_failure=[alert_on_failure],
)
def build_features_flow(
    start: date | None = None,
    end: date | None = None,
    materialize_online_store: bool = True,
    only_new_days: bool = False,
) -> BuildSummary | None:
    """Build ``[start, end]`` (default: every source day); ``only_new_days`` (the nightly
    deployment) starts after the newest day already built, and does nothing when none is new."""
    logger = get_run_logger()
    if only_new_days and start is None:
        built = built_days(get_settings(), "subscriber_profile")
        _, last = source_date_range(get_settings().source_dir)
        if built and built[-1] >= last:
            logger.info("features are built through %s, the newest source day: nothing new", last)
            return None
        start = built[-1] + timedelta(days=1) if built else None
    sources = check_source_contracts(end)
    views = apply_registry()
    summary = build_tables(start, end)
    newest = built_days(get_settings(), "subscriber_profile")[-1]
    online: dict[str, int] = {}
    if materialize_online_store and summary.end >= newest:
        online = materialize(summary.end)
    elif materialize_online_store:
        # A backfill must not replace what the online store serves with older values.
        logger.info("backfill up to %s: online store left at %s", summary.end, newest)
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
                f"Contracts passed: sources ({', '.join(sources)}); features on "
                + f"{len(summary.contracts)} table-days.",
                f"Feast views applied: {', '.join(views)}. Tables under `{summary.features_dir}`.",
            ]
        ),
    )
    return summary
