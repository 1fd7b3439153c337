"""Read-only SQL over the prediction log and the promotion history, for auditors.

:func:`audit_connection` opens an in-memory DuckDB session with the views of ``sql/audit/``:

* ``predictions``: every row of the log (``read_parquet`` over its files);
* ``promotions``: every alias move of ``$CHURN_HOME/mlflow/promotions.jsonl``;
* ``customer_keys``: the customers' own ids and their numbers (``source/customer_keys.parquet``,
  :mod:`tasks.data.customer_keys`), to join predictions by ``subscriber_id``;
* ``subscriber_predictions``, ``champion_on_date``, ``daily_volumes``, ``shadow_disagreement``.

Before anything is logged (or promoted) the views exist and are empty, with the same columns:
an auditor's script runs the same on day one as on day 300 (``customer_keys`` is empty in a
source whose ids are numbers). ``features`` is a struct of the feature values the model saw
(``features.support_calls_30d``); its fields are those of every feature service in the log,
unified by name (null where a row's service lacks the field), and none before anything is
logged. ``to_json(features)`` shows a row's values as one JSON object.

The session is locked down in three layers. :func:`run_readonly` refuses, before running
anything, every statement that is not a read (only SELECT, a plain or ANALYZE EXPLAIN of a
SELECT, and a few show-type PRAGMAs pass). DuckDB itself may then only touch the log's directory,
the promotion history and the customer keys (``enable_external_access = false`` with
``allowed_directories`` / ``allowed_paths``; no extension is installed or loaded), and the
configuration is locked, so none of that can be switched back. The statement check is the part
that keeps the log read-only: DuckDB would let COPY write into an allowed directory (and it adds
its own spill directory, ``temp_directory``, to the allowed ones).
"""

from __future__ import annotations

import logging
import re

import duckdb
import pyarrow as pa

from tasks.audit.ledger import LOG_GLOB, log_files
from tasks.audit.log_schema import PREDICTION_LOG_BASE_SCHEMA
from tasks.core.errors import ChurnError
from tasks.core.settings import Settings
from tasks.core.sql import connect, load_sql
from tasks.data.customer_keys import CUSTOMER_KEYS, customer_keys_path
from tasks.training.promotions import history_path

logger = logging.getLogger(__name__)

BASE_VIEWS = ("predictions", "promotions", "customer_keys")
DERIVED_VIEWS = (
    "subscriber_predictions",
    "champion_on_date",
    "daily_volumes",
    "shadow_disagreement",
)
AUDIT_VIEWS = BASE_VIEWS + DERIVED_VIEWS

PROMOTIONS_SCHEMA = pa.schema(
    [
        pa.field("at", pa.timestamp("us", tz="UTC")),
        pa.field("model", pa.string()),
        pa.field("alias", pa.string()),
        pa.field("from_version", pa.int32()),
        pa.field("to_version", pa.int32()),
        pa.field("by", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("action", pa.string()),
    ]
)
"""The columns of ``sql/audit/promotions.sql``: the empty view when there is no history yet."""

# Statement types that only read. EXPLAIN runs its statement with ANALYZE, so it is checked too.
_READ_TYPES = {duckdb.StatementType.SELECT}
_EXPLAIN_RE = re.compile(
    r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?:\([^()]*\)\s*)?(?P<inner>.*)$", re.IGNORECASE | re.DOTALL
)
_PRAGMA_RE = re.compile(
    r"^\s*PRAGMA\s+(?P<name>\w+)\s*(?:\(\s*'[^']*'\s*\))?\s*;?\s*$", re.IGNORECASE
)
_READ_PRAGMAS = {"table_info", "show", "show_tables", "show_tables_expanded", "version"}


class AuditError(ChurnError):
    """An audit query failed: bad SQL, an unreadable log file, a missing view."""


class ReadOnlyViolation(AuditError):
    """A statement that is not a read was refused in an audit session; nothing ran."""


def audit_connection(settings: Settings) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB session in UTC with the audit views, limited to reading the log.

    Use :func:`run_readonly` for any SQL that comes from a person.
    """
    conn = connect()
    predictions = settings.predictions_dir
    history = history_path(settings)
    keys = customer_keys_path(settings.source_dir)
    for name, value in (
        ("prediction_files", str(predictions / LOG_GLOB)),
        ("promotion_history", str(history)),
        ("customer_keys_file", str(keys)),
        ("business_timezone", settings.timezone),
    ):
        conn.execute(f"SET VARIABLE {name} = $value", {"value": value})

    if log_files(settings):
        _create_view(conn, "predictions")
    else:
        # No feature service has logged yet: ``features`` is a struct without fields.
        _empty_view(conn, "predictions", PREDICTION_LOG_BASE_SCHEMA)
    if history.is_file():
        _create_view(conn, "promotions")
    else:
        _empty_view(conn, "promotions", PROMOTIONS_SCHEMA)
    if keys.is_file():
        _create_view(conn, "customer_keys")
    else:
        _empty_view(conn, "customer_keys", CUSTOMER_KEYS.arrow_schema)
    for name in DERIVED_VIEWS:
        _create_view(conn, name)

    # Order matters: the allow-lists are fixed before external access goes, and all of it
    # before the configuration is locked.
    conn.execute("SET allowed_directories = $dirs", {"dirs": [f"{predictions}/"]})
    conn.execute("SET allowed_paths = $paths", {"paths": [str(history), str(keys)]})
    conn.execute("SET autoinstall_known_extensions = false")
    conn.execute("SET autoload_known_extensions = false")
    conn.execute("SET enable_external_access = false")
    conn.execute("SET lock_configuration = true")
    return conn


def _create_view(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    try:
        conn.execute(f"CREATE VIEW {name} AS {load_sql(f'audit/{name}')}")
    except duckdb.Error as exc:
        hint = " (`churn audit verify` checks every log file)" if name == "predictions" else ""
        raise AuditError(f"cannot create the audit view {name}{hint}: {exc}") from exc


def _empty_view(conn: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema) -> None:
    # A typed empty table stands in for files that do not exist yet; the views above it work.
    conn.from_arrow(schema.empty_table()).create_view(name)


def check_readonly(conn: duckdb.DuckDBPyConnection, sql: str) -> list[duckdb.Statement]:
    """The statements of ``sql`` if every one of them only reads.

    Raises:
        ReadOnlyViolation: a statement is not a read (named by its type); nothing runs.
        AuditError: ``sql`` does not parse or holds no statement.
    """
    statements = _parse(conn, sql)
    if not statements:
        raise AuditError("no SQL statement given")
    for statement in statements:
        kind = statement.type
        if kind in _READ_TYPES:
            continue
        text = statement.query.strip()
        if kind == duckdb.StatementType.EXPLAIN:
            match = _EXPLAIN_RE.match(text)
            inner = _parse(conn, match.group("inner")) if match else []
            if len(inner) == 1 and inner[0].type in _READ_TYPES:
                continue
            raise ReadOnlyViolation(
                f"refused EXPLAIN of something other than a single SELECT: {_short(text)}"
            )
        if kind == duckdb.StatementType.PRAGMA:
            match = _PRAGMA_RE.match(text)
            if match and match.group("name").lower() in _READ_PRAGMAS:
                continue
        raise ReadOnlyViolation(
            f"refused {kind.name} statement: audit sessions are read-only "
            f"(SELECT, EXPLAIN SELECT, DESCRIBE, SHOW only): {_short(text)}"
        )
    return statements


def run_readonly(conn: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """Run ``sql`` (one or more read statements) and return the last statement's result.

    Every statement is checked before the first runs.

    Raises:
        ReadOnlyViolation: a statement is not a read; nothing ran.
        AuditError: the SQL does not parse, or DuckDB fails running it (unknown column,
            unreadable file, a path outside the log …).
    """
    statements = check_readonly(conn, sql)
    result = pa.table({})
    try:
        for statement in statements:
            relation = conn.sql(statement.query)
            result = relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.Error as exc:
        raise AuditError(f"audit query failed: {exc}") from exc
    return result


def subscriber_report(settings: Settings, subscriber_id: int) -> pa.Table:
    """One subscriber's predictions over time (``subscriber_predictions``), oldest first.

    One row per (score_date, model_version, role); empty if the subscriber was never scored.
    """
    conn = audit_connection(settings)
    try:
        return conn.sql(
            load_sql("audit/subscriber_report"), params={"subscriber_id": subscriber_id}
        ).to_arrow_table()
    except duckdb.Error as exc:
        raise AuditError(f"report of subscriber {subscriber_id} failed: {exc}") from exc
    finally:
        conn.close()


def _parse(conn: duckdb.DuckDBPyConnection, sql: str) -> list[duckdb.Statement]:
    try:
        return conn.extract_statements(sql)
    except duckdb.Error as exc:
        raise AuditError(f"not valid SQL: {exc}") from exc


def _short(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
