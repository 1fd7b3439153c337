"""Categorical values a model never saw in training: counted per shard, summed per night, reported.

A model knows the categories of its training slice (:attr:`ModelSpec.categories`); any other
value reaches its trees as missing (NaN), which is the right thing to score with but wrong to do
silently: a new plan name or a renamed channel would quietly shift probabilities. A shard counts
them per model and categorical feature (:func:`unseen_values`), the night adds the shards up
(:func:`add_unseen`), warns once per model and feature (:func:`warn_unseen`) and shows them in
its summary (:func:`unseen_markdown`). Nothing here ever fails the night.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from tasks.training.model_spec import ModelSpec

logger = logging.getLogger(__name__)

EXAMPLES = 5
"""Distinct unseen values kept per model and feature (values only, never subscriber ids)."""

UnseenCounts = dict[str, dict[str, int]]
"""Per model role, per categorical feature: subscribers whose value was unseen in training."""
UnseenExamples = dict[str, dict[str, list[str]]]
"""Per model role, per categorical feature: up to :data:`EXAMPLES` of those values."""


def unseen_values(frame: pa.Table, spec: ModelSpec) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Per categorical feature of ``spec``, rows of ``frame`` whose value is neither null nor
    among the training categories, and a few such values (features without any are left out).

    One vectorised ``is_in`` per categorical feature; the values are cast to string as
    :func:`tasks.scoring.compiled.model_matrix` casts them, so both agree on what is unseen.
    """
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for name in spec.categorical:
        if name not in frame.column_names:
            continue  # model_matrix names the missing input; this is only a report
        column = frame.column(name).cast(pa.string())
        known = pc.is_in(column, value_set=pa.array(spec.categories.get(name, []), pa.string()))
        # is_in says False for a null; only non-null values count as unseen.
        unseen = pc.and_(pc.is_valid(column), pc.invert(known))
        count = pc.sum(unseen).as_py() or 0
        if count:
            counts[name] = count
            distinct = pc.unique(column.filter(unseen))
            examples[name] = distinct.slice(0, EXAMPLES).to_pylist()
    return counts, examples


def add_unseen(
    counts: UnseenCounts,
    examples: UnseenExamples,
    more_counts: UnseenCounts,
    more_examples: UnseenExamples,
) -> None:
    """Add one shard's counts and examples to the night's (in place); examples stay distinct."""
    for role, features in more_counts.items():
        role_counts = counts.setdefault(role, {})
        role_examples = examples.setdefault(role, {})
        for feature, count in features.items():
            role_counts[feature] = role_counts.get(feature, 0) + count
            kept = role_examples.setdefault(feature, [])
            for value in more_examples.get(role, {}).get(feature, []):
                if len(kept) < EXAMPLES and value not in kept:
                    kept.append(value)


def warn_unseen(
    counts: UnseenCounts, examples: UnseenExamples, versions: dict[str, int], scored: int
) -> None:
    """One warning per model and feature with unseen values (the night's totals, not per shard)."""
    for role, features in counts.items():
        for feature, count in features.items():
            logger.warning(
                "%s v%s: %d of %d scored subscribers had a %s unseen in training (scored as "
                "missing), e.g. %s",
                role,
                versions.get(role, "?"),
                count,
                scored,
                feature,
                ", ".join(map(repr, examples.get(role, {}).get(feature, []))),
            )


def unseen_markdown(
    counts: UnseenCounts, examples: UnseenExamples, versions: dict[str, int], scored: int
) -> list[str]:
    """The summary's "Values unseen in training" section; no lines when there were none."""
    rows = [
        (role, feature, count)
        for role, features in counts.items()
        for feature, count in features.items()
        if count
    ]
    if not rows:
        return []
    lines = [
        "**Values unseen in training** (scored as missing):",
        "",
        "| model | feature | subscribers | share of scored | examples |",
        "|---|---|---:|---:|---|",
    ]
    for role, feature, count in rows:
        share = count / scored if scored else 0.0
        # A value is data: a "|" in it would end its table cell.
        said = ", ".join(
            "`" + str(v).replace("|", "\\|") + "`" for v in examples.get(role, {}).get(feature, [])
        )
        model = f"v{versions[role]} ({role})" if role in versions else role
        lines.append(f"| {model} | {feature} | {count:,} | {share:.2%} | {said} |")
    lines.append("")
    return lines
