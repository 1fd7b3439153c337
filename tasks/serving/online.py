"""Real-time scoring (issue 7): the champion over the Feast online store, one subscriber at a time.

Plain logic, no web framework (``flows/serve.py`` puts FastAPI in front of :class:`OnlineService`):

* :class:`OnlineFeatureReader`: one subscriber's features of the feature service from Feast's
  online store (SQLite, loaded nightly by ``tasks.features.tables.materialize_online``), with each
  view's event timestamp, in one SQL statement per request (see there for why and the numbers).
  The views are resolved once, when the service starts.
* :class:`ChampionModel`: the champion's booster with its input spec, turned into a one-row
  float64 matrix directly: the values LightGBM builds from ``tasks.training.train.model_inputs`` (numeric
  features as float32, categories as their code in the booster's ``pandas_categorical``), so a
  probability is bit for bit the batch path's, in 30 µs instead of milliseconds of pandas.
  Reasons are ``tasks.scoring.reasons.top_reasons`` on the same row (SHAP contributions, plain words).
* The operating threshold (the will-churn flag) is the champion's holdout
  ``operating_threshold`` metric, logged on its MLflow run by retraining: the probability of the
  ``retention_capacity``-th subscriber of a holdout day, averaged over the holdout days. A
  version without it falls back to ``risk_high_threshold`` and says so (``threshold_source``).
* :class:`OnlineService`: reads, scores, flags stale features, buffers every prediction for the
  log (:class:`OnlineLog`, role ``online``) and swaps in a new champion when the alias moves
  (:meth:`OnlineService.check_champion`, called by a background thread). A request takes the
  current model once (one reference, replaced whole), so one that is in flight finishes with the
  model it started with.

Freshness: each view's event timestamp against the clock and the view's TTL. Features older
than the TTL are still scored, with ``stale: true`` and the stale views named, never silently.
A subscriber the store does not hold is :class:`UnknownSubscriber`.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from itertools import accumulate
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import lightgbm as lgb
import numpy as np
import pyarrow as pa
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import compute_table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from pydantic import BaseModel, ConfigDict, Field, create_model

from tasks.audit.ledger import LedgerEntry
from tasks.audit.log_schema import ONLINE_BATCH_COLUMNS
from tasks.audit.online_log import online_prediction_id, publish_online_batch
from tasks.core.errors import ChurnError, FeatureStoreError
from tasks.core.settings import Settings
from tasks.features.frames import ViewRead, view_reads
from tasks.features.store import feature_service, open_store, service_views
from tasks.scoring.reasons import reason_text
from tasks.scoring.shards import NoChampion, check_signature
from tasks.training.registry import CHAMPION, ModelVersionInfo, current_alias, load_model
from tasks.training.train import ModelSpec

logger = logging.getLogger(__name__)

THRESHOLD_METRIC = "operating_threshold"
"""The champion's MLflow run metric used as the will-churn threshold (see the module docstring)."""

ENDPOINTS = ("/predict", "/predict/features", "/health", "/metrics")
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class OnlineError(ChurnError):
    """A request the endpoint cannot answer with a score."""


class UnknownSubscriber(OnlineError):
    """The online store holds no features for the subscriber (or only some of its views)."""


class OnlineStoreUnavailable(OnlineError):
    """The online store cannot be read (never materialized, locked, missing)."""


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- features


@dataclass(frozen=True)
class OnlineFeatures:
    """One subscriber's feature values as the online store holds them.

    ``values``: feature → Python value (None: null); ``event_timestamps``: view → the event time
    of the row the store holds (None: the store has no row of that view for the subscriber).
    """

    subscriber_id: int
    values: dict[str, Any]
    event_timestamps: dict[str, datetime | None]


@dataclass(frozen=True)
class Freshness:
    """How old the features behind a prediction are.

    ``as_of`` is the oldest view's event time (the features are at least that recent);
    ``stale_views`` are the views older than their TTL at ``checked_at``.
    """

    source: Literal["online_store", "request"]
    checked_at: datetime
    as_of: datetime | None = None
    event_timestamps: dict[str, datetime] = field(default_factory=dict)
    stale_views: tuple[str, ...] = ()

    @property
    def stale(self) -> bool:
        return bool(self.stale_views)

    @property
    def age_seconds(self) -> float | None:
        if self.as_of is None:
            return None
        return (self.checked_at - self.as_of).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "as_of": _iso(self.as_of),
            "age_seconds": self.age_seconds,
            "stale": self.stale,
            "stale_views": list(self.stale_views),
            "event_timestamps": {v: _iso(t) for v, t in self.event_timestamps.items()},
        }


def freshness(
    reads: list[ViewRead], event_timestamps: Mapping[str, datetime | None], now: datetime
) -> Freshness:
    """Each view's event time against ``now`` and the view's TTL (views without TTL never go stale)."""
    stamps = {r.name: event_timestamps[r.name] for r in reads if event_timestamps.get(r.name)}
    stale = tuple(
        r.name
        for r in reads
        if r.ttl is not None and r.name in stamps and now - stamps[r.name] > r.ttl
    )
    return Freshness(
        source="online_store",
        checked_at=now,
        as_of=min(stamps.values()) if stamps else None,
        event_timestamps=stamps,  # type: ignore[arg-type]
        stale_views=stale,
    )


class OnlineFeatureReader:
    """Reads one subscriber's features of the feature service from Feast's SQLite online store.

    One SQL statement per request over the service's view tables, in Feast's own layout: the
    table names (``compute_table_id``) and the entity key bytes (``serialize_entity_key``) come
    from Feast, the values are Feast ``Value`` protos. Measured on the 3,000-subscriber world
    (five views, 31 features), median per read: 62 µs, against 136 µs for Feast's
    ``online_read`` view by view and 344 µs for ``FeatureStore.get_online_features`` (which also
    re-reads the registry inside a request when its cache expires). Event times are the UTC
    instants Feast stored (epoch seconds; Feast's own SQLite reader turns them into local time
    labelled UTC). A test holds the values to ``get_online_features``.
    """

    def __init__(self, store: FeatureStore, settings: Settings) -> None:
        service = feature_service(store, settings.feature_service)
        self._views: list[tuple[FeatureView, list[str]]] = service_views(store, service)
        config = store.config
        kind = config.online_store.type
        if kind != "sqlite" and not str(kind).endswith("SqliteOnlineStore"):
            raise FeatureStoreError(
                f"the online endpoint reads Feast's SQLite online store; this repo's is {kind!r}"
            )
        path = Path(config.online_store.path)
        if not path.is_absolute() and config.repo_path is not None:
            path = Path(config.repo_path) / path
        self.path = path.resolve()
        self._key_version = config.entity_key_serialization_version
        versioned = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        tables = [compute_table_id(config.project, view, versioned) for view, _ in self._views]
        self._sql = " UNION ALL ".join(
            f"SELECT {i}, feature_name, value, event_ts FROM {_quoted(t)} WHERE entity_key = ?1"
            for i, t in enumerate(tables)
        )
        self._wanted = [set(names) for _, names in self._views]
        self._connection: sqlite3.Connection | None = None
        self.join_key = "subscriber_id"

    @property
    def views(self) -> list[str]:
        return [view.name for view, _ in self._views]

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # Read-only: a missing store is an error here, never an empty file created in passing.
            # Materialization writes in batches; a read waits up to 2 s for a batch to commit.
            self._connection = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro", uri=True, timeout=2.0, check_same_thread=False
            )
        return self._connection

    def read(self, subscriber_id: int) -> OnlineFeatures:
        """The store's values and event times of ``subscriber_id``, view by view.

        Raises:
            UnknownSubscriber: no view holds the subscriber, or only some views do.
            OnlineStoreUnavailable: the store cannot be read.
        """
        key = serialize_entity_key(
            EntityKey(join_keys=[self.join_key], entity_values=[Value(int64_val=subscriber_id)]),
            entity_key_serialization_version=self._key_version,
        )
        try:
            rows = self._connect().execute(self._sql, (key,)).fetchall()
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(
                f"the online store {self.path} cannot be read ({exc}): has it been materialized? "
                "run `churn features materialize --date D`"
            ) from exc
        found: dict[str, Any] = {}
        epochs: list[int | None] = [None] * len(self._views)
        for view, name, blob, epoch in rows:
            if name in self._wanted[view]:
                found[name] = _python_value(Value.FromString(blob))
                epochs[view] = epoch if epochs[view] is None else max(epochs[view], epoch)
        stamps = {
            view.name: None if epoch is None else datetime.fromtimestamp(int(epoch), UTC)
            for (view, _), epoch in zip(self._views, epochs, strict=True)
        }
        missing = [name for name, ts in stamps.items() if ts is None]
        if len(missing) == len(stamps):
            raise UnknownSubscriber(
                f"subscriber {subscriber_id} is not in the online store: no features in "
                f"{', '.join(missing)} (unknown id, or not in service when it was last materialized)"
            )
        if missing:
            raise UnknownSubscriber(
                f"subscriber {subscriber_id} has no {', '.join(missing)} features in the online "
                "store (materialization incomplete?); it cannot be scored"
            )
        values = {name: found.get(name) for _, names in self._views for name in names}
        return OnlineFeatures(subscriber_id, values, stamps)

    def materialized_through(self, store: FeatureStore) -> dict[str, datetime | None]:
        """Per view, the end of its newest materialization, read fresh from the registry."""
        through: dict[str, datetime | None] = {}
        for view, _ in self._views:
            end = store.get_feature_view(view.name).most_recent_end_time
            through[view.name] = _utc(end) if end is not None else None
        return through


def _python_value(value: Value) -> Any:
    kind = value.WhichOneof("val")
    return None if kind is None else getattr(value, kind)


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ChampionModel:
    """A registered version loaded for online scoring, with what a one-row predict needs."""

    name: str
    version: int
    run_id: str | None
    booster: lgb.Booster
    spec: ModelSpec
    threshold: float
    threshold_source: str
    loaded_at: datetime
    _encoders: tuple[tuple[str, dict[str, int] | None, frozenset[str]], ...] = field(repr=False)

    @classmethod
    def build(
        cls,
        name: str,
        version: int,
        run_id: str | None,
        booster: lgb.Booster,
        spec: ModelSpec,
        threshold: float,
        threshold_source: str,
        loaded_at: datetime,
    ) -> ChampionModel:
        # model_inputs makes a pandas Categorical over the spec's categories; LightGBM then maps
        # it onto the categories it was trained with (pandas_categorical) and uses the codes.
        trained = booster.pandas_categorical or [spec.categories[f] for f in spec.categorical]
        categorical = [f for f in spec.features if f in set(spec.categorical)]
        codes = {
            f: {str(v): i for i, v in enumerate(values)}
            for f, values in zip(categorical, trained, strict=True)
        }
        encoders = tuple(
            (
                f,
                {v: codes[f][v] for v in spec.categories[f] if v in codes[f]}
                if f in codes
                else None,
                frozenset(spec.categories.get(f, ())),
            )
            for f in spec.features
        )
        return cls(
            name,
            version,
            run_id,
            booster,
            spec,
            threshold,
            threshold_source,
            loaded_at,
            encoders,
        )

    def inputs(self, values: Mapping[str, Any]) -> tuple[np.ndarray, list[Any]]:
        """The one-row matrix LightGBM predicts on, and each input as ``top_reasons`` shows it."""
        row = np.empty((1, len(self._encoders)), dtype=np.float64)
        shown: list[Any] = []
        for j, (name, codes, known) in enumerate(self._encoders):
            value = values.get(name)
            if codes is None:
                number = math.nan if value is None else float(np.float32(value))
                row[0, j] = number
                shown.append(None if math.isnan(number) else number)
            else:
                seen = value is not None and value in known
                row[0, j] = codes.get(value, math.nan) if seen else math.nan
                shown.append(value if seen else None)
        return row, shown

    def probability(self, row: np.ndarray) -> float:
        return float(self.booster.predict(row, num_threads=1)[0])

    def reasons(self, row: np.ndarray, shown: list[Any], count: int) -> list[str]:
        """Up to ``count`` plain-word reasons, as ``tasks.scoring.reasons.top_reasons`` gives them."""
        contrib = np.asarray(
            self.booster.predict(row, pred_contrib=True, num_threads=1), dtype=np.float64
        )[0, :-1]
        order = np.argsort(-contrib, kind="stable")[:count]
        return [reason_text(self._encoders[j][0], shown[j]) for j in order if contrib[j] > 0]


def load_champion(
    settings: Settings, features: list[str], info: ModelVersionInfo | None = None
) -> ChampionModel:
    """The version the champion alias points at (or ``info``), ready for one-row scoring.

    Raises:
        NoChampion: the registry has no champion.
        ModelSignatureError: its inputs differ from the feature service's columns.
        ModelLoadError: it cannot be loaded.
    """
    info = info or current_alias(settings, CHAMPION)
    if info is None:
        raise NoChampion(
            f"{settings.model_name} has no champion: nothing to serve; train one with "
            "`churn train --as-of D` (or promote a version with `churn model promote`)"
        )
    booster, spec_dict, version = load_model(settings, info.version)
    spec = ModelSpec.from_dict(spec_dict)
    check_signature(settings.model_name, version, spec, features)
    threshold = info.metrics.get(THRESHOLD_METRIC)
    if threshold is not None and 0 < threshold < 1:
        source = f"holdout {THRESHOLD_METRIC} of run {info.run_id}"
    else:
        threshold = settings.risk_high_threshold
        source = f"risk_high_threshold setting (version {version} has no {THRESHOLD_METRIC})"
    logger.info(
        "loaded %s version %s for online scoring (threshold %.4f: %s)",
        settings.model_name,
        version,
        threshold,
        source,
    )
    return ChampionModel.build(
        settings.model_name,
        version,
        info.run_id,
        booster,
        spec,
        float(threshold),
        source,
        utc_now(),
    )


def risk_tier(p: float, medium: float, high: float) -> str:
    """``tasks.scoring.shards.risk_tiers`` for one probability (thresholds inclusive)."""
    return "high" if p >= high else "medium" if p >= medium else "low"


# ----------------------------------------------------------------------------- request schema


_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def feature_values_model(reads: list[ViewRead]) -> type[BaseModel]:
    """A pydantic model of the feature service's values, with each view's contract as rules.

    Every feature is required (``null`` only where the contract allows it); numbers must lie in
    the contract's range (and fit the Feast type), strings must be one of the allowed values;
    unknown names are refused. Errors name the field.
    """
    fields: dict[str, Any] = {}
    for read in reads:
        contract = {c.name: c for c in read.contract.columns}
        for name, dtype in zip(read.columns, read.dtypes, strict=True):
            column = contract.get(name)
            nullable = column is None or column.nullable
            rules: dict[str, Any] = {"description": f"{read.name}: {dtype}"}
            if column is not None and column.allowed:
                kind: Any = Literal[tuple(column.allowed)]  # type: ignore[valid-type]
            elif dtype in ("Int32", "Int64"):
                kind = int
                low, high = (-_INT32_MAX - 1, _INT32_MAX) if dtype == "Int32" else (None, None)
                if column is not None and column.min is not None:
                    low = math.ceil(column.min)
                if column is not None and column.max is not None:
                    high = math.floor(column.max)
                rules |= {"ge": low, "le": high}
            elif dtype in ("Float32", "Float64"):
                kind = float
                rules["allow_inf_nan"] = False
                rules["ge"] = column.min if column and column.min is not None else -_FLOAT32_MAX
                rules["le"] = column.max if column and column.max is not None else _FLOAT32_MAX
            elif dtype == "Bool":
                kind = bool
            else:
                kind = str
            rules = {k: v for k, v in rules.items() if v is not None}
            annotation = kind | None if nullable else kind
            fields[name] = (annotation, Field(..., **rules))
    return create_model(  # type: ignore[call-overload]
        "FeatureValues",
        __config__=ConfigDict(extra="forbid", strict=False),
        **fields,
    )


class SubscriberRequest(BaseModel):
    """``POST /predict``: score a subscriber from the online store."""

    model_config = ConfigDict(extra="forbid")
    subscriber_id: int = Field(..., ge=1, le=2**63 - 1, description="The subscriber to score.")


def features_request_model(reads: list[ViewRead]) -> type[BaseModel]:
    """``POST /predict/features``: a subscriber and the feature values to score it on."""
    return create_model(
        "FeaturesRequest",
        __config__=ConfigDict(extra="forbid"),
        subscriber_id=(int, Field(..., ge=1, le=2**63 - 1, description="Who is scored (logged).")),
        features=(feature_values_model(reads), Field(..., description="Every model input.")),
    )


# ----------------------------------------------------------------------------- predictions


@dataclass(frozen=True)
class OnlinePrediction:
    """One online prediction: what the caller gets back and what the log keeps."""

    prediction_id: str
    subscriber_id: int
    score_date: date
    scored_at: datetime
    probability: float
    will_churn: bool
    threshold: float
    risk_tier: str
    reasons: list[str]
    model_name: str
    model_version: int
    freshness: Freshness
    features: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The response body (feature values stay in the log)."""
        return {
            "prediction_id": self.prediction_id,
            "subscriber_id": self.subscriber_id,
            "scored_at": _iso(self.scored_at),
            "probability": self.probability,
            "will_churn": self.will_churn,
            "operating_threshold": self.threshold,
            "risk_tier": self.risk_tier,
            "reasons": self.reasons,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "feature_freshness": self.freshness.to_dict(),
        }


class OnlineMetrics:
    """The service's Prometheus metrics: counted here, rendered by ``prometheus_client``.

    The values live in this object, not in ``prometheus_client``'s metric classes: importing
    Feast switches those to its multiprocess file store (``PROMETHEUS_MULTIPROCESS_DIR``), where
    two services in one process would share every count. ``registry`` holds one collector that
    turns the counts into metric families at scrape time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list[float]] = {}  # endpoint → [count per bucket …, sum]
        self.predictions: dict[str, int] = {}
        self.stale = 0
        self.reloads = 0
        self.reload_failures = 0
        self.log_written = 0
        self.log_failures = 0
        self.model_version: Callable[[], float] = lambda: math.nan
        self.log_buffered: Callable[[], float] = lambda: 0
        self.feature_age: float | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """One HTTP request answered: its endpoint (others are ``other``), status and latency."""
        label = endpoint if endpoint in ENDPOINTS else "other"
        with self._lock:
            key = (label, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            counts = self._latency.setdefault(label, [0.0] * (len(LATENCY_BUCKETS) + 2))
            counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            counts[-1] += seconds

    def count(self, what: str, n: int = 1, label: str | None = None) -> None:
        """Add ``n`` to a counter attribute (``stale``, ``reloads`` …; ``predictions`` by label)."""
        with self._lock:
            if label is None:
                setattr(self, what, getattr(self, what) + n)
            else:
                table = getattr(self, what)
                table[label] = table.get(label, 0) + n

    def collect(self) -> Iterator[Metric]:
        """The metric families, as ``prometheus_client`` asks a collector for them."""
        with self._lock:
            requests = dict(self.requests)
            latency = {k: list(v) for k, v in self._latency.items()}
            predictions = dict(self.predictions)
            scalars = (self.stale, self.reloads, self.reload_failures)
            log = (self.log_written, self.log_failures)
        total = CounterMetricFamily(
            "churn_online_requests", "HTTP requests answered.", labels=["endpoint", "status"]
        )
        errors = CounterMetricFamily(
            "churn_online_errors",
            "HTTP requests answered with an error status (4xx, 5xx).",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), n in sorted(requests.items()):
            total.add_metric([endpoint, status], n)
            if int(status) >= 400:
                errors.add_metric([endpoint, status], n)
        yield total
        yield errors
        histogram = HistogramMetricFamily(
            "churn_online_request_duration_seconds",
            "Time from request to response, in the app.",
            labels=["endpoint"],
        )
        for endpoint, counts in sorted(latency.items()):
            cumulative = list(accumulate(counts[:-1]))
            buckets = [
                (floatToGoString(le), n)
                for le, n in zip((*LATENCY_BUCKETS, math.inf), cumulative, strict=True)
            ]
            histogram.add_metric([endpoint], buckets, counts[-1])
        yield histogram
        served = CounterMetricFamily(
            "churn_online_predictions", "Predictions served.", labels=["source"]
        )
        for source, n in sorted(predictions.items()):
            served.add_metric([source], n)
        yield served
        stale, reloads, reload_failures = scalars
        yield CounterMetricFamily(
            "churn_online_stale_predictions",
            "Predictions served on features older than their TTL (flagged in the response).",
            value=stale,
        )
        yield GaugeMetricFamily(
            "churn_online_model_version",
            "Version of the champion being served.",
            value=self.model_version(),
        )
        yield CounterMetricFamily(
            "churn_online_model_reloads", "Champion swaps after the alias moved.", value=reloads
        )
        yield CounterMetricFamily(
            "churn_online_model_reload_failures",
            "Alias checks or loads that failed (the loaded model kept serving).",
            value=reload_failures,
        )
        written, failures = log
        yield GaugeMetricFamily(
            "churn_online_log_buffered_predictions",
            "Predictions waiting in the buffer for the prediction log.",
            value=self.log_buffered(),
        )
        yield CounterMetricFamily(
            "churn_online_log_written_predictions",
            "Online predictions published to the prediction log.",
            value=written,
        )
        yield CounterMetricFamily(
            "churn_online_log_flush_failures",
            "Flushes of the buffer that failed (rows kept for the next one).",
            value=failures,
        )
        if self.feature_age is not None:
            yield GaugeMetricFamily(
                "churn_online_feature_age_seconds",
                "Age of the oldest view's newest materialization (from the Feast registry).",
                value=self.feature_age,
            )


# ----------------------------------------------------------------------------- log buffer


class OnlineLog:
    """Buffers online predictions and publishes them to the prediction log in batches.

    A flush starts when ``flush_rows`` are waiting (the adder only wakes the flusher; a request
    never writes) or ``flush_seconds`` after the last one. Each flush publishes one file per
    (score date, model version) (:func:`tasks.audit.online_log.publish_online_batch`). A flush that
    fails keeps its rows for the next one. :meth:`close` flushes whatever is left.
    """

    def __init__(
        self,
        settings: Settings,
        reads: list[ViewRead],
        metrics: OnlineMetrics,
    ) -> None:
        self.settings = settings
        self.flush_rows = settings.online_flush_rows
        self.flush_seconds = settings.online_flush_seconds
        self.metrics = metrics
        self._features = [c for r in reads for c in r.columns]
        types = {c.name: c.type for r in reads for c in r.contract.columns}
        self._schema = pa.schema([(name, types[name]) for name in self._features])
        self._buffer: list[OnlinePrediction] = []
        self._lock = threading.Lock()  # guards the buffer
        self._flushing = threading.Lock()  # one flush at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.written = 0
        metrics.log_buffered = lambda: len(self._buffer)

    def add(self, prediction: OnlinePrediction) -> None:
        with self._lock:
            self._buffer.append(prediction)
            full = len(self._buffer) >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def flush(self) -> list[LedgerEntry]:
        """Publish everything buffered now; on failure the rows go back to the buffer.

        Raises:
            ChurnError, OSError: publishing failed (the rows are kept).
        """
        with self._flushing:
            with self._lock:
                rows, self._buffer = self._buffer, []
            if not rows:
                return []
            groups: dict[tuple[date, str, int], list[OnlinePrediction]] = {}
            for row in rows:
                groups.setdefault((row.score_date, row.model_name, row.model_version), []).append(
                    row
                )
            entries: list[LedgerEntry] = []
            done: set[tuple[date, str, int]] = set()
            try:
                for (day, model, version), group in groups.items():
                    entries.append(
                        publish_online_batch(
                            self.settings,
                            self._batch(group),
                            score_date=day,
                            model_name=model,
                            model_version=version,
                            feature_service=self.settings.feature_service,
                        )
                    )
                    done.add((day, model, version))
            except BaseException:
                left = [
                    r for r in rows if (r.score_date, r.model_name, r.model_version) not in done
                ]
                with self._lock:
                    self._buffer = left + self._buffer
                raise
            finally:
                written = sum(e.rows for e in entries)
                self.written += written
                self.metrics.count("log_written", written)
            return entries

    def _batch(self, rows: list[OnlinePrediction]) -> pa.Table:
        # The same struct as the nightly log's: the service's features in order, with the
        # types of their contracts (the types the nightly feature frame has).
        features = pa.Table.from_pydict(
            {name: [r.features.get(name) for r in rows] for name in self._features},
            schema=self._schema,
        )
        encoded = features.to_struct_array().combine_chunks()
        columns = {
            "prediction_id": pa.array([r.prediction_id for r in rows], pa.string()),
            "scored_at": pa.array([r.scored_at for r in rows], pa.timestamp("us", tz="UTC")),
            "subscriber_id": pa.array([r.subscriber_id for r in rows], pa.int64()),
            "probability": pa.array([r.probability for r in rows], pa.float64()),
            "risk_tier": pa.array([r.risk_tier for r in rows], pa.string()),
            "reasons": pa.array([r.reasons for r in rows], pa.list_(pa.string())),
            "features": encoded,
        }
        return pa.table(
            [columns[c] for c in ONLINE_BATCH_COLUMNS], names=list(ONLINE_BATCH_COLUMNS)
        )

    def try_flush(self) -> bool:
        """One round of the flusher: flush, and on failure log it and keep the rows; True if it worked."""
        try:
            self.flush()
            self.last_error = None
            return True
        except (ChurnError, OSError, pa.ArrowException) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.metrics.count("log_failures")
            logger.error(
                "online prediction log flush failed (%d predictions kept for the next try): %s",
                self.buffered,
                exc,
            )
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.try_flush()
            except Exception as exc:  # a dead flusher would keep every later prediction in memory
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.count("log_failures")
                logger.exception("online prediction log flush failed unexpectedly")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="online-log", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the flusher and publish what is left (a clean shutdown loses nothing).

        Raises:
            OnlineError: the last flush failed; its rows stay in the buffer, counted in the
                message.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.flush()
        except (ChurnError, OSError, pa.ArrowException) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise OnlineError(
                f"{self.buffered} online predictions could not be written to the prediction "
                f"log at shutdown: {exc}"
            ) from exc


# ----------------------------------------------------------------------------- the service


class OnlineService:
    """Everything ``churn serve`` does, without HTTP: score, flag, log, reload, report health.

    Build it with :meth:`open`; :meth:`start` starts the background threads (champion checks
    every ``model_reload_seconds``, log flushes), :meth:`close` stops them and flushes the log.
    """

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore,
        reads: list[ViewRead],
        reader: OnlineFeatureReader,
        model: ChampionModel,
        *,
        now: Clock = utc_now,
    ) -> None:
        self.settings = settings
        self.store = store
        self.reads = reads
        self.reader = reader
        self.features = [c for r in reads for c in r.columns]
        self.now = now
        self.metrics = OnlineMetrics()
        self.log = OnlineLog(settings, reads, self.metrics)
        self._model = model  # one reference, replaced whole: see check_champion
        self._zone = ZoneInfo(settings.timezone)
        self.alias_version: int | None = model.version
        self.last_check: datetime | None = None
        self.reload_error: str | None = None
        self.materialized: dict[str, datetime | None] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics.model_version = lambda: self._model.version
        self.refresh_materialization()

    @classmethod
    def open(cls, settings: Settings, *, now: Clock = utc_now) -> OnlineService:
        """The service over the configured feature service and the current champion.

        Raises:
            FeatureStoreError: the feature service is not registered (``churn features apply``).
            NoChampion, ModelSignatureError, ModelLoadError: nothing servable in the registry.
        """
        store = open_store(settings)
        reads = view_reads(settings, store)
        reader = OnlineFeatureReader(store, settings)
        model = load_champion(settings, [c for r in reads for c in r.columns])
        return cls(settings, store, reads, reader, model, now=now)

    @property
    def model(self) -> ChampionModel:
        """The champion being served now."""
        return self._model

    # -- scoring --

    def predict_subscriber(self, subscriber_id: int) -> OnlinePrediction:
        """Score ``subscriber_id`` on its online-store features with the current champion.

        Raises:
            UnknownSubscriber: the store does not hold the subscriber.
            OnlineStoreUnavailable: the store cannot be read.
        """
        model = self._model  # this request's model, whatever a reload does meanwhile
        found = self.reader.read(subscriber_id)
        now = self.now()
        fresh = freshness(self.reads, found.event_timestamps, now)
        if fresh.stale:
            self.metrics.count("stale")
        return self._predict(model, subscriber_id, found.values, fresh, now, "online_store")

    def predict_values(self, subscriber_id: int, values: Mapping[str, Any]) -> OnlinePrediction:
        """Score ``subscriber_id`` on feature values given by the caller (already validated)."""
        model = self._model
        now = self.now()
        fresh = Freshness(source="request", checked_at=now)
        return self._predict(model, subscriber_id, dict(values), fresh, now, "request")

    def _predict(
        self,
        model: ChampionModel,
        subscriber_id: int,
        values: dict[str, Any],
        fresh: Freshness,
        now: datetime,
        source: str,
    ) -> OnlinePrediction:
        row, shown = model.inputs(values)
        p = model.probability(row)
        day = now.astimezone(self._zone).date()
        prediction = OnlinePrediction(
            prediction_id=online_prediction_id(day, model.name, model.version, uuid.uuid4().hex),
            subscriber_id=subscriber_id,
            score_date=day,
            scored_at=now,
            probability=p,
            will_churn=p >= model.threshold,
            threshold=model.threshold,
            risk_tier=risk_tier(
                p, self.settings.risk_medium_threshold, self.settings.risk_high_threshold
            ),
            reasons=model.reasons(row, shown, self.settings.reason_codes),
            model_name=model.name,
            model_version=model.version,
            freshness=fresh,
            features=values,
        )
        self.log.add(prediction)
        self.metrics.count("predictions", label=source)
        return prediction

    # -- champion reload --

    def check_champion(self) -> bool:
        """Swap in the champion if the alias moved; True when it did.

        The new version is loaded completely before the one reference is replaced, so no
        request ever sees a half-loaded model; requests already running keep theirs.

        Raises:
            RegistryError, ModelLoadError, ModelSignatureError: the check or load failed (the
                current model keeps serving).
        """
        self.last_check = self.now()
        info = current_alias(self.settings, CHAMPION)
        self.alias_version = info.version if info is not None else None
        if info is None:
            logger.warning(
                "%s has no champion alias any more; still serving version %s",
                self.settings.model_name,
                self._model.version,
            )
            return False
        if info.version == self._model.version:
            return False
        new = load_champion(self.settings, self.features, info)
        old, self._model = self._model, new
        self.metrics.count("reloads")
        logger.warning(
            "champion moved: now serving %s version %s (was %s)",
            new.name,
            new.version,
            old.version,
        )
        return True

    def refresh_materialization(self) -> None:
        """Re-read, from the Feast registry, how far each view has been materialized."""
        self.materialized = self.reader.materialized_through(self.store)
        ends = [t for t in self.materialized.values() if t is not None]
        if ends:
            self.metrics.feature_age = (self.now() - min(ends)).total_seconds()

    def _background_check(self) -> None:
        try:
            self.check_champion()
            self.reload_error = None
        except ChurnError as exc:
            self.reload_error = str(exc)
            self.metrics.count("reload_failures")
            logger.error(
                "champion check failed; still serving version %s: %s", self._model.version, exc
            )
        try:
            self.refresh_materialization()
        except ChurnError as exc:
            logger.error("could not read the materialization state of the online store: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.model_reload_seconds):
            try:
                self._background_check()
            except Exception as exc:  # a dead checker would never reload again, silently
                self.reload_error = f"{type(exc).__name__}: {exc}"
                self.metrics.count("reload_failures")
                logger.exception("champion check failed unexpectedly")

    # -- lifecycle and health --

    def start(self) -> None:
        """Start the champion checks and the log flusher (daemon threads)."""
        self.log.start()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="champion-check", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the background threads and flush the log (see :meth:`OnlineLog.close`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.log.close()

    def health(self) -> dict[str, Any]:
        """Model, alias, feature freshness and whether the service is ready.

        Ready: a champion is loaded, every view of the service has been materialized, and the
        last log flush did not fail. Stale features leave it ready (each response flags them).
        """
        model = self._model
        now = self.now()
        ends = {v: t for v, t in self.materialized.items()}
        known = [t for t in ends.values() if t is not None]
        oldest = min(known) if known else None
        ttl = {r.name: r.ttl for r in self.reads}
        stale = [
            v for v, t in ends.items() if t is not None and ttl[v] is not None and now - t > ttl[v]
        ]
        problems = []
        if len(known) < len(ends):
            missing = [v for v, t in ends.items() if t is None]
            problems.append(
                f"online store not materialized for {', '.join(missing)}: "
                "run `churn features materialize --date D`"
            )
        if self.log.last_error:
            problems.append(f"prediction log: {self.log.last_error}")
        return {
            "status": "ready" if not problems else "not ready",
            "ready": not problems,
            "problems": problems,
            "model": {
                "name": model.name,
                "version": model.version,
                "alias": CHAMPION,
                "alias_version": self.alias_version,
                "loaded_at": _iso(model.loaded_at),
                "operating_threshold": model.threshold,
                "threshold_source": model.threshold_source,
                "last_check": _iso(self.last_check),
                "reload_error": self.reload_error,
            },
            "features": {
                "service": self.settings.feature_service,
                "materialized_through": _iso(oldest),
                "age_seconds": (now - oldest).total_seconds() if oldest else None,
                "stale": bool(stale),
                "stale_views": stale,
                "views": {v: _iso(t) for v, t in ends.items()},
            },
            "log": {"buffered": self.log.buffered, "written": self.log.written},
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
