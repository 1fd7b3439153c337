"""Real-time scoring (issue 7): the champion over the Feast online store, one subscriber at a time.

Plain logic, no web framework (``flows/serve.py`` puts FastAPI in front of :class:`OnlineService`):

* :class:`OnlineFeatureReader`: one subscriber's features of the feature service from Feast's
  online store (SQLite, loaded nightly by ``tasks.features.tables.materialize_online``), with each
  view's event timestamp, in one SQL statement per request (see there for why and the numbers);
  with ``CHURN_ONLINE_STORE=redis``, :class:`~tasks.serving.redis_reader.RedisFeatureReader`
  reads the same values from Feast's Redis store in one ``HMGET`` (:func:`open_reader`).
  The views are resolved once, when the service starts.
* :class:`ChampionModel`: the champion's booster with its input spec, turned into a one-row
  float64 matrix directly: the values LightGBM builds from ``tasks.training.model_spec.model_inputs`` (numeric
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
A subscriber the store does not hold is :class:`~tasks.serving.reader.UnknownSubscriber`.

The parts live beside this module: :mod:`tasks.serving.reader` (the online store, freshness),
:mod:`tasks.serving.model` (the champion, its threshold, the request models),
:mod:`tasks.serving.log_buffer` (the prediction-log buffer) and :mod:`tasks.serving.metrics`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from feast import FeatureStore

from tasks.audit.online_log import online_prediction_id
from tasks.core.errors import ChurnError
from tasks.core.settings import Settings
from tasks.data.customer_keys import numbers_of_keys
from tasks.features.frames import ViewRead, view_reads
from tasks.features.store import open_store
from tasks.serving.log_buffer import OnlineLog
from tasks.serving.metrics import OnlineMetrics
from tasks.serving.model import ChampionModel, OnlinePrediction, load_champion, risk_tier
from tasks.serving.reader import (
    Clock,
    Freshness,
    OnlineFeatureReader,
    OnlineReader,
    UnknownSubscriber,
    freshness,
    iso_or_none,
    utc_now,
)
from tasks.serving.redis_reader import RedisFeatureReader
from tasks.training.mlflow_store import CHAMPION
from tasks.training.registry import current_alias

logger = logging.getLogger(__name__)
KEY_CACHE_SIZE = 1_000_000
"""Customer keys whose numbers a service keeps before starting afresh (about 100 MB)."""


# ----------------------------------------------------------------------------- the service


def open_reader(store: FeatureStore, settings: Settings) -> OnlineReader:
    """The reader of the store's online store: Redis (``CHURN_ONLINE_STORE=redis``) or SQLite.

    Raises:
        FeatureStoreError: the feature service is not registered, or the store is of a kind
            neither reader reads.
    """
    if store.config.online_store.type == "redis":
        return RedisFeatureReader(store, settings)
    return OnlineFeatureReader(store, settings)


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
        reader: OnlineReader,
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
        self._key_numbers: dict[str, int] = {}
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
        reader = open_reader(store, settings)
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

    def subscriber_of_key(self, customer_key: str) -> int:
        """The number the import gave the customer's own id.

        Found numbers are kept: a key never changes its number (:mod:`tasks.data.customer_keys`),
        so only a key not found yet is looked up in the keys table again.

        Raises:
            UnknownSubscriber: no import numbered that key.
        """
        key = customer_key.strip()
        number = self._key_numbers.get(key)
        if number is None:
            found = numbers_of_keys(self.settings.source_dir, [key])
            if key not in found:
                raise UnknownSubscriber(f"no customer with customer_key {key!r}")
            if len(self._key_numbers) >= KEY_CACHE_SIZE:
                self._key_numbers.clear()
            number = self._key_numbers[key] = found[key]
        return number

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
        try:
            self.log.close()
        finally:
            self.reader.close()

    def health(self) -> dict[str, Any]:
        """Model, alias, feature freshness and whether the service is ready.

        Ready: a champion is loaded, every view of the service has been materialized, the
        online store answers (Redis: a ping), and the last log flush did not fail. Stale
        features leave it ready (each response flags them).
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
        store_problem = self.reader.problem()
        if store_problem:
            problems.append(store_problem)
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
                "loaded_at": iso_or_none(model.loaded_at),
                "operating_threshold": model.threshold,
                "threshold_source": model.threshold_source,
                "last_check": iso_or_none(self.last_check),
                "reload_error": self.reload_error,
            },
            "features": {
                "service": self.settings.feature_service,
                "materialized_through": iso_or_none(oldest),
                "age_seconds": (now - oldest).total_seconds() if oldest else None,
                "stale": bool(stale),
                "stale_views": stale,
                "views": {v: iso_or_none(t) for v, t in ends.items()},
            },
            "log": {"buffered": self.log.buffered, "written": self.log.written},
        }
