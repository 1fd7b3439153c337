"""The endpoint's buffer of online predictions for the prediction log, flushed as files of their own.

:class:`OnlineLog` keeps predictions in memory and publishes them, one file per (score date, model
version) through :func:`tasks.audit.online_log.publish_online_batch`, when ``flush_rows`` are
waiting, ``flush_seconds`` after the last flush, and on close. A flush that fails keeps its rows
for the next one; only a failed last flush at close loses them, and says so (``OnlineError``).
"""

from __future__ import annotations

import logging
import threading
from datetime import date

import pyarrow as pa

from tasks.audit.ledger import LedgerEntry
from tasks.audit.log_schema import ONLINE_BATCH_COLUMNS
from tasks.audit.online_log import publish_online_batch
from tasks.core.errors import ChurnError
from tasks.core.settings import Settings
from tasks.features.frames import ViewRead
from tasks.serving.metrics import OnlineMetrics
from tasks.serving.model import OnlinePrediction
from tasks.serving.reader import OnlineError

logger = logging.getLogger(__name__)


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
