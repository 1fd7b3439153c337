"""whylogs profiles of a day's model inputs and predictions: the one module that profiles with whylogs.

whylogs is unmaintained upstream; monitoring sees only :class:`ProfileHandle`,
:func:`profile_frame`, :func:`write_profile`, :func:`read_profile` and :func:`profile_summary`
(a plain Arrow table), so a replacement only has to take over this file and the data contracts'
value rules (``tasks/data/contract_values.py``, built on whylogs' constraints). Drift decisions never
read a whylogs sketch: :mod:`tasks.monitoring.drift` computes PSI, KS and chi-square itself (whylogs'
sketch-based KS p-values swing by orders of magnitude on the same data, whylogs#684).

Usage reporting is switched off (:func:`tasks.core.telemetry.disable_telemetry`) before whylogs is
first imported, and whylogs is imported lazily, inside the functions, never at module import.

How a frame is profiled, and why it is fast enough for a 10M-subscriber day:

* **Sample.** Frames above ``max_rows`` rows (default 250,000) are profiled on a seeded uniform
  sample of ``max_rows`` rows without replacement. Error bound (Dvoretzky–Kiefer–Wolfowitz): the
  sample's distribution function is within ``eps = sqrt(ln(2 / alpha) / (2 n))`` of the whole
  day's everywhere with probability ``1 - alpha``; at ``n`` = 250,000 and ``alpha`` = 1e-3 that
  is 0.0039 in rank (quantiles and frequent-item shares), inside the KLL sketch's own rank
  error (~0.5-1.3% for whylogs' k = 1024/256), so a larger sample buys little: the KLL update
  (~130 ns a value) is most of the cost. Means of the sample are within ~0.007 standard
  deviations (99.9%), but the summary's means are exact anyway (below). The
  distinct-count estimate of a sample is a lower bound for the day (values seen only outside the
  sample are missed): exact for the categorical features (a handful of values), not for
  high-cardinality floats. Row, null and mean figures of :func:`profile_summary` are exact: they
  are computed with pyarrow over the whole frame and stored in the profile's metadata.
* **Chunks.** The (sampled) rows are profiled ``chunk_rows`` at a time and the views merged, so
  memory follows the chunk, not the day.
* **No per-value Python.** whylogs 1.6.4 splits a pandas column with per-value ``apply`` calls
  (``np.isinf`` on every float: ~1 µs a value, 4 s per 1M-row float column here). Values are
  therefore given to whylogs without nulls, column by column, as a column declared
  ``homogeneous`` (numbers go straight to the sketches), and each column's nulls are tracked
  separately in a second profile that is merged in, so ``counts/n`` and ``counts/null`` stay
  whylogs' own. Strings use ``StringDtype("python")`` (whylogs' vectorised str path) and a type
  mapper that answers for it first (whylogs' own matcher touches ``np.unicode_``, gone in NumPy 2).

Reproducibility: the sample is seeded, but whylogs' KLL sketches compact with random coin flips,
so two profiles of the same rows agree in counts, nulls, min, max and mean, and their quantiles
agree within the sketch's rank error, not bit for bit.

Metrics per column: numbers ``counts``, ``types``, ``distribution`` (KLL quantiles, exact
min/max, mean) and ``cardinality`` (HyperLogLog); strings ``counts``, ``types``, ``cardinality``
and ``frequent_items``. Booleans are profiled as 0/1 integers, dates and timestamps as day numbers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.errors import ChurnError
from tasks.core.files import atomic_path
from tasks.core.settings import Settings
from tasks.core.telemetry import disable_telemetry

if TYPE_CHECKING:
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

logger = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 250_000
"""Rows profiled at most; larger frames are sampled (see the module docstring for the bound)."""
DEFAULT_CHUNK_ROWS = 250_000
PROFILE_SUFFIX = ".bin"
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
"""Quantiles in the summary table (from the KLL sketch)."""

_META_ROWS = "churn.rows"
_META_PROFILED = "churn.profiled_rows"
_META_SEED = "churn.seed"
_META_COLUMNS = "churn.columns"  # JSON list: the frame's column order (whylogs sorts by name)
_META_EXACT = "churn.exact."  # + column + ".nulls" / ".mean"
_NUMERIC_METRICS = ("counts", "types", "distribution", "cardinality")
_STRING_METRICS = ("counts", "types", "cardinality", "frequent_items")

SUMMARY_SCHEMA = pa.schema(
    [
        ("column", pa.string()),
        ("kind", pa.string()),
        ("rows", pa.int64()),
        ("nulls", pa.int64()),
        ("null_share", pa.float64()),
        ("mean", pa.float64()),
        ("min", pa.float64()),
        *[(_q, pa.float64()) for _q in (f"q{round(q * 100):02d}" for q in QUANTILES)],
        ("max", pa.float64()),
        ("distinct_estimate", pa.float64()),
        ("top_values", pa.string()),
        ("profiled_rows", pa.int64()),
    ]
)
"""One row per profiled column: exact rows/nulls/mean (pyarrow over the whole frame), quantiles,
min/max and distinct estimate from the whylogs sketches (of the sample, if sampled), the most
frequent values of a string column (``value (share)``, from the sketch)."""


class ProfileError(ChurnError):
    """A frame cannot be profiled as asked (unknown column, unsupported type)."""


@dataclass(frozen=True)
class ProfileHandle:
    """A whylogs profile of one frame, with what is needed to interpret it.

    ``rows`` is the frame's row count, ``profiled_rows`` how many rows the sketches saw (fewer
    when the frame was sampled); ``view`` is whylogs' ``DatasetProfileView`` (treat it as opaque
    outside this module).
    """

    view: DatasetProfileView
    rows: int
    profiled_rows: int
    columns: tuple[str, ...]

    @property
    def sampled(self) -> bool:
        return self.profiled_rows < self.rows

    def merge(self, other: ProfileHandle) -> ProfileHandle:
        """The profile of both frames together (e.g. shards profiled apart): sketches merge.

        The exact means and null counts of the summary are combined too; a merged profile is
        still exact in rows, nulls and mean.
        """
        exact = _merged_exact(self, other)
        view = _detached(self.view).merge(other.view)
        rows = self.rows + other.rows
        profiled = self.profiled_rows + other.profiled_rows
        columns = tuple(dict.fromkeys((*self.columns, *other.columns)))
        _set_metadata(view, rows, profiled, None, exact, columns)
        return ProfileHandle(view=view, rows=rows, profiled_rows=profiled, columns=columns)


def profile_path(settings: Settings, score_date: date, name: str) -> Path:
    """``$CHURN_HOME/monitoring/profiles/{score_date}/{name}.bin`` (e.g. name ``inputs``)."""
    return settings.monitoring_dir / "profiles" / score_date.isoformat() / f"{name}{PROFILE_SUFFIX}"


def profile_frame(
    table: pa.Table,
    columns: list[str] | tuple[str, ...] | None = None,
    *,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    seed: int = 0,
) -> ProfileHandle:
    """Profile ``columns`` of ``table`` (all columns when None) with whylogs.

    Args:
        max_rows: profile a seeded uniform sample of this many rows when the table is larger
            (None: every row). Rows, nulls and means in the summary stay exact.
        chunk_rows: rows handed to whylogs at a time; the chunk views are merged.
        seed: seed of the sample (same table, same seed: same profile).

    Raises:
        ProfileError: a column is missing or of a type that cannot be profiled.
    """
    disable_telemetry()  # before anything below imports whylogs
    started = time.perf_counter()
    names = tuple(columns) if columns is not None else tuple(table.column_names)
    missing = [c for c in names if c not in table.column_names]
    if missing:
        raise ProfileError(
            f"cannot profile column(s) {', '.join(missing)}: not in the frame "
            f"(columns: {', '.join(table.column_names[:12])})"
        )
    table = table.select(list(names))
    arrays = {name: _profilable(name, table.column(name)) for name in names}
    exact = {name: _exact_stats(array) for name, array in arrays.items()}
    rows = table.num_rows
    picked = _sample_indices(rows, max_rows, seed)
    profiled = rows if picked is None else len(picked)
    if picked is not None:
        arrays = {name: array.take(picked) for name, array in arrays.items()}
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")

    view = _empty_view(arrays)
    for offset in range(0, profiled, chunk_rows):
        chunk = {name: array.slice(offset, chunk_rows) for name, array in arrays.items()}
        view = view.merge(_profile_chunk(chunk))
    _set_metadata(view, rows, profiled, seed if picked is not None else None, exact, names)
    logger.info(
        "profiled %d column(s) of %d rows (%d profiled) in %.2fs",
        len(names),
        rows,
        profiled,
        time.perf_counter() - started,
    )
    return ProfileHandle(view=view, rows=rows, profiled_rows=profiled, columns=names)


def write_profile(handle: ProfileHandle, path: Path) -> Path:
    """Write the profile as whylogs' binary format, atomically (temp file, then rename)."""
    data = handle.view.serialize()
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def read_profile(path: Path) -> ProfileHandle:
    """Read a profile written by :func:`write_profile` (or any whylogs ``.bin`` profile).

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    disable_telemetry()
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no profile at {path}")
    view = DatasetProfileView.deserialize(path.read_bytes())
    meta = view.metadata or {}
    present = tuple(view.get_columns().keys())
    ordered = json.loads(meta[_META_COLUMNS]) if _META_COLUMNS in meta else []
    columns = tuple(c for c in ordered if c in present) + tuple(
        c for c in present if c not in ordered
    )
    rows = int(meta.get(_META_ROWS, 0)) or _whylogs_rows(view, columns)
    profiled = int(meta.get(_META_PROFILED, rows))
    return ProfileHandle(view=view, rows=rows, profiled_rows=profiled, columns=columns)


def profile_summary(handle: ProfileHandle) -> pa.Table:
    """Per column: rows, nulls, mean, quantiles, distinct estimate (see :data:`SUMMARY_SCHEMA`)."""
    meta = handle.view.metadata or {}
    records = []
    for name in handle.columns:
        column = handle.view.get_column(name)
        if column is None:
            continue
        counts = column.get_metric("counts")
        whylogs_n = int(counts.n.value) if counts is not None else 0
        whylogs_nulls = int(counts.null.value) if counts is not None else 0
        nulls = _meta_int(meta, f"{_META_EXACT}{name}.nulls")
        mean = _meta_float(meta, f"{_META_EXACT}{name}.mean")
        dist = column.get_metric("distribution")
        numeric = dist is not None
        record: dict[str, Any] = {
            "column": name,
            "kind": "numeric" if numeric else "categorical",
            "rows": handle.rows if nulls is not None else whylogs_n,
            "nulls": nulls if nulls is not None else whylogs_nulls,
            "profiled_rows": whylogs_n,
        }
        record["null_share"] = record["nulls"] / record["rows"] if record["rows"] else None
        quantiles: dict[str, float | None] = {}
        if numeric and not dist.kll.value.is_empty():
            values = dist.kll.value.get_quantiles(list(QUANTILES))
            quantiles = {
                f"q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, values, strict=True)
            }
            record |= {"min": float(dist.min), "max": float(dist.max)}
            record["mean"] = mean if mean is not None else float(dist.mean.value)
        record |= quantiles
        cardinality = column.get_metric("cardinality")
        if cardinality is not None and not cardinality.hll.value.is_empty():
            record["distinct_estimate"] = float(cardinality.hll.value.get_estimate())
        frequent = column.get_metric("frequent_items")
        if frequent is not None and whylogs_n:
            record["top_values"] = _top_values(frequent, whylogs_n - whylogs_nulls)
        records.append(record)
    return pa.Table.from_pylist(records, schema=SUMMARY_SCHEMA)


# ----------------------------------------------------------------------------- internals


def _profilable(name: str, array: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column as a type whylogs profiles fast: numbers, strings, 0/1, day numbers."""
    t = array.type
    if pa.types.is_dictionary(t):
        array, t = array.cast(t.value_type), t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t):
        return array
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return array.cast(pa.string())
    if pa.types.is_boolean(t):
        return array.cast(pa.int8())
    if pa.types.is_timestamp(t):
        return array.cast(pa.timestamp(t.unit)).cast(pa.date32()).cast(pa.int32())
    if pa.types.is_date(t):
        return array.cast(pa.date32()).cast(pa.int32())
    if pa.types.is_null(t):
        return array.cast(pa.float64())
    raise ProfileError(f"cannot profile column {name} of type {t}")


def _is_string(array: pa.ChunkedArray) -> bool:
    return pa.types.is_string(array.type)


def _exact_stats(array: pa.ChunkedArray) -> dict[str, float | int | None]:
    """Null count (NaN counted as null, as whylogs does) and mean over every row, with pyarrow."""
    nulls = array.null_count
    mean = None
    if pa.types.is_floating(array.type):
        nulls += int(pc.sum(pc.is_nan(array)).as_py() or 0)
        mean = pc.mean(pc.if_else(pc.is_nan(array), None, array)).as_py()
    elif pa.types.is_integer(array.type):
        mean = pc.mean(array).as_py()
    return {"nulls": nulls, "mean": mean}


def _sample_indices(rows: int, max_rows: int | None, seed: int) -> np.ndarray | None:
    """Sorted row indices of a uniform sample without replacement, or None for every row."""
    if max_rows is None or rows <= max_rows:
        return None
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=max_rows, replace=False))


def _schemas(arrays: dict[str, pa.ChunkedArray]) -> tuple[Any, Any]:
    """Two schemas with the same metrics: values as homogeneous columns, and nulls."""
    disable_telemetry()
    from whylogs.core.metrics import StandardMetric
    from whylogs.core.preprocessing import ColumnProperties
    from whylogs.core.resolvers import MetricSpec, ResolverSpec
    from whylogs.core.schema import DeclarativeSchema as Schema

    resolvers, values, nulls = [], {}, {}
    for name, array in arrays.items():
        string = _is_string(array)
        metrics = _STRING_METRICS if string else _NUMERIC_METRICS
        resolvers.append(
            ResolverSpec(
                column_name=name,
                metrics=[MetricSpec(getattr(StandardMetric, m).value) for m in metrics],
            )
        )
        dtype = _pandas_dtype(array)
        values[name] = (dtype, ColumnProperties.homogeneous)
        nulls[name] = dtype
    mapper = _type_mapper()
    return (
        Schema(resolvers, types=values, type_mapper=mapper),
        Schema(list(resolvers), types=nulls, type_mapper=mapper),
    )


def _pandas_dtype(array: pa.ChunkedArray) -> Any:
    if _is_string(array):
        return pd.StringDtype("python")
    return np.dtype(np.float64) if pa.types.is_floating(array.type) else np.dtype(np.int64)


def _empty_view(arrays: dict[str, pa.ChunkedArray]) -> DatasetProfileView:
    """A view with every column and no values (so a zero-row frame still has its columns)."""
    from whylogs.core import DatasetProfile

    values_schema, _ = _schemas(arrays)
    return DatasetProfile(values_schema).view()


def _profile_chunk(chunk: dict[str, pa.ChunkedArray]) -> DatasetProfileView:
    """One chunk: non-null values column by column (homogeneous), then the nulls, merged."""
    from whylogs.core import DatasetProfile

    values_schema, nulls_schema = _schemas(chunk)
    values, nulls = DatasetProfile(values_schema), DatasetProfile(nulls_schema)
    any_nulls = False
    for name, array in chunk.items():
        valid = array
        if pa.types.is_floating(array.type):
            valid = pc.if_else(pc.is_nan(array), None, array)
        missing = valid.null_count
        if missing < len(valid):
            series = _series(valid.drop_null())
            values.track(pandas=pd.DataFrame({name: series}))
        if missing:
            # Only the nulls go through whylogs' per-value path: it counts them (n, null, nan).
            # NaN for float columns (whylogs counts them as null and NaN), None otherwise.
            if pa.types.is_floating(array.type):
                filler = pd.Series(np.full(missing, np.nan))
            else:
                filler = pd.Series([None] * missing, dtype=object)
            frame = pd.DataFrame({name: filler})
            nulls.track(pandas=frame)
            any_nulls = True
    view = values.view()
    return view.merge(nulls.view()) if any_nulls else view


def _series(array: pa.ChunkedArray) -> pd.Series:
    """Non-null values as a pandas series with a fresh RangeIndex (whylogs reads ``series[0]``)."""
    if _is_string(array):
        return array.to_pandas(types_mapper={pa.string(): pd.StringDtype("python")}.get)
    dtype = np.float64 if pa.types.is_floating(array.type) else np.int64
    return pd.Series(array.to_numpy().astype(dtype, copy=False))


@lru_cache(maxsize=1)
def _type_mapper() -> Any:
    """whylogs' StandardTypeMapper, answering for pandas string dtypes first.

    whylogs 1.6.4's ``String`` matcher evaluates ``np.unicode_``, which NumPy 2 removed, for any
    dtype that is not numeric or object: a ``StringDtype`` column would raise AttributeError.
    """
    disable_telemetry()
    from whylogs.core.datatypes import StandardTypeMapper, String

    class _StringDtypeFirst(StandardTypeMapper):
        def __call__(self, dtype_or_type: Any) -> Any:
            if isinstance(dtype_or_type, pd.StringDtype):
                return String()
            return super().__call__(dtype_or_type)

    return _StringDtypeFirst()


def _set_metadata(
    view: DatasetProfileView,
    rows: int,
    profiled: int,
    seed: int | None,
    exact: dict[str, dict[str, float | int | None]],
    columns: tuple[str, ...],
) -> None:
    meta = view.metadata
    meta[_META_ROWS] = str(rows)
    meta[_META_PROFILED] = str(profiled)
    meta[_META_COLUMNS] = json.dumps(list(columns))
    if seed is not None:
        meta[_META_SEED] = str(seed)
    for name, stats in exact.items():
        for key, value in stats.items():
            meta[f"{_META_EXACT}{name}.{key}"] = "" if value is None else repr(value)


def _merged_exact(a: ProfileHandle, b: ProfileHandle) -> dict[str, dict[str, float | int | None]]:
    """Exact nulls and means of two profiles combined (means weighted by non-null rows)."""
    ma, mb = a.view.metadata or {}, b.view.metadata or {}
    merged: dict[str, dict[str, float | int | None]] = {}
    for name in dict.fromkeys((*a.columns, *b.columns)):
        parts = []
        for handle, meta in ((a, ma), (b, mb)):
            if name in handle.columns:
                nulls = _meta_int(meta, f"{_META_EXACT}{name}.nulls")
                mean = _meta_float(meta, f"{_META_EXACT}{name}.mean")
                parts.append((handle.rows, nulls, mean))
        if any(nulls is None for _, nulls, _ in parts):
            continue
        total_nulls = sum(nulls for _, nulls, _ in parts)
        weights = [(rows - nulls, mean) for rows, nulls, mean in parts if mean is not None]
        weight = sum(w for w, _ in weights)
        mean = sum(w * m for w, m in weights) / weight if weight else None
        merged[name] = {"nulls": total_nulls, "mean": mean}
    return merged


def _meta_int(meta: dict[str, str], key: str) -> int | None:
    value = meta.get(key)
    return int(value) if value not in (None, "") else None


def _meta_float(meta: dict[str, str], key: str) -> float | None:
    value = meta.get(key)
    if value in (None, ""):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _detached(view: DatasetProfileView) -> DatasetProfileView:
    """The same view with its own metadata dict: whylogs' ``merge`` updates the left one in place."""
    from whylogs.core.view.dataset_profile_view import DatasetProfileView

    return DatasetProfileView(
        columns=view.get_columns(),
        dataset_timestamp=view.dataset_timestamp,
        creation_timestamp=view.creation_timestamp,
        metadata=dict(view.metadata or {}),
    )


def _whylogs_rows(view: DatasetProfileView, columns: tuple[str, ...]) -> int:
    """Rows of a profile without our metadata: the largest ``counts/n`` of its columns."""
    counts = [view.get_column(c).get_metric("counts") for c in columns]
    return max((int(c.n.value) for c in counts if c is not None), default=0)


def _top_values(frequent: Any, non_null: int, top: int = 5) -> str:
    """``value (share)`` of the most frequent strings, from the frequent-items sketch."""
    items = frequent.to_summary_dict().get("frequent_strings") or []
    shown = []
    for item in items[:top]:
        share = item.est / non_null if non_null else 0.0
        shown.append(f"{item.value} ({share:.1%})")
    return ", ".join(shown)
