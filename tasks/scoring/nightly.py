"""One night's scoring end to end, as a plain function: plan → shards → prediction log → high-risk file.

``run_scoring`` takes the way shards are executed as an argument (``map_shards``): in this
process one after the other, or Prefect tasks on a Dask cluster (``flows/score.py``). Whatever
runs them, results come back here in shard order and are written by this process only, so a
prediction-log file has one writer, and the output is the same either way.

Nothing is visible before everything succeeded: the log files are published when their writers
close cleanly (any error discards them), then the high-risk file is written atomically. A crash
in between leaves the new log and yesterday's world otherwise; the rerun replaces the log files
(never duplicating rows) and writes the file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa

from tasks.audit.log_schema import BATCH_COLUMNS, CHAMPION
from tasks.audit.prediction_log import PredictionLogWriter
from tasks.core.settings import Settings
from tasks.data.sources import active_subscribers
from tasks.features.frames import view_reads
from tasks.features.store import open_store
from tasks.features.tables import FEAST_TO_ARROW, as_of_timestamp
from tasks.scoring.high_risk import select_high_risk, with_customer_keys, write_high_risk_file
from tasks.scoring.models import resolve_models
from tasks.scoring.shards import (
    TIERS,
    ScoringContext,
    Shard,
    ShardResult,
    candidate_schema,
    explain_candidates,
    plan_shards,
)
from tasks.scoring.unseen import (
    UnseenCounts,
    UnseenExamples,
    add_unseen,
    unseen_markdown,
    warn_unseen,
)

logger = logging.getLogger(__name__)

ShardMapper = Callable[[ScoringContext, list[Shard]], Iterator[ShardResult]]


def default_score_date(settings: Settings, now: datetime | None = None) -> date:
    """Yesterday in the business time zone (the last complete day)."""
    now = now or datetime.now(UTC)
    return now.astimezone(ZoneInfo(settings.timezone)).date() - timedelta(days=1)


def in_process(ctx: ScoringContext, shards: list[Shard]) -> Iterator[ShardResult]:
    """Score the shards one after the other in this process."""
    from tasks.scoring.shards import score_shard

    for shard in shards:
        yield score_shard(ctx, shard)


@dataclass
class ScoreSummary:
    """What a night's scoring did: for the CLI, the Prefect artifact and the tests."""

    score_date: date
    models: list[tuple[int, str]]
    subscribers: int
    scored: int
    not_scored: dict[str, int]
    not_scored_examples: dict[str, list[int]]
    tiers: dict[str, dict[str, int]]
    high_risk_csv: Path
    high_risk_parquet: Path
    high_risk_rows: int
    log_files: list[str]
    shards: int
    timings: dict[str, float] = field(default_factory=dict)
    predictors: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per role, how many shards each predictor scored (``compiled`` unless it was off or refused)."""
    top: list[dict] = field(default_factory=list)
    unseen_categories: UnseenCounts = field(default_factory=dict)
    """Per role, per categorical feature: scored subscribers whose value was unseen in training
    (scored as missing)."""
    unseen_examples: UnseenExamples = field(default_factory=dict)
    """Per role, per categorical feature: up to five of those values."""

    def markdown(self) -> str:
        versions = ", ".join(f"v{v} ({role})" for v, role in self.models)
        lines = [
            f"# Nightly scoring {self.score_date}",
            "",
            (
                f"Models: {versions}. Subscribers in service: {self.subscribers:,}; "
                f"scored: {self.scored:,} in {self.shards} shard(s)."
            ),
            "",
            "| role | " + " | ".join(TIERS) + " |",
            "|---|" + "---:|" * len(TIERS),
            *(
                f"| {role} | " + " | ".join(f"{counts.get(t, 0):,}" for t in TIERS) + " |"
                for role, counts in self.tiers.items()
            ),
            "",
        ]
        if self.not_scored:
            lines += ["**Not scored:**", ""]
            lines += [
                f"- {reason}: {count:,} (e.g. {', '.join(map(str, self.not_scored_examples.get(reason, [])))})"
                for reason, count in self.not_scored.items()
            ]
            lines.append("")
        lines += unseen_markdown(
            self.unseen_categories,
            self.unseen_examples,
            {role: version for version, role in self.models},
            self.scored,
        )
        predicted = "; ".join(
            f"{role}: " + ", ".join(f"{name} ({count} shard(s))" for name, count in used.items())
            for role, used in self.predictors.items()
            if used
        )
        if predicted:
            lines += [f"Predicted by: {predicted}.", ""]
        lines += [
            f"High-risk file: `{self.high_risk_csv}` ({self.high_risk_rows:,} rows).",
            "",
            "Timings (s): "
            + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in self.timings.items()),
        ]
        return "\n".join(lines) + "\n"


def run_scoring(
    settings: Settings,
    day: date,
    *,
    map_shards: ShardMapper = in_process,
    flow_run_id: str | None = None,
) -> ScoreSummary:
    """Score every subscriber in service on ``day`` with the champion (and a shadow challenger).

    Raises:
        NoChampion: nothing to score with; nothing is written.
        ModelSignatureError, ModelLoadError: a model does not fit the feature service or won't load.
        SourceDataMissing: no source data for ``day``.
        DataContractError: scoring features break their contract; nothing is written.
    """
    began = time.perf_counter()
    timings: dict[str, float] = {}
    store = open_store(settings)
    reads = view_reads(settings, store)
    features = [c for r in reads for c in r.columns]
    models = resolve_models(settings, features)
    subscribers = active_subscribers(settings, day).column("subscriber_id")
    shards = plan_shards(subscribers, settings.score_shard_rows)
    ctx = ScoringContext(
        score_date=day,
        at=as_of_timestamp(day),
        reads=reads,
        models=models,
        capacity=settings.retention_capacity,
        medium_threshold=settings.risk_medium_threshold,
        high_threshold=settings.risk_high_threshold,
        reason_count=settings.reason_codes,
        threads=settings.model_threads,
    )
    timings["plan"] = time.perf_counter() - began
    scored_at = datetime.now(UTC)
    # A night that scores nobody still writes files whose features have the service's fields.
    features_type = pa.struct(
        [
            (name, FEAST_TO_ARROW[dtype])
            for r in reads
            for name, dtype in zip(r.columns, r.dtypes, strict=True)
        ]
    )
    not_scored: dict[str, int] = {}
    examples: dict[str, list[int]] = {}
    tiers = {m.role: dict.fromkeys(TIERS, 0) for m in models}
    predictors: dict[str, dict[str, int]] = {m.role: {} for m in models}
    candidates: list[pa.Table] = []
    unseen: UnseenCounts = {}
    unseen_examples: UnseenExamples = {}
    scored = 0
    stage_seconds: dict[str, float] = {}
    with ExitStack() as stack:
        writers = {
            m.role: stack.enter_context(
                PredictionLogWriter(
                    settings,
                    score_date=day,
                    model_name=m.name,
                    model_version=m.version,
                    role=m.role,
                    feature_service=settings.feature_service,
                    flow_run_id=flow_run_id,
                    scored_at=scored_at,
                    features_type=features_type,
                )
            )
            for m in models
        }
        for result in map_shards(ctx, shards):
            for role, batch in result.log_batches.items():
                writers[role].write(batch)
            scored += len(result.log_batches[CHAMPION]) + len(result.candidates)
            candidates.append(result.candidates)
            for reason, count in result.not_scored.items():
                not_scored[reason] = not_scored.get(reason, 0) + count
                examples.setdefault(reason, [])
                examples[reason] = (examples[reason] + result.not_scored_examples[reason])[:5]
            for role, counts in result.tiers.items():
                for tier, count in counts.items():
                    tiers[role][tier] += count
            add_unseen(unseen, unseen_examples, result.unseen, result.unseen_examples)
            for role, predictor in result.predictors.items():
                predictors[role][predictor] = predictors[role].get(predictor, 0) + 1
            for stage, seconds in result.seconds.items():
                stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
            logger.info("shard %d of %d scored", result.index + 1, len(shards))
        warn_unseen(unseen, unseen_examples, {m.role: m.version for m in models}, scored)
        # The night's top: explained once, then logged with the rows the shards held back.
        explain_began = time.perf_counter()
        champion = models[0]
        pool = (
            pa.concat_tables(candidates)
            if candidates
            else candidate_schema(features_type).empty_table()
        )
        explained = explain_candidates(
            champion, pool, settings.retention_capacity, settings.reason_codes
        )
        writers[CHAMPION].write(explained.select(list(BATCH_COLUMNS)))
        timings["reasons"] = time.perf_counter() - explain_began
        publish_began = time.perf_counter()
    # Leaving the block published every log file (or, on error, none).
    timings |= {f"shard {stage}": seconds for stage, seconds in stage_seconds.items()}
    timings["log publish"] = time.perf_counter() - publish_began
    rows = select_high_risk(
        explained,
        settings.retention_capacity,
        champion.version,
        day,
        settings.reason_codes,
    )
    rows = with_customer_keys(rows, settings.source_dir)
    csv_path, parquet_path = write_high_risk_file(settings, day, rows)
    timings["total"] = time.perf_counter() - began
    summary = ScoreSummary(
        score_date=day,
        models=[(m.version, m.role) for m in models],
        subscribers=len(subscribers),
        scored=scored,
        not_scored=not_scored,
        not_scored_examples=examples,
        tiers=tiers,
        high_risk_csv=csv_path,
        high_risk_parquet=parquet_path,
        high_risk_rows=len(rows),
        log_files=[str(w.path) for w in writers.values()],
        shards=len(shards),
        timings=timings,
        predictors=predictors,
        top=rows.slice(0, 10).to_pylist(),
        unseen_categories=unseen,
        unseen_examples=unseen_examples,
    )
    logger.info(
        "scored %s: %d of %d subscribers, %d in the high-risk file",
        day,
        scored,
        len(subscribers),
        len(rows),
    )
    return summary
