"""The online partition of the prediction log: each flush of the real-time endpoint, a file of its own.

``score_date=YYYY-MM-DD/{model}-v{version}-online-{flush_id}.parquet``: only ever added, never
replaced (a subscriber may be scored many times a day), named by a flush id that sorts by time,
each with its own ledger line. The key of an online row is its ``prediction_id``.
"""

from __future__ import annotations

import logging
import re
import secrets
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tasks.audit.ledger import PARTITION_PREFIX, TEMP_PREFIX, TEMP_SUFFIX, LedgerEntry, sha256_file
from tasks.audit.log_schema import (
    ONLINE,
    ONLINE_BATCH_COLUMNS,
    ONLINE_REQUIRED,
    ROW_GROUP_ROWS,
    PredictionBatchError,
    PredictionLogError,
    check_identity,
    checked_columns,
    prediction_log_schema,
)
from tasks.audit.prediction_log import (
    discard_temp,
    open_temp_writer,
    publish_temp,
    remove_stale_temps,
)
from tasks.core.errors import ContractViolation
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)
_FLUSH_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{12}Z-[0-9a-f]{8}$")


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
    check_identity(score_date, model_name, model_version, feature_service)
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
    remove_stale_temps(path, f"{TEMP_PREFIX}*-{ONLINE}-*.parquet.*{TEMP_SUFFIX}")
    temp = open_temp_writer(path, table.schema)
    try:
        temp.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        temp.writer.close()
        sha256 = sha256_file(temp.path, fsync=True)
    except BaseException:
        discard_temp(temp)
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
    publish_temp(
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
    columns, violations = checked_columns(batch, ONLINE_BATCH_COLUMNS, ONLINE_REQUIRED, table)
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
