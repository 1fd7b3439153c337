"""One subscriber's features from Feast's Redis online store (``CHURN_ONLINE_STORE=redis``).

Feast keeps one Redis hash per subscriber for all views (layout in
:mod:`tasks.features.redis_online`), so a request is one ``HMGET`` of every feature field and
each view's ``_ts:`` field: one round trip. The values are the same Feast ``Value`` protobufs the
SQLite store holds, and the answer is assembled by the same code
(:func:`tasks.serving.reader.online_features`), so both stores give equal features for the same
materialized data (an integration test holds them to each other).

While Redis is down a read fails within :data:`READ_TIMEOUT_S` as
:class:`~tasks.serving.reader.OnlineStoreUnavailable` (the endpoint answers 503), naming Redis's
host, never its password. Nothing needs restarting afterwards: redis-py's pool opens a new
connection for the next request, and a pooled connection that Redis closed meanwhile is retried
once at once (:func:`tasks.features.redis_online.connect`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis
from feast import FeatureStore, FeatureView
from feast.protos.feast.types.Value_pb2 import Value

from tasks.core.errors import FeatureStoreError
from tasks.core.probe import describe
from tasks.core.settings import Settings
from tasks.core.urls import scrub
from tasks.features.redis_online import (
    connect,
    entity_key,
    feature_field,
    parse_timestamp_seconds,
    timestamp_field,
)
from tasks.features.store import feature_service, service_views
from tasks.serving.reader import (
    OnlineFeatures,
    OnlineStoreUnavailable,
    materialized_through,
    online_features,
    python_value,
)

READ_TIMEOUT_S = 1.0
"""Longest a request waits for Redis (connect or answer) before it answers 503."""


class RedisFeatureReader:
    """Reads one subscriber's features of the feature service from Feast's Redis online store."""

    def __init__(self, store: FeatureStore, settings: Settings) -> None:
        if settings.redis_url is None:
            raise FeatureStoreError(
                "CHURN_ONLINE_STORE=redis needs CHURN_REDIS_URL (redis://host:6379/0)"
            )
        service = feature_service(store, settings.feature_service)
        self._views: list[tuple[FeatureView, list[str]]] = service_views(store, service)
        config = store.config
        if config.entity_key_serialization_version != 3:
            raise FeatureStoreError(
                "the Redis reader reads entity keys of serialization version 3; "
                f"feature_store.yaml says {config.entity_key_serialization_version}"
            )
        if getattr(config.registry, "enable_online_feature_view_versioning", False):
            raise FeatureStoreError("the Redis reader does not read versioned feature views")
        self.join_key = "subscriber_id"
        self._project = config.project
        self._url = settings.redis_url.get_secret_value()
        self.description = describe(self._url)
        """``redis at host:port/db``: for messages (no password)."""
        self._fields: list[bytes] = []
        # Per field: (view index, feature name), or (view index, None) for the view's timestamp.
        self._slots: list[tuple[int, str | None]] = []
        for i, (view, names) in enumerate(self._views):
            for name in names:
                self._fields.append(feature_field(view.name, name))
                self._slots.append((i, name))
            self._fields.append(timestamp_field(view.name))
            self._slots.append((i, None))
        self._client = connect(self._url, READ_TIMEOUT_S)

    @property
    def views(self) -> list[str]:
        return [view.name for view, _ in self._views]

    def read(self, subscriber_id: int) -> OnlineFeatures:
        """The store's values and event times of ``subscriber_id``, view by view.

        Raises:
            UnknownSubscriber: no view holds the subscriber, or only some views do.
            OnlineStoreUnavailable: Redis does not answer (down, restarting, refusing the login).
        """
        key = entity_key(self.join_key, subscriber_id, self._project)
        try:
            blobs = self._client.hmget(key, self._fields)
        except redis.RedisError as exc:
            reason = scrub(str(exc) or type(exc).__name__, [self._url])
            raise OnlineStoreUnavailable(
                f"the online store ({self.description}) cannot be read: {reason}"
            ) from None
        found: dict[str, Any] = {}
        epochs: list[int | None] = [None] * len(self._views)
        for (view, name), blob in zip(self._slots, blobs, strict=True):
            if blob is None:
                continue
            if name is None:
                epochs[view] = parse_timestamp_seconds(blob)
            else:
                found[name] = python_value(Value.FromString(blob))
        return online_features(subscriber_id, self._views, found, epochs)

    def materialized_through(self, store: FeatureStore) -> dict[str, datetime | None]:
        """Per view, the end of its newest materialization, read fresh from the registry."""
        return materialized_through(store, self._views)

    def problem(self) -> str | None:
        """Why Redis cannot be read now (for ``/health``), or None when it answers a ping."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            reason = scrub(str(exc) or type(exc).__name__, [self._url])
            return f"online store ({self.description}) cannot be read: {reason}"
        return None

    def close(self) -> None:
        self._client.close()
