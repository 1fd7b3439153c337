"""Prometheus metrics of the real-time endpoint: requests, latency, staleness, the model served.

:class:`OnlineMetrics` counts and times every request by endpoint and outcome into fixed
latency buckets, under one lock, and exposes them as a custom collector on its own registry
(no process-global state), so two services in one process never mix their numbers.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

ENDPOINTS = ("/predict", "/predict/features", "/health", "/metrics")
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


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
