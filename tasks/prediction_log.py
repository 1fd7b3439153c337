"""The prediction log: every prediction, nightly and online, as Parquet files under one ledger.

Layout (DESIGN §3, §5)::

    $CHURN_HOME/predictions/
      score_date=YYYY-MM-DD/{model_name}-v{version}-{role}.parquet   role: champion | shadow
      score_date=YYYY-MM-DD/{model_name}-v{version}-online-{flush_id}.parquet   the online partition
      _ledger.jsonl        one JSON line per published file (path, rows, sha256, …), append-only
      .ledger.lock         flock serialising publish (replace + ledger line) and verify

* Nightly files: one per (score date, model version, role), rewritten whole by a rerun.
* Online files (:func:`publish_online_batch`, role ``online``): the real-time endpoint buffers its
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
  :func:`verify_log` can tell an in-flight writer (lock held: ignored, listed as in flight) from
  the leftovers of a killed one (lock free: reported as unexpected). The next writer of the same
  file removes such leftovers.
* Zero rows is a valid file: a date scored with nobody to score is recorded as such (an empty
  file with the schema and a ledger line with ``rows: 0``); no file means "not scored".
* ``features`` is a typed struct of the values the model saw, one field per model input in the
  feature service's order, so its fields depend on the service: each file has its own schema
  (:func:`prediction_log_schema` of its first batch's struct), one struct type throughout. Readers
  unify files of different services by field name (DuckDB ``union_by_name``: a field a file
  lacks reads as null).
* The ledger's latest line per path is the expected state of that file. :func:`verify_log`
  recomputes SHA-256 and row counts and reports modified, missing and unexpected files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.errors import ChurnError, ContractViolation, DataContractError
from tasks.core.files import PARQUET_OPTIONS
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)

LEDGER_NAME = "_ledger.jsonl"
LOCK_NAME = ".ledger.lock"
TEMP_PREFIX = ".writing-"
TEMP_SUFFIX = ".tmp"
PARTITION_PREFIX = "score_date="
LOG_GLOB = f"{PARTITION_PREFIX}*/*.parquet"
"""Relative to ``settings.predictions_dir``: every published file (temp files never match)."""

CHAMPION, SHADOW = "champion", "shadow"
ROLES = (CHAMPION, SHADOW)
"""Roles of the nightly files (one file per score date, version and role)."""
ONLINE = "online"
"""Role of the real-time endpoint's predictions: many files per score date and version."""
RISK_TIERS = ("low", "medium", "high")
"""The tiers a prediction may carry; the audit views count ``high``."""

ROW_GROUP_ROWS = 1_048_576
"""Largest row group: a batch becomes one row group unless it is bigger than this."""

PREDICTION_LOG_BASE_SCHEMA = pa.schema(
    [
        pa.field("prediction_id", pa.string(), nullable=False),
        pa.field("score_date", pa.date32(), nullable=False),
        pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("subscriber_id", pa.int64(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("probability", pa.float64(), nullable=False),
        pa.field("risk_tier", pa.string(), nullable=False),
        # Parquet names a list's item "element"; naming it so here keeps a read-back schema equal.
        pa.field("reasons", pa.list_(pa.field("element", pa.string())), nullable=True),
        # A placeholder: a file's schema has the struct of its feature service here.
        pa.field("features", pa.struct([]), nullable=False),
        pa.field("feature_service", pa.string(), nullable=False),
        pa.field("flow_run_id", pa.string(), nullable=True),
    ]
)
"""The columns of every log file, in order, with ``features`` left as an empty struct.

One row per (score date, model version, role, subscriber). ``prediction_id`` is
``{score_date}/{model_name}/v{version}/{role}/{subscriber_id}``: the same on a rerun, unique in
the log. ``reasons`` is null where reason codes were not computed; ``features`` is a struct of
the feature values the model saw, one (nullable) field per model input, typed as in the feature
frame; ``flow_run_id`` is null outside a Prefect run. A file's own schema is
:func:`prediction_log_schema` of its struct type: Parquet cannot store a struct without fields,
and the audit views use this schema as it is only while nothing is logged yet."""

EMPTY_FILE_SCHEMA = pa.schema(
    [
        pa.field("features", pa.null(), nullable=True) if f.name == "features" else f
        for f in PREDICTION_LOG_BASE_SCHEMA
    ]
)
"""The schema of a file of zero rows whose writer was never told its feature struct.

No batch came, so no struct type is known, and Parquet cannot store a struct without fields:
``features`` is left of Arrow's null type (nullable, as the null type must be). DuckDB's
``union_by_name`` reads it together with the other files' structs."""


def prediction_log_schema(features_type: pa.StructType) -> pa.Schema:
    """The schema of one log file whose ``features`` are of ``features_type``.

    Every field of the struct is made nullable (a feature value may be missing, and two batches
    then differ only in what matters: field names, order and types).

    Raises:
        PredictionLogError: ``features_type`` is not a struct, or has no field.
    """
    if not pa.types.is_struct(features_type) or features_type.num_fields == 0:
        raise PredictionLogError(
            f"features must be a struct of at least one field, not {features_type}"
        )
    return PREDICTION_LOG_BASE_SCHEMA.set(
        PREDICTION_LOG_BASE_SCHEMA.get_field_index("features"),
        pa.field("features", _nullable_fields(features_type), nullable=False),
    )


def _nullable_fields(struct: pa.StructType) -> pa.StructType:
    """``struct`` with every field nullable: a frame's columns may or may not say not-null."""
    return pa.struct([struct.field(i).with_nullable(True) for i in range(struct.num_fields)])


BATCH_COLUMNS = ("subscriber_id", "probability", "risk_tier", "reasons", "features")
"""Exactly the columns a batch given to :meth:`PredictionLogWriter.write` carries."""

ONLINE_BATCH_COLUMNS = (
    "prediction_id",
    "scored_at",
    "subscriber_id",
    "probability",
    "risk_tier",
    "reasons",
    "features",
)
"""Exactly the columns a batch given to :func:`publish_online_batch` carries (per-row ids and times)."""

_REQUIRED = ("subscriber_id", "probability", "risk_tier", "features")
_ONLINE_REQUIRED = ("prediction_id", "scored_at", *_REQUIRED)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FLUSH_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{12}Z-[0-9a-f]{8}$")
_PATH_RE = re.compile(
    rf"^{PARTITION_PREFIX}(\d{{4}}-\d{{2}}-\d{{2}})/"
    rf"([A-Za-z0-9][A-Za-z0-9_.-]*)-v([1-9][0-9]*)-"
    rf"(?:{'|'.join(ROLES)}|{ONLINE}-[0-9]{{8}}T[0-9]{{12}}Z-[0-9a-f]{{8}})\.parquet$"
)
_HASH_CHUNK = 1 << 20


class PredictionLogError(ChurnError):
    """The prediction log was misused, or its ledger cannot be read or written."""


class PredictionBatchError(DataContractError, PredictionLogError):
    """A batch broke the log's contract; nothing of that file is published."""


@dataclass(frozen=True)
class LedgerEntry:
    """One published file: its path relative to the log, what it holds, rows and checksum."""

    path: str
    score_date: date
    model_name: str
    model_version: int
    role: str
    rows: int
    sha256: str
    written_at: datetime
    flow_run_id: str | None

    def to_json(self) -> str:
        record = asdict(self)
        record["score_date"] = self.score_date.isoformat()
        record["written_at"] = self.written_at.isoformat()
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> LedgerEntry:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise TypeError("not a JSON object")
        record["score_date"] = date.fromisoformat(record["score_date"])
        record["written_at"] = datetime.fromisoformat(record["written_at"])
        entry = cls(**record)
        if not _PATH_RE.match(entry.path):
            raise ValueError(f"path {entry.path!r} is not a prediction log file")
        return entry


@dataclass(frozen=True)
class FileMismatch:
    """A published file whose bytes or row count differ from its latest ledger line."""

    path: str
    expected_sha256: str
    actual_sha256: str
    expected_rows: int
    actual_rows: int | None  # None: not readable as Parquet any more

    def __str__(self) -> str:
        rows = "unreadable" if self.actual_rows is None else f"{self.actual_rows:,}"
        return (
            f"{self.path}: sha256 {self.actual_sha256[:12]}… (ledger {self.expected_sha256[:12]}…),"
            f" rows {rows} (ledger {self.expected_rows:,})"
        )


@dataclass(frozen=True)
class VerifyReport:
    """The log on disk against its ledger.

    ``ok``: files whose checksum and rows match; ``modified``: differ; ``missing``: in the ledger,
    not on disk; ``unexpected``: on disk, not in the ledger (including temp files no writer holds
    any more); ``in_flight``: temp files a live writer holds (ignored, listed for information).
    """

    ok: int
    modified: tuple[FileMismatch, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    in_flight: tuple[str, ...] = ()
    ledger_lines: int = 0

    @property
    def clean(self) -> bool:
        return not (self.modified or self.missing or self.unexpected)

    def summary(self) -> str:
        return (
            f"{self.ok} ok, {len(self.modified)} modified, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected"
        )


def log_path(
    settings: Settings, score_date: date, model_name: str, model_version: int, role: str
) -> Path:
    """Where the file of (score date, model version, role) lives."""
    return settings.predictions_dir / _relative_path(score_date, model_name, model_version, role)


def ledger_path(settings: Settings) -> Path:
    return settings.predictions_dir / LEDGER_NAME


def _relative_path(score_date: date, model_name: str, model_version: int, role: str) -> str:
    return (
        f"{PARTITION_PREFIX}{score_date.isoformat()}/{model_name}-v{model_version}-{role}.parquet"
    )


# --- writer --------------------------------------------------------------------------------


@dataclass
class _TempFile:
    """A Parquet writer on a locked temp sibling of a log file (:func:`_open_temp_writer`)."""

    writer: pq.ParquetWriter
    path: Path
    lock_fd: int


@dataclass
class _State:
    """What a writer knows inside its block; the temp file opens with the first batch."""

    features_type: pa.StructType | None
    file: _TempFile | None = None
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
        _check_identity(score_date, model_name, model_version, feature_service)
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
        self.relative_path = _relative_path(score_date, model_name, model_version, role)
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
        _remove_stale_temps(self.path)
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
                state.file = _open_temp_writer(self.path, table.schema)
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
                _discard(state.file)
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
                temp = _open_temp_writer(self.path, empty)
            temp.writer.close()
            sha256 = _sha256(temp.path, fsync=True)
        except BaseException:
            if temp is not None:
                _discard(temp)
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
        _publish(
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
        columns, violations = _checked_columns(
            batch, BATCH_COLUMNS, _REQUIRED, table, state.features_type
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


def _check_identity(
    score_date: date, model_name: str, model_version: int, feature_service: str
) -> None:
    """What names a file of the log must be valid: a date, a safe name, a positive version."""
    if isinstance(score_date, datetime) or not isinstance(score_date, date):
        raise PredictionLogError(f"score_date must be a date, not {score_date!r}")
    if not _NAME_RE.match(model_name):
        raise PredictionLogError(
            f"model name {model_name!r} cannot name a log file (letters, digits, _ . - only)"
        )
    if isinstance(model_version, bool) or not isinstance(model_version, int) or model_version < 1:
        raise PredictionLogError(f"model_version must be a positive int, not {model_version!r}")
    if not feature_service:
        raise PredictionLogError("feature_service must name the feature service used")


# --- online partition ----------------------------------------------------------------------

ONLINE_TEMP_GRACE_SECONDS = 300.0
"""An online temp file no writer holds is removed only once it is this old: another process
may have just created it and not taken its lock yet."""


def new_flush_id(now: datetime | None = None) -> str:
    """A flush id: the UTC time to the microsecond (files sort by it) and 8 random hex digits."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def online_prediction_id(
    score_date: date, model_name: str, model_version: int, request_id: str
) -> str:
    """The log key of one online prediction: unique per request, not per subscriber."""
    return f"{score_date.isoformat()}/{model_name}/v{model_version}/{ONLINE}/{request_id}"


def online_log_path(
    settings: Settings, score_date: date, model_name: str, model_version: int, flush_id: str
) -> Path:
    """Where one flush of online predictions of (score date, model version) lives."""
    return settings.predictions_dir / _online_relative_path(
        score_date, model_name, model_version, flush_id
    )


def _online_relative_path(
    score_date: date, model_name: str, model_version: int, flush_id: str
) -> str:
    return (
        f"{PARTITION_PREFIX}{score_date.isoformat()}/"
        f"{model_name}-v{model_version}-{ONLINE}-{flush_id}.parquet"
    )


def publish_online_batch(
    settings: Settings,
    batch: pa.Table,
    *,
    score_date: date,
    model_name: str,
    model_version: int,
    feature_service: str,
    flush_id: str | None = None,
) -> LedgerEntry:
    """Publish one flush of online predictions as a new file of the log, with its ledger line.

    ``batch`` holds exactly :data:`ONLINE_BATCH_COLUMNS`, rows of one (score date, model
    version), in the order they were served; role is ``online`` and ``flow_run_id`` null. The
    file's schema is :func:`prediction_log_schema` of the batch's ``features`` struct. The file
    is written to a locked temp sibling, fsynced and renamed onto a name no other file has
    (``flush_id``: :func:`new_flush_id` unless given), then recorded in the ledger; on any
    error nothing is published. Earlier files are never touched.

    Raises:
        PredictionLogError: bad arguments, an empty batch, a flush id already published, or a
            failure while publishing.
        PredictionBatchError: the batch breaks the contract: missing or extra columns, wrong
            types (``features`` not a struct of at least one field), nulls (all but reasons), a
            probability outside [0, 1], an unknown tier, or a prediction id twice in the batch
            or not of this date, model version and role.
    """
    _check_identity(score_date, model_name, model_version, feature_service)
    flush_id = flush_id or new_flush_id()
    if not _FLUSH_ID_RE.match(flush_id):
        raise PredictionLogError(
            f"flush id {flush_id!r} is not of the form YYYYMMDDTHHMMSSffffffZ-xxxxxxxx"
        )
    if isinstance(batch, pa.RecordBatch):
        batch = pa.Table.from_batches([batch])
    relative = _online_relative_path(score_date, model_name, model_version, flush_id)
    if batch.num_rows == 0:
        raise PredictionLogError(f"nothing to publish as {relative}: the batch is empty")
    table = _online_table(batch, relative, score_date, model_name, model_version, feature_service)
    path = settings.predictions_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raise PredictionLogError(
            f"{relative} is already published: online files are never replaced"
        )
    _remove_stale_temps(path, f"{TEMP_PREFIX}*-{ONLINE}-*.parquet.*{TEMP_SUFFIX}")
    temp = _open_temp_writer(path, table.schema)
    try:
        temp.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        temp.writer.close()
        sha256 = _sha256(temp.path, fsync=True)
    except BaseException:
        _discard(temp)
        raise
    entry = LedgerEntry(
        path=relative,
        score_date=score_date,
        model_name=model_name,
        model_version=model_version,
        role=ONLINE,
        rows=table.num_rows,
        sha256=sha256,
        written_at=datetime.now(UTC),
        flow_run_id=None,
    )
    _publish(
        settings,
        temp,
        path,
        entry,
        "`churn audit verify` will report the file as unexpected",
    )
    logger.info("published %s (%d online predictions)", relative, entry.rows)
    return entry


def _online_table(
    batch: pa.Table,
    relative: str,
    score_date: date,
    model_name: str,
    model_version: int,
    feature_service: str,
) -> pa.Table:
    """The checked batch with the constant columns, in the log's column order."""
    where, table = "batch", f"online prediction batch for {relative}"
    columns, violations = _checked_columns(batch, ONLINE_BATCH_COLUMNS, _ONLINE_REQUIRED, table)
    ids = columns["prediction_id"]
    prefix = online_prediction_id(score_date, model_name, model_version, "")
    foreign = pc.sum(
        pc.invert(pc.fill_null(pc.starts_with(ids, prefix), True)).cast(pa.int64())
    ).as_py()
    if foreign:
        violations.append(
            ContractViolation(where, "prediction_id", f"starts with {prefix}", foreign)
        )
    twice = len(ids) - ids.null_count - pc.count_distinct(ids).as_py()
    if twice:
        violations.append(ContractViolation(where, "prediction_id", "unique in the batch", twice))
    if violations:
        raise PredictionBatchError(table, violations)
    schema = prediction_log_schema(columns["features"].type)
    rows = batch.num_rows

    def constant(name: str, value: object) -> pa.Array:
        return pa.repeat(pa.scalar(value, schema.field(name).type), rows)

    arrays = {
        "score_date": constant("score_date", score_date),
        "model_name": constant("model_name", model_name),
        "model_version": constant("model_version", model_version),
        "role": constant("role", ONLINE),
        "feature_service": constant("feature_service", feature_service),
        "flow_run_id": constant("flow_run_id", None),
        **columns,
    }
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _checked_columns(
    batch: pa.Table,
    expected: tuple[str, ...],
    required: tuple[str, ...],
    table: str,
    features_type: pa.StructType | None = None,
) -> tuple[dict[str, pa.ChunkedArray], list[ContractViolation]]:
    """The batch's columns cast to the log's types, and the broken row rules found so far.

    ``features`` must be a struct of at least one field, and of ``features_type`` where given
    (the file's struct, up to the nullability of its fields); it is never cast to another.

    Raises at once (PredictionBatchError) on missing, extra or duplicated columns and on columns
    of the wrong type; returns violations of the row rules (nulls in ``required``, probability
    outside [0, 1], unknown tiers) for the caller to add its own and raise them together.
    """
    where = "batch"
    rows = batch.num_rows
    present = set(batch.column_names)
    violations = [
        ContractViolation(where, name, "column present", rows, "missing from the batch")
        for name in expected
        if name not in present
    ]
    violations += [
        ContractViolation(
            where,
            name,
            "no extra column",
            rows,
            f"a batch has exactly {', '.join(expected)}",
        )
        for name in batch.column_names
        if name not in expected
    ]
    if len(batch.column_names) != len(present):
        violations.append(
            ContractViolation(where, "(columns)", "unique names", rows, str(batch.column_names))
        )
    if violations:
        raise PredictionBatchError(table, violations)

    columns: dict[str, pa.ChunkedArray] = {}
    for name in expected:
        column = batch.column(name)
        if name == "features":
            checked, violation = _checked_features(column, features_type, where, rows)
            if violation is not None:
                violations.append(violation)
            else:
                columns[name] = checked
            continue
        target = PREDICTION_LOG_BASE_SCHEMA.field(name).type
        try:
            columns[name] = column if column.type == target else column.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            violations.append(
                ContractViolation(where, name, f"type {target}", rows, f"{column.type}: {exc}")
            )
    if violations:
        raise PredictionBatchError(table, violations)

    for name in required:
        nulls = columns[name].null_count
        if nulls:
            violations.append(ContractViolation(where, name, "not null", nulls))
    probability = columns["probability"]
    outside = pc.sum(
        pc.or_kleene(
            pc.or_kleene(pc.less(probability, 0.0), pc.greater(probability, 1.0)),
            pc.is_nan(probability),
        ).cast(pa.int64())
    ).as_py()
    if outside:
        violations.append(ContractViolation(where, "probability", "in [0, 1]", outside))
    tiers = columns["risk_tier"]
    unknown = pc.filter(tiers, pc.invert(pc.is_in(tiers, pa.array(RISK_TIERS))))
    unknown = pc.drop_null(unknown)
    if len(unknown):
        examples = ", ".join(repr(v) for v in pc.unique(unknown)[:3].to_pylist())
        violations.append(
            ContractViolation(
                where,
                "risk_tier",
                f"one of {', '.join(RISK_TIERS)}",
                len(unknown),
                f"e.g. {examples}",
            )
        )
    return columns, violations


def _checked_features(
    column: pa.ChunkedArray, features_type: pa.StructType | None, where: str, rows: int
) -> tuple[pa.ChunkedArray, ContractViolation | None]:
    """``features`` with nullable fields, or the rule it breaks: a struct, the file's struct."""
    if not pa.types.is_struct(column.type) or column.type.num_fields == 0:
        rule = "a struct of the feature values (at least one field)"
        return column, ContractViolation(where, "features", rule, rows, f"got {column.type}")
    target = _nullable_fields(column.type)
    if features_type is not None and target != features_type:
        rule = "the same struct in every batch of a file"
        return column, ContractViolation(
            where, "features", rule, rows, _struct_change(features_type, target)
        )
    return (column if column.type == target else column.cast(target)), None


def _struct_change(before: pa.StructType, after: pa.StructType) -> str:
    """What differs between two structs, for a person: fields gone, added, retyped, reordered."""
    old = {before.field(i).name: before.field(i).type for i in range(before.num_fields)}
    new = {after.field(i).name: after.field(i).type for i in range(after.num_fields)}
    changes = [f"{name} missing" for name in old if name not in new]
    changes += [f"{name} added" for name in new if name not in old]
    changes += [
        f"{name} {old[name]} -> {new[name]}"
        for name in old
        if name in new and old[name] != new[name]
    ]
    if not changes:
        changes.append(f"fields reordered: {', '.join(new)}")
    shown = "; ".join(changes[:5])
    more = f"; {len(changes) - 5} more" if len(changes) > 5 else ""
    return f"{shown}{more} (the file's struct has {before.num_fields} fields)"


def _publish(
    settings: Settings, temp: _TempFile, path: Path, entry: LedgerEntry, if_unrecorded: str
) -> None:
    """Rename the finished temp file onto ``path`` and append its ledger line, under the lock.

    The temp file's lock and leftovers are released whatever happens.
    """
    try:
        with _ledger_lock(settings, fcntl.LOCK_EX):
            os.replace(temp.path, path)
            _fsync_dir(path.parent)
            try:
                _append_ledger(settings, entry)
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


_UNIQUE_PER_ROW = ("prediction_id", "subscriber_id")


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The leaf columns worth Parquet's dictionary encoding: all but floats and the per-row ids.

    Probabilities and float features are nearly all distinct, prediction and subscriber ids all
    are: trying a dictionary for them costs time and then bytes (measured on a 500k-row nightly
    batch: 0.49 s and 46 MiB with every column dictionary-encoded, 0.26 s and 37 MiB without).
    """
    leaves: list[str] = []

    def walk(column: pa.Field, path: str) -> None:
        if pa.types.is_struct(column.type):
            for child in column.type:
                walk(child, f"{path}.{child.name}")
        elif not pa.types.is_floating(column.type) and path not in _UNIQUE_PER_ROW:
            leaves.append(path)

    for column in schema:
        walk(column, column.name)
    return leaves


def _open_temp_writer(path: Path, schema: pa.Schema) -> _TempFile:
    """A Parquet writer of ``schema`` on a hidden temp sibling of ``path``, the temp file locked.

    The lock is held until the file is published or dropped, so :func:`verify_log` can tell a
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
    return _TempFile(writer=writer, path=temp, lock_fd=fd)


def _discard(temp: _TempFile) -> None:
    with contextlib.suppress(Exception):  # the writer may already be half closed
        temp.writer.close()
    os.close(temp.lock_fd)
    temp.path.unlink(missing_ok=True)


def _sha256(path: Path, *, fsync: bool = False) -> str:
    """The SHA-256 of ``path``, read in chunks; with ``fsync``, its bytes are flushed to disk too."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _held_by_writer(path: Path) -> bool:
    """Whether a live writer holds ``path`` (a temp file) locked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


def _remove_stale_temps(target: Path, pattern: str | None = None) -> None:
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
        if not _held_by_writer(temp):
            logger.warning("removing %s, left by a writer that did not finish", temp)
            temp.unlink(missing_ok=True)


# --- ledger --------------------------------------------------------------------------------


@contextlib.contextmanager
def _ledger_lock(settings: Settings, mode: int) -> Iterator[None]:
    """Serialise publishing (exclusive) against verifying (shared), across processes."""
    lock = settings.predictions_dir / LOCK_NAME
    if mode == fcntl.LOCK_SH and not lock.exists():
        yield  # nothing was ever published, and a read-only check creates nothing
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _append_ledger(settings: Settings, entry: LedgerEntry) -> None:
    """Append one line, flushed and fsynced; a partial write is cut off again."""
    path = ledger_path(settings)
    with open(path, "ab") as handle:
        size = handle.seek(0, os.SEEK_END)
        try:
            handle.write((entry.to_json() + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            handle.truncate(size)
            raise
    if size == 0:
        _fsync_dir(path.parent)


def read_ledger(settings: Settings) -> list[LedgerEntry]:
    """Every ledger line, oldest first (empty before the first file is published).

    Raises:
        PredictionLogError: a line is not a valid ledger record (named by its number).
    """
    path = ledger_path(settings)
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(LedgerEntry.from_json(line))
        except (ValueError, TypeError, KeyError) as exc:
            raise PredictionLogError(f"{path} line {number} is not a ledger record: {exc}") from exc
    return entries


def latest_entries(settings: Settings) -> dict[str, LedgerEntry]:
    """The expected state of the log: the latest ledger line per path, by path."""
    return {entry.path: entry for entry in read_ledger(settings)}


def log_files(settings: Settings) -> list[Path]:
    """Every published Parquet file of the log on disk, sorted (temp files of writers excluded)."""
    root = settings.predictions_dir
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(LOG_GLOB) if p.is_file())


# --- verify --------------------------------------------------------------------------------


def verify_log(settings: Settings) -> VerifyReport:
    """Check every file of the log against the latest ledger line for its path.

    Reads only; holds the ledger lock shared, so no file is published halfway through.

    Raises:
        PredictionLogError: the ledger itself is not readable.
    """
    root = settings.predictions_dir
    if not root.is_dir():
        return VerifyReport(ok=0)
    with _ledger_lock(settings, fcntl.LOCK_SH):
        lines = read_ledger(settings)
        expected = {entry.path: entry for entry in lines}
        ok = 0
        modified: list[FileMismatch] = []
        missing: list[str] = []
        for rel, entry in sorted(expected.items()):
            path = root / rel
            if not path.is_file():
                missing.append(rel)
                continue
            sha256 = _sha256(path)
            rows = _row_count(path)
            if sha256 == entry.sha256 and rows == entry.rows:
                ok += 1
            else:
                modified.append(FileMismatch(rel, entry.sha256, sha256, entry.rows, rows))
        unexpected: list[str] = []
        in_flight: list[str] = []
        for path in sorted(root.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                continue
            rel = path.relative_to(root).as_posix()
            if rel in expected or rel in (LEDGER_NAME, LOCK_NAME):
                continue
            if _is_temp(path.name) and _held_by_writer(path):
                in_flight.append(rel)
            else:
                unexpected.append(rel)
    report = VerifyReport(
        ok=ok,
        modified=tuple(modified),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        in_flight=tuple(in_flight),
        ledger_lines=len(lines),
    )
    logger.info("verified prediction log %s: %s", root, report.summary())
    return report


def _row_count(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError):
        return None
