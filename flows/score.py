"""Prefect flow ``score-nightly``: every subscriber in service scored, the high-risk file, the log.

Shards run as Prefect tasks. ``CHURN_SCORE_TASK_RUNNER=local`` (default) runs them one after the
other in the flow's process; ``dask`` runs them through prefect-dask's ``DaskTaskRunner`` on the
cluster at ``CHURN_DASK_ADDRESS`` (a LocalCluster when unset), in the subflow ``score-shards``.
Either way the results come back to the flow's process in shard order and are written there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from datetime import date

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.alerting import alert_on_failure
from flows.common import dated_run_name, one_at_a_time, run_day
from tasks.core.settings import Settings, get_settings
from tasks.scoring.nightly import ScoreSummary, run_scoring
from tasks.scoring.shards import ScoringContext, Shard, ShardResult, score_shard


@task(name="score-shard", cache_policy=NO_CACHE, persist_result=False)
def score_shard_task(ctx: ScoringContext, shard: Shard) -> ShardResult:
    return score_shard(ctx, shard)


def _sequential(ctx: ScoringContext, shards: list[Shard]) -> Iterator[ShardResult]:
    for shard in shards:
        yield score_shard_task(ctx, shard)


def _submitted(window: int):
    """Submit shards to the flow's task runner, at most ``window`` unread results at a time.

    The bound keeps the results waiting on the cluster (each a shard's log rows) from piling up
    when workers outpace the writer.
    """

    def run(ctx: ScoringContext, shards: list[Shard]) -> Iterator[ShardResult]:
        pending = deque()
        for shard in shards:
            pending.append(score_shard_task.submit(ctx, shard))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    return run


@flow(name="score-shards", description="Score the shards on the configured task runner.")
def score_shards_flow(score_date: date, flow_run_id: str | None, window: int) -> ScoreSummary:
    return run_scoring(
        get_settings(), score_date, map_shards=_submitted(window), flow_run_id=flow_run_id
    )


def _dask_runner(settings: Settings):
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.model_threads,
            "threads_per_worker": 1,
            "dashboard_address": None,
        }
    )


@flow(
    name="score-nightly",
    description="Score every subscriber in service; write the high-risk file and the prediction log.",
    flow_run_name=dated_run_name("score", "score_date"),
    on_failure=[alert_on_failure],
)
def score_nightly_flow(score_date: date | None = None) -> ScoreSummary:
    """Score ``score_date`` (default: the day before the run's scheduled time, in ``CHURN_TIMEZONE``)."""
    logger = get_run_logger()
    settings = get_settings()
    day = score_date or run_day(settings)
    run_id = str(runtime.flow_run.id)
    # One scoring at a time (a no-op where the limit is not defined): two nights never interleave
    # their writes to the log and the retention folder.
    with one_at_a_time("churn-score"):
        if settings.score_task_runner == "dask":
            shards_flow = score_shards_flow.with_options(task_runner=_dask_runner(settings))
            summary = shards_flow(day, run_id, window=2 * max(1, settings.model_threads))
        else:
            summary = run_scoring(settings, day, map_shards=_sequential, flow_run_id=run_id)
    logger.info(
        "scored %s: %s of %s subscribers; high-risk file %s",
        day,
        f"{summary.scored:,}",
        f"{summary.subscribers:,}",
        summary.high_risk_csv,
    )
    # tasks.scoring logs a warning per model and feature; the flow run's own log gets one line.
    unseen = {
        f"{role} {feature}": count
        for role, features in summary.unseen_categories.items()
        for feature, count in features.items()
    }
    if unseen:
        logger.warning(
            "values unseen in training, scored as missing: %s (see the artifact)",
            ", ".join(f"{name} {count:,}" for name, count in unseen.items()),
        )
    create_markdown_artifact(
        key="nightly-scoring",
        description=f"Nightly scoring {day}",
        markdown=summary.markdown(),
    )
    if summary.top:
        create_table_artifact(
            key="high-risk-top",
            description=f"Top of the high-risk file {day}",
            table=[{k: str(v) for k, v in row.items()} for row in summary.top],
        )
    return summary
