"""Nightly scoring as plain functions (DESIGN §5, §7): features of every subscriber in service
through the bulk path, shard by shard, probabilities, tiers, reasons, log rows.

Shards are contiguous ranges of subscriber ids (``score_shard_rows`` each). Feature partitions are
sorted by subscriber id, so a shard's read touches only its own row groups; hash shards would
each read every row group. Each shard is independent of the others (a Dask worker can score it),
returns the prediction-log rows of every model and the champion's top candidates for the
high-risk file, and holds only its own rows: peak memory follows the shard size.

Which subscribers get reason codes: exactly the high-risk file's, the night's top
``retention_capacity`` by revenue at risk. A shard cannot know the night's cut, so it holds its
own top ``retention_capacity`` back from its log batch as candidates (a superset of its members
in the file); once every shard is in, :func:`explain_candidates` explains the night's top from
those, and the held-back rows are logged with their reasons. SHAP contributions cost ~150 plain
predictions per row, so that is ``capacity`` rows a night, whatever the number of shards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from tasks.audit.log_schema import CHAMPION
from tasks.core.errors import ContractViolation, DataContractError
from tasks.features.frames import ViewRead, features_from, present_column
from tasks.scoring.compiled import (
    model_matrix,
)
from tasks.scoring.models import ScoringModel
from tasks.scoring.reasons import top_reasons
from tasks.scoring.unseen import UnseenCounts, UnseenExamples, unseen_values
from tasks.training.model_spec import ModelSpec, model_inputs

CHARGE = "monthly_charge"
TIERS = ("low", "medium", "high")


def candidate_schema(features_type: pa.DataType) -> pa.Schema:
    """A shard's candidates for the high-risk file: its top rows by revenue at risk, with the
    feature values the champion saw (to explain the ones that make the file, and to log them)."""
    return pa.schema(
        [
            ("subscriber_id", pa.int64()),
            ("probability", pa.float64()),
            ("risk_tier", pa.string()),
            (CHARGE, pa.float64()),
            ("revenue_at_risk", pa.float64()),
            ("features", features_type),
        ]
    )


# ----------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """A contiguous, ascending slice of the subscribers in service."""

    index: int
    subscriber_ids: pa.Array

    @property
    def id_range(self) -> tuple[int, int]:
        return int(self.subscriber_ids[0].as_py()), int(self.subscriber_ids[-1].as_py())


def plan_shards(subscriber_ids: pa.Array | pa.ChunkedArray, shard_rows: int) -> list[Shard]:
    """Cut the subscriber ids (distinct, sorted here) into shards of at most ``shard_rows``."""
    if isinstance(subscriber_ids, pa.ChunkedArray):
        subscriber_ids = subscriber_ids.combine_chunks()
    ids = subscriber_ids.to_numpy(zero_copy_only=False)
    if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
        # The usual input (subscribers in service, ordered by id): one pass, no copy kept.
        ordered = subscriber_ids
    else:
        distinct = pc.unique(subscriber_ids)
        ordered = distinct.take(pc.sort_indices(distinct))
    return [
        Shard(i, ordered.slice(start, shard_rows))
        for i, start in enumerate(range(0, len(ordered), shard_rows))
    ]


@dataclass(frozen=True)
class ScoringContext:
    """What every shard needs; plain data, so it travels to Dask workers as is."""

    score_date: date
    at: datetime
    reads: list[ViewRead]
    models: list[ScoringModel]
    capacity: int
    medium_threshold: float
    high_threshold: float
    reason_count: int
    threads: int = 2
    """Threads of each model's predict (``model_threads``)."""

    @property
    def features(self) -> list[str]:
        return [c for r in self.reads for c in r.columns]


@dataclass
class ShardResult:
    """One shard scored: log rows per role, the champion's candidates, and what was not scored."""

    index: int
    subscribers: int
    log_batches: dict[str, pa.Table]
    candidates: pa.Table
    not_scored: dict[str, int] = field(default_factory=dict)
    not_scored_examples: dict[str, list[int]] = field(default_factory=dict)
    tiers: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    predictors: dict[str, str] = field(default_factory=dict)
    """Per role, what computed the probabilities (``compiled``, ``lightgbm``, or why not compiled)."""
    unseen: UnseenCounts = field(default_factory=dict)
    """Per role and categorical feature, scored subscribers whose value was unseen in training."""
    unseen_examples: UnseenExamples = field(default_factory=dict)
    """Per role and categorical feature, up to five of those values."""


def risk_tiers(p: np.ndarray, medium: float, high: float) -> pa.Array:
    """``high`` from ``high``, ``medium`` from ``medium``, else ``low`` (thresholds inclusive)."""
    codes = (p >= medium).astype(np.int8) + (p >= high).astype(np.int8)
    return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(TIERS)).cast(pa.string())


def check_scoring_features(frame: pa.Table, reads: list[ViewRead]) -> None:
    """The feature values of present views obey their contracts (range, allowed values, nulls).

    Raises:
        DataContractError: naming every broken (column, rule) with its row count.
    """
    df = pl.from_arrow(frame)
    violations: list[ContractViolation] = []
    for read in reads:
        present = pl.col(present_column(read.name))
        by_name = {c.name: c for c in read.contract.columns}
        rules: list[tuple[str, str, pl.Expr]] = []
        for name in read.columns:
            column = by_name.get(name)
            if column is None:
                continue
            value = pl.col(name)
            if not column.nullable:
                rules.append((name, "not null", present & value.is_null()))
            if column.min is not None:
                rules.append((name, f">= {column.min:g}", value < column.min))
            if column.max is not None:
                rules.append((name, f"<= {column.max:g}", value > column.max))
            if column.allowed is not None:
                rules.append(
                    (
                        name,
                        f"in {{{', '.join(column.allowed)}}}",
                        value.is_not_null() & ~value.is_in(list(column.allowed)),
                    )
                )
        if not rules:
            continue
        counts = df.select(
            expr.fill_null(False).sum().alias(str(i)) for i, (_, _, expr) in enumerate(rules)
        ).row(0)
        for (name, rule, _), count in zip(rules, counts, strict=True):
            if count:
                violations.append(ContractViolation(read.name, name, rule, int(count)))
    if violations:
        raise DataContractError("scoring features", violations)


def encode_features(frame: pa.Table, features: list[str]) -> pa.StructArray:
    """Per row, the feature values the model saw, as one typed struct (the log's ``features``).

    A struct keeps each value's type and costs nothing to build (the columns are shared, not
    copied); in Parquet every field is a column of its own, so the log stays small and auditors
    query ``features.support_calls_30d`` directly.
    """
    struct = frame.select(features).to_struct_array()
    return struct.combine_chunks() if isinstance(struct, pa.ChunkedArray) else struct


def score_shard(ctx: ScoringContext, shard: Shard) -> ShardResult:
    """Score one shard with every model; see the module docstring for what comes back."""
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = seconds.get(stage, 0.0) + now - clock
        clock = now

    frame = features_from(
        ctx.reads,
        ctx.at,
        pa.table({"subscriber_id": shard.subscriber_ids}),
        id_range=shard.id_range,
        mark_present=True,
    )
    lap("features")
    check_scoring_features(frame, ctx.reads)
    not_scored, examples, keep = _missing_views(frame, ctx.reads)
    scored = frame.filter(keep) if keep is not None else frame
    encoded = encode_features(scored, ctx.features)
    lap("contract + encode")
    ids = scored.column("subscriber_id").combine_chunks()
    charge = scored.column(CHARGE).to_numpy(zero_copy_only=False).astype(np.float64)
    batches: dict[str, pa.Table] = {}
    tiers: dict[str, dict[str, int]] = {}
    predictors: dict[str, str] = {}
    candidates = candidate_schema(encoded.type).empty_table()
    unseen: UnseenCounts = {}
    unseen_examples: UnseenExamples = {}
    prepared: list[tuple[ModelSpec, np.ndarray, tuple[dict[str, int], dict[str, list[str]]]]] = []
    for model in ctx.models:
        # A shadow with the champion's spec shares its matrix and its unseen values.
        same = next((entry for entry in prepared if entry[0] == model.spec), None)
        if same is None:
            same = (model.spec, model_matrix(scored, model.spec), unseen_values(scored, model.spec))
            prepared.append(same)
        _, matrix, (counts, values) = same
        if counts:
            unseen[model.role] = dict(counts)
            unseen_examples[model.role] = {f: list(v) for f, v in values.items()}
        p, predictors[model.role] = model.predict(matrix, ctx.threads)
        lap("predict")
        tier = risk_tiers(p, ctx.medium_threshold, ctx.high_threshold)
        batch = pa.table(
            {
                "subscriber_id": ids,
                "probability": pa.array(p, pa.float64()),
                "risk_tier": tier,
                "reasons": pa.nulls(len(p), pa.list_(pa.string())),
                "features": encoded,
            }
        )
        if model.role == CHAMPION:
            # The shard's top rows are held back from its log batch: they are logged with the
            # night's reasons once every shard is in (see explain_candidates).
            top = rank_by_revenue(p * charge, p, ids.to_numpy(), ctx.capacity)
            candidates = _candidates(batch, charge, top)
            held = np.zeros(len(p), dtype=bool)
            held[top] = True
            batch = batch.filter(pa.array(~held))
        batches[model.role] = batch
        counts = pc.value_counts(tier).to_pylist()
        tiers[model.role] = {t: 0 for t in TIERS} | {c["values"]: c["counts"] for c in counts}
    return ShardResult(
        index=shard.index,
        subscribers=len(shard.subscriber_ids),
        log_batches=batches,
        candidates=candidates,
        not_scored=not_scored,
        not_scored_examples=examples,
        tiers=tiers,
        seconds=seconds,
        predictors=predictors,
        unseen=unseen,
        unseen_examples=unseen_examples,
    )


def _missing_views(
    frame: pa.Table, reads: list[ViewRead]
) -> tuple[dict[str, int], dict[str, list[int]], pa.Array | None]:
    """Counts (and a few ids) of subscribers lacking a view within its TTL, and the keep mask."""
    keep = None
    not_scored: dict[str, int] = {}
    examples: dict[str, list[int]] = {}
    for read in reads:
        present = frame.column(present_column(read.name))
        absent = pc.invert(present)
        # Each subscriber is counted once, under the first view it lacks.
        if keep is not None:
            absent = pc.and_(absent, keep)
        count = pc.sum(absent).as_py() or 0
        if count:
            ttl = f"{read.ttl}" if read.ttl is not None else "no TTL"
            reason = f"no {read.name} features within TTL ({ttl})"
            not_scored[reason] = count
            examples[reason] = frame.filter(absent).column("subscriber_id")[:5].to_pylist()
        keep = present if keep is None else pc.and_(keep, present)
    if keep is not None and not not_scored:
        keep = None
    return not_scored, examples, keep


def _candidates(batch: pa.Table, charge: np.ndarray, top: np.ndarray) -> pa.Table:
    rows = pa.array(top, pa.int64())
    picked = batch.take(rows)
    p = picked.column("probability").to_numpy()
    return pa.table(
        {
            "subscriber_id": picked.column("subscriber_id"),
            "probability": picked.column("probability"),
            "risk_tier": picked.column("risk_tier"),
            CHARGE: pa.array(charge[top], pa.float64()),
            "revenue_at_risk": pa.array(p * charge[top], pa.float64()),
            "features": picked.column("features"),
        },
        schema=candidate_schema(batch.schema.field("features").type),
    )


def explain_candidates(
    model: ScoringModel, candidates: pa.Table, capacity: int, reason_count: int
) -> pa.Table:
    """``candidates`` with a ``reasons`` column: the reasons of the night's top ``capacity`` by
    revenue at risk (the high-risk file's subscribers), null for the others.

    Every shard holds back its own top ``capacity`` (it cannot know the night's cut), so the
    night's top is among them. SHAP contributions cost ~150 plain predictions a row: explaining
    the file's rows once, rather than each shard's top, is ``capacity`` rows instead of
    ``capacity`` × shards. They come from the booster itself, on pandas inputs, so values read
    as words ("on the premium plan"), not category codes.
    """
    p = candidates.column("probability").to_numpy()
    top = rank_by_revenue(
        candidates.column("revenue_at_risk").to_numpy(),
        p,
        candidates.column("subscriber_id").to_numpy(),
        capacity,
    )
    said: list[list[str] | None] = [None] * len(p)
    if len(top):
        chosen = candidates.column("features").take(pa.array(top, pa.int64())).combine_chunks()
        features = pa.Table.from_batches([pa.RecordBatch.from_struct_array(chosen)])
        reasons = top_reasons(model.booster, model_inputs(features, model.spec), reason_count)
        for row, reason in zip(top, reasons, strict=True):
            said[row] = reason
    return candidates.append_column("reasons", pa.array(said, pa.list_(pa.string())))


def rank_by_revenue(
    revenue: np.ndarray, probability: np.ndarray, ids: np.ndarray, k: int
) -> np.ndarray:
    """Row positions of the top ``k`` by revenue at risk, then probability, then lowest id."""
    if len(revenue) == 0 or k <= 0:
        return np.empty(0, dtype=np.int64)
    rows = np.arange(len(revenue))
    if k < len(revenue):
        # Only rows at or above the k-th largest revenue can make the top k (ties at the cut
        # included): sort those, not the whole shard. A NaN revenue (no charge) ranks last.
        ranked = np.where(np.isnan(revenue), -np.inf, revenue)
        cut = np.partition(ranked, len(ranked) - k)[len(ranked) - k]
        rows = np.flatnonzero(ranked >= cut)
    # lexsort sorts by the last key first; negate to get descending revenue and probability.
    order = rows[np.lexsort((ids[rows], -probability[rows], -revenue[rows]))]
    return order[:k].astype(np.int64)
