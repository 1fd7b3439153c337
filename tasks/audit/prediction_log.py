"""The prediction log: every prediction, nightly and online, as Parquet files under one ledger.

Layout (DESIGN §3, §5)::

    $CHURN_HOME/predictions/
      score_date=YYYY-MM-DD/{model_name}-v{version}-{role}.parquet   role: champion | shadow
      score_date=YYYY-MM-DD/{model_name}-v{version}-online-{flush_id}.parquet   the online partition
      _ledger.jsonl        one JSON line per published file (path, rows, sha256, …), append-only
      .ledger.lock         flock serialising publish (replace + ledger line) and verify

* Nightly files: one per (score date, model version, role), rewritten whole by a rerun.
* Online files (:func:`~tasks.audit.online_log.publish_online_batch`, role ``online``): the real-time endpoint buffers its
  predictions and publishes each flush as a new file of its own, named by a flush id that sorts
  by time (``20260828T101500123456Z-1a2b3c4d``), with its own ledger line. Online files are only
  ever added, never replaced: a subscriber may be scored many times a day, so the key of an online
  row is its ``prediction_id`` (``{score_date}/{model}/v{version}/online/{request id}``), not the
  subscriber. ``score_date`` of an online row is the request's day in the business time zone.

* A file is written by :class:`PredictionLogWriter`, batch by batch, to a temp sibling named
  ``.writing-<final name>.<random>.tmp`` (the dedicated prefix: no reader's ``*.parquet`` glob
  matches it) and only renamed onto its final name when the block exits cleanly. A rerun of
  the same date, version and role replaces exactly that file; every other file is untouched.
* The writer holds an exclusive ``flock`` on its temp file while it lives, so
  :func:`~tasks.audit.ledger.verify_log` can tell an in-flight writer (lock held: ignored, listed as in flight) from
  the leftovers of a killed one (lock free: reported as unexpected). The next writer of the same
  file removes such leftovers.
* Zero rows is a valid file: a date scored with nobody to score is recorded as such (an empty
  file with the schema and a ledger line with ``rows: 0``); no file means "not scored".
* ``features`` is a typed struct of the values the model saw, one field per model input in the
  feature service's order, so its fields depend on the service: each file has its own schema
  (:func:`prediction_log_schema` of its first batch's struct), one struct type throughout. Readers
  unify files of different services by field name (DuckDB ``union_by_name``: a field a file
  lacks reads as null).
* The ledger's latest line per path is the expected state of that file. :func:`~tasks.audit.ledger.verify_log`
  recomputes SHA-256 and row counts and reports modified, missing and unexpected files.

This module writes the files; their schema and batch checks are :mod:`tasks.audit.log_schema`,
the ledger, its lock and :func:`~tasks.audit.ledger.verify_log` are :mod:`tasks.audit.ledger`,
and the online partition's names and flushes are :mod:`tasks.audit.online_log`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.audit.ledger import (
    LEDGER_NAME,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    LedgerEntry,
    append_ledger,
    fsync_dir,
    held_by_writer,
    ledger_lock,
    relative_path,
    sha256_file,
)
from tasks.audit.log_schema import (
    BATCH_COLUMNS,
    EMPTY_FILE_SCHEMA,
    REQUIRED,
    ROLES,
    ROW_GROUP_ROWS,
    PredictionBatchError,
    PredictionLogError,
    check_identity,
    checked_columns,
    dictionary_columns,
    prediction_log_schema,
)
from tasks.core.errors import ContractViolation
from tasks.core.files import PARQUET_OPTIONS
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)


# --- writer --------------------------------------------------------------------------------


@dataclass
class TempFile:
    """A Parquet writer on a locked temp sibling of a log file (:func:`open_temp_writer`)."""

    writer: pq.ParquetWriter
    path: Path
    lock_fd: int


@dataclass
class _State:
    """What a writer knows inside its block; the temp file opens with the first batch."""

    features_type: pa.StructType | None
    file: TempFile | None = None
    rows: int = 0
    seen_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    refused: bool = False


class PredictionLogWriter:
    """Stream one (score date, model version, role) file of the log; publish it on clean exit.

    Use as a context manager and call :meth:`write` once per batch. The file's schema is
    :func:`prediction_log_schema` of the first batch's ``features`` struct (or of
    ``features_type`` when given), so the temp file opens with the first batch; every later batch
    must carry the same struct. Memory holds one batch plus the subscriber ids written so far
    (8 bytes each, to refuse a subscriber twice in a file). On clean exit the file is fsynced,
    renamed over any earlier file of the same date, version and role, and a ledger line appended
    (both under the ledger lock). On an exception, or after a refused batch, the temp file is
    removed: nothing visible changes, the ledger is untouched.

    A block without a batch publishes a file of zero rows: with ``features_type`` it has that
    struct, without it ``features`` is of the null type (:data:`EMPTY_FILE_SCHEMA`).

    Raises:
        PredictionLogError: bad arguments (role, name, naive ``scored_at``, a ``features_type``
            that is not a struct of at least one field …), misuse (write outside the block, exit
            after a refused batch), or a failure while publishing.
        PredictionBatchError: from :meth:`write`, a batch that breaks the contract.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        score_date: date,
        model_name: str,
        model_version: int,
        role: str,
        feature_service: str,
        flow_run_id: str | None,
        scored_at: datetime,
        features_type: pa.StructType | None = None,
    ) -> None:
        if role not in ROLES:
            raise PredictionLogError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        check_identity(score_date, model_name, model_version, feature_service)
        if scored_at.tzinfo is None or scored_at.utcoffset() is None:
            raise PredictionLogError(f"scored_at must be time-zone aware, not {scored_at!r}")
        if features_type is not None:
            features_type = prediction_log_schema(features_type).field("features").type
        self.settings = settings
        self.score_date = score_date
        self.model_name = model_name
        self.model_version = model_version
        self.role = role
        self.feature_service = feature_service
        self.flow_run_id = flow_run_id
        self.scored_at = scored_at.astimezone(UTC)
        self.features_type: pa.StructType | None = features_type
        """The struct of ``features`` expected of every batch; None: the first batch's."""
        self.relative_path = relative_path(score_date, model_name, model_version, role)
        self.path = settings.predictions_dir / self.relative_path
        self.entry: LedgerEntry | None = None
        """The ledger line, once the file is published."""
        self._state: _State | None = None
        self._id_prefix = f"{score_date.isoformat()}/{model_name}/v{model_version}/{role}/"

    @property
    def rows_written(self) -> int:
        if self.entry is not None:
            return self.entry.rows
        return self._state.rows if self._state is not None else 0

    def __enter__(self) -> Self:
        if self._state is not None or self.entry is not None:
            raise PredictionLogError(f"a writer of {self.relative_path} is used once")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        self._state = _State(features_type=self.features_type)
        return self

    def write(self, batch: pa.Table | pa.RecordBatch) -> None:
        """Check ``batch`` (exactly :data:`BATCH_COLUMNS`), add the constant columns and append it.

        Raises:
            PredictionBatchError: missing or extra columns, a column of the wrong type (for
                ``features``: not a struct, or another struct than the file's), nulls in
                subscriber_id / probability / risk_tier / features, a probability outside
                [0, 1] (NaN included), an unknown risk tier, or a subscriber id seen twice in
                this file. Every broken rule is named with its count; the writer then refuses
                to publish.
        """
        state = self._state
        if state is None:
            raise PredictionLogError(f"write to {self.relative_path} outside its `with` block")
        if state.refused:
            raise PredictionLogError(
                f"an earlier batch of {self.relative_path} failed; nothing will be published"
            )
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        try:
            columns, ids = self._checked(batch, state)
            table = self._complete(columns, batch.num_rows)
            if state.file is None:
                state.file = open_temp_writer(self.path, table.schema)
                state.features_type = columns["features"].type
            state.file.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        except BaseException:
            # A refused batch, or a writer left half way through a row group: never publish.
            state.refused = True
            raise
        state.rows += table.num_rows
        # Both are sorted: a merge sort of the concatenation is close to linear.
        state.seen_ids = np.concatenate([state.seen_ids, ids])
        state.seen_ids.sort(kind="stable")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        if state is None:
            return
        self._state = None
        if exc_type is not None or state.refused:
            if state.file is not None:
                discard_temp(state.file)
            if exc_type is None:
                raise PredictionLogError(
                    f"a batch of {self.relative_path} failed; nothing was published"
                )
            logger.warning("dropped unpublished %s: %s", self.relative_path, exc_type.__name__)
            return
        temp = state.file
        try:
            if temp is None:  # no batch came: a file of zero rows
                empty = (
                    prediction_log_schema(state.features_type)
                    if state.features_type is not None
                    else EMPTY_FILE_SCHEMA
                )
                temp = open_temp_writer(self.path, empty)
            temp.writer.close()
            sha256 = sha256_file(temp.path, fsync=True)
        except BaseException:
            if temp is not None:
                discard_temp(temp)
            raise
        entry = LedgerEntry(
            path=self.relative_path,
            score_date=self.score_date,
            model_name=self.model_name,
            model_version=self.model_version,
            role=self.role,
            rows=state.rows,
            sha256=sha256,
            written_at=datetime.now(UTC),
            flow_run_id=self.flow_run_id,
        )
        publish_temp(
            self.settings,
            temp,
            self.path,
            entry,
            "`churn audit verify` will report it until the date is scored again",
        )
        self.entry = entry
        logger.info("published %s (%d rows)", self.relative_path, entry.rows)

    # -- helpers --

    def _checked(
        self, batch: pa.Table, state: _State
    ) -> tuple[dict[str, pa.ChunkedArray], np.ndarray]:
        """The batch's columns cast to the file's types, and its sorted subscriber ids."""
        where, table = "batch", f"prediction batch for {self.relative_path}"
        columns, violations = checked_columns(
            batch, BATCH_COLUMNS, REQUIRED, table, state.features_type
        )

        ids = np.sort(pc.drop_null(columns["subscriber_id"]).to_numpy())
        twice = ids[1:][ids[1:] == ids[:-1]]
        if len(twice):
            violations.append(
                ContractViolation(
                    where,
                    "subscriber_id",
                    "unique in the batch",
                    len(twice),
                    f"e.g. {_examples(twice)}",
                )
            )
        seen = state.seen_ids
        earlier = ids[np.isin(ids, seen)] if len(seen) else ids[:0]
        if len(earlier):
            violations.append(
                ContractViolation(
                    where,
                    "subscriber_id",
                    "not in an earlier batch of this file",
                    len(earlier),
                    f"e.g. {_examples(earlier)}",
                )
            )
        if violations:
            raise PredictionBatchError(table, violations)
        return columns, ids

    def _complete(self, columns: dict[str, pa.ChunkedArray], rows: int) -> pa.Table:
        """The batch with the constant columns and prediction ids, in the log's column order."""
        schema = prediction_log_schema(columns["features"].type)

        def constant(name: str, value: object) -> pa.Array:
            return pa.repeat(pa.scalar(value, schema.field(name).type), rows)

        ids = columns["subscriber_id"]
        arrays = {
            "prediction_id": pc.binary_join_element_wise(
                self._id_prefix, pc.cast(ids, pa.string()), ""
            ),
            "score_date": constant("score_date", self.score_date),
            "scored_at": constant("scored_at", self.scored_at),
            "model_name": constant("model_name", self.model_name),
            "model_version": constant("model_version", self.model_version),
            "role": constant("role", self.role),
            "feature_service": constant("feature_service", self.feature_service),
            "flow_run_id": constant("flow_run_id", self.flow_run_id),
            **columns,
        }
        return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


# --- temp files and publishing ---------------------------------------------------------------

ONLINE_TEMP_GRACE_SECONDS = 300.0


def publish_temp(
    settings: Settings, temp: TempFile, path: Path, entry: LedgerEntry, if_unrecorded: str
) -> None:
    """Rename the finished temp file onto ``path`` and append its ledger line, under the lock.

    The temp file's lock and leftovers are released whatever happens.
    """
    try:
        with ledger_lock(settings, fcntl.LOCK_EX):
            os.replace(temp.path, path)
            fsync_dir(path.parent)
            try:
                append_ledger(settings, entry)
            except OSError as append_exc:
                raise PredictionLogError(
                    f"published {entry.path} but could not record it in "
                    f"{LEDGER_NAME}: {append_exc}; {if_unrecorded}"
                ) from append_exc
    finally:
        os.close(temp.lock_fd)
        temp.path.unlink(missing_ok=True)


def _examples(ids: np.ndarray) -> str:
    return ", ".join(str(v) for v in np.unique(ids)[:3])


def open_temp_writer(path: Path, schema: pa.Schema) -> TempFile:
    """A Parquet writer of ``schema`` on a hidden temp sibling of ``path``, the temp file locked.

    The lock is held until the file is published or dropped, so :func:`~tasks.audit.ledger.verify_log` can tell a
    live writer from the leftovers of a killed one.
    """
    fd, name = tempfile.mkstemp(
        prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
    )
    temp = Path(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        writer = pq.ParquetWriter(
            temp, schema, use_dictionary=dictionary_columns(schema), **PARQUET_OPTIONS
        )
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    return TempFile(writer=writer, path=temp, lock_fd=fd)


def discard_temp(temp: TempFile) -> None:
    with contextlib.suppress(Exception):  # the writer may already be half closed
        temp.writer.close()
    os.close(temp.lock_fd)
    temp.path.unlink(missing_ok=True)


def remove_stale_temps(target: Path, pattern: str | None = None) -> None:
    """Remove temp files of ``target`` left by a killed writer (no live writer holds them).

    With ``pattern`` (a glob in ``target``'s directory), the temp files it matches instead, and
    only those older than :data:`ONLINE_TEMP_GRACE_SECONDS` (online writers of other processes
    share the directory).
    """
    if pattern is None:
        temps, grace = target.parent.glob(f"{TEMP_PREFIX}{target.name}.*{TEMP_SUFFIX}"), None
    else:
        temps, grace = target.parent.glob(pattern), ONLINE_TEMP_GRACE_SECONDS
    for temp in temps:
        if grace is not None:
            try:
                if time.time() - temp.stat().st_mtime < grace:
                    continue
            except FileNotFoundError:
                continue
        if not held_by_writer(temp):
            logger.warning("removing %s, left by a writer that did not finish", temp)
            temp.unlink(missing_ok=True)
