"""Realized performance: once a night's 30-day outcome is known, how good were its predictions?

For every score date of the prediction log whose label horizon has passed (and that the source
data covers that far), the realized label of each scored subscriber is computed by the training
label's own rule (``sql/monitoring/realized_labels.sql``, the rule of
``sql/labels/churned_30d.sql``), joined to that day's predictions
(``sql/monitoring/realized_outcomes.sql``) and judged per (model version, role) with
:func:`tasks.training.evaluate.holdout_metrics`, the function that judged the model at training time, with
the same retention capacity K. So a realized AUC and a holdout AUC are the same measurement on
different days.

History layout (DESIGN §3)::

    $CHURN_HOME/monitoring/performance/score_date=YYYY-MM-DD.parquet

one file per matured score date, :data:`HISTORY_SCHEMA`, written atomically; re-evaluating a
date replaces its file and nothing else. Each file records, in its Parquet metadata, the
checksums (from the prediction log's ledger) of the log files it was computed from: a date whose
log was scored again since is evaluated again on the next run.

Findings (:func:`~tasks.monitoring.performance_findings.performance_findings`) compare the champion's realized AUC with its holdout AUC
and with the shadow's on the same days, per day and over a window of the last
:data:`~tasks.monitoring.performance_findings.WINDOW_DAYS` matured score dates. The window's AUC is the *mean of the daily AUCs*: daily
files keep no subscriber rows, so a pooled AUC cannot be formed, and consecutive days share most
of their churners anyway (a churn event is a positive on every day of the 30 before it), so
pooling would add little. A single day at a small base is noisy (day-to-day standard deviation
0.011 AUC at 5,000 subscribers and a 3% churn rate); the window is the steadier signal.

Measured on a simulated ``support_decline`` world (5,000 subscribers, 330 days, drift from day
200, champion trained on day 195 with holdout AUC 0.702): its realized AUC went from 0.711
(days 166-170) to 0.695 on average after the drift (lowest 7-day mean 0.678), never more than
the default 0.05 below its holdout AUC, while its realized churn rate ran 1.35x its mean
probability (1.02-1.07x before). Hence the calibration finding: concept drift that strengthens a
signal the model already ranks by moves the level of churn more than the ranking.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.audit.ledger import PARTITION_PREFIX, latest_entries, log_files
from tasks.core.errors import ChurnError
from tasks.core.files import PARQUET_OPTIONS, atomic_path
from tasks.core.settings import Settings
from tasks.core.sql import connect, load_sql
from tasks.data.sources import create_spine, register_sources, source_date_range
from tasks.training.evaluate import EvaluationError, holdout_metrics

logger = logging.getLogger(__name__)

HISTORY_DIR = "performance"
FILE_PREFIX = PARTITION_PREFIX
LOG_FILES_KEY = b"churn.performance.log_files"

HISTORY_SCHEMA = pa.schema(
    [
        pa.field("score_date", pa.date32(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        pa.field("unlabelled", pa.int64(), nullable=False),
        pa.field("positives", pa.int64(), nullable=False),
        pa.field("realized_rate", pa.float64()),
        pa.field("mean_probability", pa.float64()),
        pa.field("roc_auc", pa.float64()),
        pa.field("pr_auc", pa.float64()),
        pa.field("precision_at_k", pa.float64()),
        pa.field("recall_at_k", pa.float64()),
        pa.field("lift_at_k", pa.float64()),
        pa.field("calibration_error", pa.float64()),
        pa.field("brier", pa.float64()),
        pa.field("capacity", pa.int32(), nullable=False),
        pa.field("horizon_days", pa.int32(), nullable=False),
        pa.field("note", pa.string()),
    ]
)

_METRICS = (
    "roc_auc",
    "pr_auc",
    "precision_at_k",
    "recall_at_k",
    "lift_at_k",
    "calibration_error",
    "brier",
)


class PerformanceError(ChurnError):
    """Realized performance cannot be computed: labels not mature yet, or a history file unreadable."""


class LabelsNotMature(PerformanceError):
    """A score date's label horizon has not passed, or the source data does not reach its end."""


# ----------------------------------------------------------------------------- paths


def history_dir(settings: Settings) -> Path:
    """``$CHURN_HOME/monitoring/performance``: one history file per matured score date."""
    return settings.monitoring_dir / HISTORY_DIR


def history_path(settings: Settings, score_date: date) -> Path:
    return history_dir(settings) / f"{FILE_PREFIX}{score_date.isoformat()}.parquet"


# ----------------------------------------------------------------------------- which dates


def labels_known_through(settings: Settings, as_of: date) -> date:
    """The last day whose cancellations are known at ``as_of``: ``as_of`` or the source's end."""
    return min(as_of, source_date_range(settings.source_dir)[1])


def _log_fingerprints(settings: Settings) -> dict[date, dict[str, str]]:
    """Per score date of the log, {file path relative to the log: ledger sha256} of its files.

    A file the ledger does not know (it should; ``churn audit verify`` reports it) is named by its
    size and modification time instead, so a change to it is still seen.
    """
    root = settings.predictions_dir
    ledger = latest_entries(settings)
    days: dict[date, dict[str, str]] = {}
    for path in log_files(settings):
        rel = path.relative_to(root).as_posix()
        try:
            day = date.fromisoformat(path.parent.name.removeprefix(PARTITION_PREFIX))
        except ValueError:
            logger.warning("ignoring %s: its folder does not name a score date", rel)
            continue
        entry = ledger.get(rel)
        if entry is not None:
            token = entry.sha256
        else:
            stat = path.stat()
            token = f"unrecorded:{stat.st_size}:{stat.st_mtime_ns}"
        days.setdefault(day, {})[rel] = token
    return days


def _stored_fingerprint(path: Path) -> dict[str, str] | None:
    """The log checksums a history file was computed from; None when there is no such file."""
    if not path.is_file():
        return None
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        logger.warning("history file %s is unreadable (%s): evaluating its date again", path, exc)
        return None
    raw = metadata.get(LOG_FILES_KEY)
    return json.loads(raw) if raw else None


def matured_score_dates(settings: Settings, as_of: date, *, recompute: bool = False) -> list[date]:
    """Score dates of the log whose realized labels are known at ``as_of`` and not yet evaluated.

    A score date d is mature when ``d + label_horizon_days`` is on or before both ``as_of`` and
    the last day of the source data (training labels use the same rule). Without ``recompute``,
    dates already in the history are left out, unless their log files changed since (scored
    again: another checksum in the ledger). Oldest first; the log's files are listed, not read.

    Raises:
        SourceDataMissing: there is no source data (no manifest).
        PredictionLogError: the log's ledger is not readable.
    """
    return _due(settings, as_of, _log_fingerprints(settings), recompute=recompute)


def _due(
    settings: Settings,
    as_of: date,
    fingerprints: Mapping[date, dict[str, str]],
    *,
    recompute: bool,
) -> list[date]:
    if not fingerprints:
        return []
    known = labels_known_through(settings, as_of)
    horizon = timedelta(days=settings.label_horizon_days)
    mature = sorted(d for d in fingerprints if d + horizon <= known)
    waiting = len(fingerprints) - len(mature)
    if waiting:
        logger.info(
            "%d score date(s) wait for their %d-day labels (known through %s)",
            waiting,
            settings.label_horizon_days,
            known,
        )
    if recompute:
        return mature
    return [d for d in mature if _stored_fingerprint(history_path(settings, d)) != fingerprints[d]]


# ----------------------------------------------------------------------------- labels and metrics


def _require_mature(settings: Settings, score_date: date) -> None:
    _, source_end = source_date_range(settings.source_dir)
    horizon_end = score_date + timedelta(days=settings.label_horizon_days)
    if horizon_end > source_end:
        raise LabelsNotMature(
            f"labels of score date {score_date} need source data through {horizon_end} "
            f"({settings.label_horizon_days}-day horizon); the source ends on {source_end}"
        )


def _label_session(settings: Settings, score_date: date) -> duckdb.DuckDBPyConnection:
    """A DuckDB session with the sources and temp table ``realized_labels`` of ``score_date``."""
    _require_mature(settings, score_date)
    con = connect()
    register_sources(con, settings.source_dir)
    create_spine(con, [score_date])
    con.execute(
        "CREATE TEMP TABLE realized_labels AS " + load_sql("monitoring/realized_labels"),
        {"horizon_days": settings.label_horizon_days},
    )
    return con


def realized_labels(settings: Settings, score_date: date) -> pa.Table:
    """The realized ``churned_30d`` of everyone in service on ``score_date``.

    Grain: one row per subscriber_id (ordered by it); columns subscriber_id (int64),
    churned_30d (int8: 1 when the first day without service is in (d, d + horizon]). The same
    values the training frame gives that subscriber and day.

    Raises:
        LabelsNotMature: the source data ends before ``score_date + label_horizon_days``.
        SourceDataMissing: a source table is missing.
    """
    con = _label_session(settings, score_date)
    try:
        return con.sql("SELECT subscriber_id, churned_30d FROM realized_labels").to_arrow_table()
    finally:
        con.close()


def _day_files(settings: Settings, score_date: date) -> list[Path]:
    folder = settings.predictions_dir / f"{PARTITION_PREFIX}{score_date.isoformat()}"
    return [p for p in log_files(settings) if p.parent == folder]


def evaluate_day(settings: Settings, score_date: date) -> pa.Table:
    """Realized metrics of every model version and role that scored ``score_date``.

    Grain: one row per (model_version, role) of ``settings.model_name`` in that day's log
    (:data:`HISTORY_SCHEMA`, ordered by version then role); empty when nothing was logged.

    Raises:
        LabelsNotMature: the label horizon of ``score_date`` is not covered by the source data.
        SourceDataMissing: a source table is missing.
    """
    files = _day_files(settings, score_date)
    if not files:
        return HISTORY_SCHEMA.empty_table()
    con = _label_session(settings, score_date)
    try:
        outcomes = con.sql(
            load_sql("monitoring/realized_outcomes"),
            params={
                "files": [str(f) for f in files],
                "score_date": score_date,
                "model_name": settings.model_name,
            },
        ).to_arrow_table()
    except duckdb.Error as exc:
        raise PerformanceError(f"cannot join the log of {score_date} to its labels: {exc}") from exc
    finally:
        con.close()
    if outcomes.num_rows == 0:  # only other models, or a night with nobody to score
        return HISTORY_SCHEMA.empty_table()
    versions = outcomes.column("model_version").to_numpy()
    role_codes = pc.dictionary_encode(outcomes.column("role")).combine_chunks()
    roles = role_codes.dictionary.to_pylist()
    codes = role_codes.indices.to_numpy()
    probability = outcomes.column("probability").to_numpy()
    label = outcomes.column("churned_30d")
    labelled = np.asarray(pc.is_valid(label).to_numpy(), dtype=bool)
    y = np.asarray(pc.fill_null(label, 0).to_numpy(), dtype=np.float64)
    # Rows come ordered by (version, role, subscriber_id): each group is one contiguous run.
    key = versions.astype(np.int64) * len(roles) + codes
    starts = np.flatnonzero(np.diff(key, prepend=-1) != 0)
    rows = []
    for start, end in zip(starts, [*starts[1:], len(key)], strict=True):
        mask = labelled[start:end]
        rows.append(
            _day_row(
                settings,
                score_date,
                int(versions[start]),
                roles[codes[start]],
                y[start:end][mask],
                probability[start:end][mask],
                unlabelled=int((~mask).sum()),
            )
        )
    if any(r["unlabelled"] for r in rows):
        logger.warning(
            "%s: %d logged prediction(s) of subscribers not in service per the sources; not judged",
            score_date,
            sum(r["unlabelled"] for r in rows),
        )
    return pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA)


def _day_row(
    settings: Settings,
    score_date: date,
    version: int,
    role: str,
    y: np.ndarray,
    p: np.ndarray,
    *,
    unlabelled: int,
) -> dict[str, object]:
    n = len(y)
    row: dict[str, object] = {
        "score_date": score_date,
        "model_name": settings.model_name,
        "model_version": version,
        "role": role,
        "n": n,
        "unlabelled": unlabelled,
        "positives": int(y.sum()),
        "realized_rate": float(y.mean()) if n else None,
        "mean_probability": float(p.mean()) if n else None,
        "capacity": settings.retention_capacity,
        "horizon_days": settings.label_horizon_days,
        "note": None,
        **dict.fromkeys(_METRICS),
    }
    try:
        # One score date: every row is one "snapshot day", as in the holdout's per-day top K.
        metrics = holdout_metrics(y, p, np.zeros(n, dtype=np.int64), settings.retention_capacity)
    except EvaluationError as exc:
        row["note"] = str(exc)
        return row
    row |= {name: metrics[name] for name in _METRICS}
    return row


# ----------------------------------------------------------------------------- history


def update_history(settings: Settings, as_of: date, *, recompute: bool = False) -> pa.Table:
    """Evaluate every score date :func:`matured_score_dates` gives and write its history file.

    Each date's file is written atomically (a rerun replaces it; other dates are untouched), with
    the log checksums it was computed from in its metadata. Returns the rows written by this
    call (:data:`HISTORY_SCHEMA`, oldest first; empty when nothing new matured); the whole
    history is :func:`read_history`.
    """
    fingerprints = _log_fingerprints(settings)
    written = []
    for score_date in _due(settings, as_of, fingerprints, recompute=recompute):
        table = evaluate_day(settings, score_date)
        # Metadata from before the evaluation: a log rewritten meanwhile is evaluated again.
        stamped = table.replace_schema_metadata(
            {LOG_FILES_KEY: json.dumps(fingerprints.get(score_date, {}), sort_keys=True)}
        )
        with atomic_path(history_path(settings, score_date)) as tmp:
            pq.write_table(stamped, tmp, **PARQUET_OPTIONS)
        written.append(table)
        logger.info("realized performance of %s: %d model row(s)", score_date, table.num_rows)
    if not written:
        return HISTORY_SCHEMA.empty_table()
    return pa.concat_tables(written)


def read_history(settings: Settings) -> pa.Table:
    """Every evaluated score date: :data:`HISTORY_SCHEMA`, by score_date, model, version, role.

    Raises:
        PerformanceError: a history file cannot be read (named).
    """
    folder = history_dir(settings)
    files = sorted(folder.glob(f"{FILE_PREFIX}*.parquet")) if folder.is_dir() else []
    tables = []
    for path in files:
        try:
            tables.append(pq.read_table(path, schema=HISTORY_SCHEMA).replace_schema_metadata(None))
        except (pa.ArrowException, OSError) as exc:
            raise PerformanceError(
                f"history file {path} is unreadable: {exc}; "
                "`churn performance --recompute` writes it again"
            ) from exc
    if not tables:
        return HISTORY_SCHEMA.empty_table()
    return pa.concat_tables(tables).sort_by(
        [
            ("score_date", "ascending"),
            ("model_name", "ascending"),
            ("model_version", "ascending"),
            ("role", "ascending"),
        ]
    )
