"""The champion's drift reference: what its training window looked like, saved per model version.

:func:`build_reference` bins each numeric feature (and the prediction) at quantile edges taken
from a bounded sample of the training window, and counts the bins and each category over the
whole window; :func:`save_reference` writes it under
``$CHURN_HOME/monitoring/reference/v<version>/`` when a version is registered and
:func:`load_reference` reads it back for monitoring (:class:`ReferenceNotFound` when a version
has none).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.errors import ChurnError
from tasks.core.files import atomic_dir
from tasks.core.settings import Settings

if TYPE_CHECKING:
    from tasks.monitoring.profiles import ProfileHandle

logger = logging.getLogger(__name__)

NUMERIC, CATEGORICAL, PREDICTION = "numeric", "categorical", "prediction"
PREDICTION_NAME = "prediction"
NULL_BIN, UNSEEN_BIN = "__null__", "__unseen__"
DEFAULT_BINS = 10
REFERENCE_FORMAT = 1


class DriftError(ChurnError):
    """Drift cannot be computed as asked (missing feature, empty day, bad reference)."""


class ReferenceNotFound(DriftError):
    """No drift reference was saved for a model version."""


# ----------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class FeatureReference:
    """One feature's reference distribution: bins and reference rows per bin.

    ``edges`` (numeric and prediction only) are the interior right-closed edges; ``bins`` has
    ``len(edges) + 1`` value bins then ``__null__`` (numeric), or the categories, ``__unseen__``
    and ``__null__`` (categorical).
    """

    name: str
    kind: str
    bins: tuple[str, ...]
    counts: tuple[int, ...]
    edges: tuple[float, ...] = ()

    @property
    def rows(self) -> int:
        return int(sum(self.counts))

    @property
    def shares(self) -> np.ndarray:
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / counts.sum() if counts.sum() else counts

    @property
    def categories(self) -> tuple[str, ...]:
        """The reference categories (categorical features only)."""
        return self.bins[:-2] if self.kind == CATEGORICAL else ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "bins": list(self.bins),
            "counts": list(self.counts),
            "edges": list(self.edges),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureReference:
        return cls(
            name=data["name"],
            kind=data["kind"],
            bins=tuple(data["bins"]),
            counts=tuple(int(c) for c in data["counts"]),
            edges=tuple(float(e) for e in data["edges"]),
        )


@dataclass(frozen=True, eq=False)
class Reference:
    """What a model version's days are compared with: its training window, binned and sampled.

    ``sample`` holds the numeric features' values of up to ``max_rows`` sampled rows (nulls
    kept, types as in the frame), ``prediction_sample`` up to as many reference probabilities; ``rows`` is the size of
    the frame the bins were counted on.
    """

    features: tuple[FeatureReference, ...]
    sample: pa.Table
    prediction: FeatureReference | None = None
    prediction_sample: np.ndarray = field(default_factory=lambda: np.empty(0))
    rows: int = 0
    seed: int = 0
    created_at: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> FeatureReference:
        for ref in self.features:
            if ref.name == name:
                return ref
        if name == PREDICTION_NAME and self.prediction is not None:
            return self.prediction
        raise KeyError(f"no reference for {name!r}; the reference has {', '.join(self.names)}")


def build_reference(
    frame: pa.Table,
    features: Sequence[str],
    categorical: Sequence[str],
    probabilities: np.ndarray | None = None,
    max_rows: int = 200_000,
    seed: int = 0,
    bins: int = DEFAULT_BINS,
) -> Reference:
    """The reference of a training window: bins and shares per feature, samples for KS.

    Args:
        frame: the window's features (e.g. the training frame), any number of rows.
        features: the model inputs to monitor, in order.
        categorical: which of them are categorical (the others are numeric).
        probabilities: the model's probabilities on the window (any length; None: no
            prediction reference).
        max_rows: rows kept in the samples (``settings.drift_reference_rows``).
        seed: seed of the samples.
        bins: quantile bins per numeric feature (fewer where values repeat).

    Raises:
        DriftError: a feature is missing from the frame, the frame is empty, or a categorical
            name is not among the features.
    """
    missing = [f for f in features if f not in frame.column_names]
    if missing:
        raise DriftError(f"the reference frame lacks feature(s) {', '.join(missing)}")
    stray = [c for c in categorical if c not in features]
    if stray:
        raise DriftError(f"categorical feature(s) {', '.join(stray)} are not among the features")
    if frame.num_rows == 0:
        raise DriftError("the reference frame is empty: nothing to compare days with")
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    rng = np.random.default_rng(seed)
    picked = _sample_rows(rng, frame.num_rows, max_rows)
    numeric = [f for f in features if f not in set(categorical)]
    sample = frame.select(numeric).take(picked) if picked is not None else frame.select(numeric)
    sample = sample.combine_chunks().replace_schema_metadata(None)
    references = []
    for name in features:
        if name in categorical:
            references.append(_categorical_reference(name, frame.column(name)))
        else:
            values = as_floats(frame.column(name))
            edges = quantile_edges(as_floats(sample.column(name)), bins)
            references.append(_numeric_reference(name, NUMERIC, values, edges))
    prediction, prediction_sample = None, np.empty(0)
    if probabilities is not None:
        p = np.asarray(probabilities, dtype=np.float64)
        if len(p) == 0:
            raise DriftError("no reference probabilities: pass None to skip the prediction row")
        chosen = _sample_rows(rng, len(p), max_rows)
        prediction_sample = p[chosen] if chosen is not None else p.copy()
        edges = quantile_edges(prediction_sample, bins)
        prediction = _numeric_reference(PREDICTION_NAME, PREDICTION, p, edges)
    return Reference(
        features=tuple(references),
        sample=sample,
        prediction=prediction,
        prediction_sample=prediction_sample,
        rows=frame.num_rows,
        seed=seed,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[float, ...]:
    """Interior right-closed bin edges on the quantiles of ``values`` (NaN ignored).

    Edges are values of the data (``inverted_cdf``), deduplicated; a value that is the quantile
    at two or more cut points (a point mass of at least one bin) also gets the float just below
    it as an edge, so it forms a bin ``= v`` of its own (unless no reference value lies between
    it and the edge below, where its bin holds it alone already). No non-null value: no edge.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return ()
    cuts = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    quantiles = np.quantile(values, cuts, method="inverted_cdf")
    unique, repeats = np.unique(quantiles, return_counts=True)
    edges = set(unique.tolist())
    below = -np.inf
    for value, count in zip(unique.tolist(), repeats.tolist(), strict=True):
        # Split (below, value] into (below, value) and {value} only where the reference has
        # values strictly in between: otherwise the bin already holds the point mass alone.
        if count > 1 and np.any((values > below) & (values < value)):
            edges.add(float(np.nextafter(value, -np.inf)))
        below = value
    return tuple(sorted(edges))


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Rows per bin of :func:`quantile_edges` (right-closed), then the nulls (NaN) as the last bin.

    Counted as ``count(values <= edge)`` per edge and differenced: with ~10 edges, one streaming
    comparison per edge is several times faster than a binary search per value (searchsorted)
    on a 10M-row day. NaN compares false with everything, so it falls out of every bin.
    """
    values = np.asarray(values, dtype=np.float64)
    nulls = int(np.count_nonzero(np.isnan(values)))
    present = len(values) - nulls
    at_most = [int(np.count_nonzero(values <= edge)) for edge in edges]
    counts = np.diff(np.array([0, *at_most, present], dtype=np.int64))
    return np.append(counts, nulls)


def bin_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """Readable labels of the bins of ``edges``: ``<= a``, ``(a, b]``, ``= v``, ``> z``, then null.

    Around a point-mass bin ``= v`` the neighbours read ``< v`` / ``(a, v)`` and ``(v, b]``.
    """
    if not edges:
        return ("all values", NULL_BIN)
    e = [float(x) for x in edges]
    k = len(e)

    def point(i: int) -> bool:  # bin i is (e[i-1], e[i]] with e[i-1] the float just below e[i]
        return 1 <= i <= k - 1 and float(np.nextafter(e[i], -np.inf)) == e[i - 1]

    labels = []
    for i in range(k + 1):
        if point(i):
            labels.append(f"= {_number(e[i])}")
        elif i == k:
            labels.append(f"> {_number(e[k - 1])}")
        else:
            upper = f"{_number(e[i + 1])})" if point(i + 1) else f"{_number(e[i])}]"
            if i == 0:
                labels.append(f"< {upper[:-1]}" if point(1) else f"<= {upper[:-1]}")
            else:
                labels.append(f"({_number(e[i - 1])}, {upper}")
    labels.append(NULL_BIN)
    return tuple(labels)


def _numeric_reference(
    name: str, kind: str, values: np.ndarray, edges: tuple[float, ...]
) -> FeatureReference:
    counts = bin_counts(values, edges)
    return FeatureReference(
        name=name,
        kind=kind,
        bins=bin_labels(edges),
        counts=tuple(int(c) for c in counts),
        edges=edges,
    )


def _categorical_reference(name: str, column: pa.ChunkedArray) -> FeatureReference:
    counts = category_counts(column)
    nulls = counts.pop(None, 0)
    categories = sorted(counts)
    return FeatureReference(
        name=name,
        kind=CATEGORICAL,
        bins=(*categories, UNSEEN_BIN, NULL_BIN),
        counts=(*(counts[c] for c in categories), 0, nulls),
    )


def category_counts(column: pa.ChunkedArray) -> dict[str | None, int]:
    """Rows per value (None: nulls) of a string-like column."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    counts: dict[str | None, int] = {}
    nulls = column.null_count
    if nulls:
        counts[None] = nulls
    if nulls < len(column):
        found = pc.value_counts(column.drop_null())
        for value, count in zip(
            found.field("values").to_pylist(), found.field("counts").to_pylist(), strict=True
        ):
            counts[value] = int(count)
    return counts


def as_floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric (or boolean) column as float64 with NaN for nulls."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (
        pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
        or pa.types.is_boolean(column.type)
        or pa.types.is_null(column.type)
    ):
        raise DriftError(f"numeric drift needs a numeric column, found {column.type}")
    return np.asarray(
        pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64
    )


def _sample_rows(rng: np.random.Generator, rows: int, max_rows: int) -> np.ndarray | None:
    """Sorted row indices of a uniform sample without replacement, or None when all rows fit."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    if rows <= max_rows:
        return None
    return np.sort(rng.choice(rows, size=max_rows, replace=False))


def _number(value: float) -> str:
    return f"{value:.4g}"


# ----------------------------------------------------------------------------- save / load


def reference_dir(settings: Settings, model_version: int) -> Path:
    """``$CHURN_HOME/monitoring/reference/v{version}``."""
    return settings.monitoring_dir / "reference" / f"v{int(model_version)}"


def reference_profile_path(settings: Settings, model_version: int) -> Path:
    """The whylogs profile saved beside a version's reference (if one was given)."""
    return reference_dir(settings, model_version) / "profile.bin"


def save_reference(
    settings: Settings,
    model_version: int,
    reference: Reference,
    profile: ProfileHandle | None = None,
) -> Path:
    """Write a model version's reference (and its whylogs profile) atomically; replaces an old one."""
    if int(model_version) < 1:
        raise ValueError(f"model_version must be a positive integer, got {model_version}")
    target = reference_dir(settings, model_version)
    meta = {
        "format": REFERENCE_FORMAT,
        "model_version": int(model_version),
        "rows": reference.rows,
        "seed": reference.seed,
        "created_at": reference.created_at,
        "features": [f.to_dict() for f in reference.features],
        "prediction": reference.prediction.to_dict() if reference.prediction else None,
    }
    with atomic_dir(target) as tmp:
        (tmp / "bins.json").write_text(json.dumps(meta, indent=1) + "\n")
        pq.write_table(reference.sample, tmp / "sample.parquet", compression="zstd")
        pq.write_table(
            pa.table({PREDICTION_NAME: pa.array(reference.prediction_sample, pa.float64())}),
            tmp / "prediction.parquet",
            compression="zstd",
        )
        if profile is not None:
            from tasks.monitoring.profiles import write_profile

            write_profile(profile, tmp / "profile.bin")
    logger.info("drift reference of version %s saved to %s", model_version, target)
    return target


def load_reference(settings: Settings, model_version: int) -> Reference:
    """The reference saved for ``model_version``.

    Raises:
        ReferenceNotFound: nothing was saved for that version (or the folder is incomplete).
    """
    directory = reference_dir(settings, model_version)
    needed = [directory / n for n in ("bins.json", "sample.parquet", "prediction.parquet")]
    absent = [p.name for p in needed if not p.is_file()]
    if absent:
        saved = (
            sorted(p.name for p in directory.parent.glob("v*")) if directory.parent.is_dir() else []
        )
        raise ReferenceNotFound(
            f"no drift reference for model version {model_version} at {directory} "
            f"(missing {', '.join(absent)}); one is saved when a version is trained "
            f"(tasks.monitoring.reference.save_reference). Saved versions: {', '.join(saved) or 'none'}"
        )
    meta = json.loads(needed[0].read_text())
    if meta.get("format") != REFERENCE_FORMAT:
        raise DriftError(
            f"reference of version {model_version} has format {meta.get('format')!r}; "
            f"this code reads format {REFERENCE_FORMAT}"
        )
    prediction = pq.read_table(needed[2]).column(PREDICTION_NAME)
    return Reference(
        features=tuple(FeatureReference.from_dict(f) for f in meta["features"]),
        sample=pq.read_table(needed[1]),
        prediction=FeatureReference.from_dict(meta["prediction"]) if meta["prediction"] else None,
        prediction_sample=prediction.to_numpy().astype(np.float64),
        rows=int(meta["rows"]),
        seed=int(meta["seed"]),
        created_at=str(meta.get("created_at", "")),
    )
