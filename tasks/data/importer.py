"""Import a user's own data (CSV or Parquet, one snapshot or a history) into the source schema.

``churn import PATH --mapping MAPPING.yaml`` calls :func:`import_file`. The mapping says which
source table the file fills and how its columns become that table's columns::

    table: subscribers            # target source table (one of SOURCE_TABLES)
    columns:                      # file column -> target column
      customerID: subscriber_id
      Contract: contract_type
    values:                       # optional: per target column, file value -> target value
      contract_type: {"Month-to-month": month_to_month, "One year": one_year, "Two year": two_year}
    constants:                    # optional: target columns filled with one value
      payment_method: autopay
    snapshot_date: 2026-01-31     # optional: the day the file was observed (exported)
    tenure: {column: tenure, unit: months}  # subscribers only: signup_date from a tenure column
    date_format: "%Y-%m-%d"       # optional: strftime format of string dates (default: inferred)

What a usable source needs: all six source tables, ``subscribers``, ``usage_daily``,
``billing``, ``support_tickets``, ``plan_changes`` and ``cancellations`` (the feature build
refuses a source directory that lacks one), each imported with its own mapping. The event
tables (``billing``, ``support_tickets``, ``plan_changes``, ``cancellations``) may be imported
from a file with a header and no rows when there is nothing to record; ``subscribers`` and
``usage_daily`` need rows, and ``usage_daily`` sets the days the source covers.

Churn is not a column: a subscriber churned when a ``cancellations`` row (``subscriber_id``,
``cancel_date`` = first day without service, ``reason``) says so. A file column such as
``Churn``/``Exited`` is therefore never mapped (the importer ignores it with a warning); import
the churned subscribers as their own file with ``table: cancellations`` and a ``cancel_date``.
Labels are only as mature as the cancellations data reaches: the 30-day label of a snapshot
day is known only once cancellations are recorded through the 30 days that follow it, so
cancellations that stop earlier make the newest labels look like "stayed".

``snapshot_date`` and ``tenure`` (a snapshot export is an observation on ``snapshot_date``):

* for the event and daily tables (``usage_daily``, ``billing``, …) ``snapshot_date`` fills the
  table's date column when the file has none: the rows were observed on that day;
* it never fills ``subscribers.signup_date``: a subscriber seen in a snapshot did not sign up on
  that day. ``signup_date`` is mapped from a file column, or derived from a tenure column with
  ``tenure: {column: FILE_COLUMN, unit: months|days}``, which needs ``snapshot_date``:
  ``signup_date = snapshot_date - tenure``, a month being 30.4375 days, rounded down to whole
  days (tenure 0 signed up on the snapshot day). A tenure that is not a number, negative or
  over 100 years is a violation of ``signup_date`` (``type``, ``min``, ``max``).

Rules of the mapping (any breach raises :class:`ImportMappingError` naming the culprit):

* ``table`` must be a source table; every target column must belong to it; a target is filled
  once (from ``columns``, ``constants``, ``snapshot_date`` or ``tenure``), and every
  non-nullable column of the table must be filled. File columns named in ``columns`` or
  ``tenure`` must exist in the file; other file columns are ignored.
* ``values`` keys are compared with the file's text (CSV) or the value's text form (Parquet);
  values without an entry pass through unchanged (and the contract judges them). Booleans are
  YAML 1.2 ``true``/``false`` only, so ``Yes``/``No`` keys stay strings.
* Unknown top-level keys are rejected (a typo would otherwise be silently ignored).

What happens to the data: a missing, empty, corrupt or unparseable file raises
:class:`ImportFileError` naming it. CSV cells are read as text, trimmed, and empty cells are
nulls. Each column is cast to the table's arrow type; a value that cannot be cast becomes a
``type`` violation (column, rows, examples), not an exception. Then the table's full data
contract runs (:func:`tasks.data.contracts.check_table`). All violations are raised together in one
:class:`DataContractError`, and nothing is written unless the whole import passes.

Writing (each file atomically, rows sorted by the table's keys, exactly the spec's arrow schema):

* single-file tables are upserted by ``spec.keys`` into ``<source_dir>/<table>.parquet``:
  new keys appended, existing keys replaced;
* partitioned tables (``usage_daily``) get their own part file
  ``<source_dir>/<table>/part-import-<sha256 of the input, 16 hex>.parquet``, so importing the
  same file again replaces it. Keys already present in *other* parts are a ``unique_keys``
  violation: the import is refused rather than duplicating rows;
* ``<source_dir>/_manifest.json`` is updated in place: ``source`` (``import``, or ``mixed`` if
  another producer wrote the directory), ``start``/``end`` (the days covered: the range of the
  daily table ``usage_daily`` once it exists, else the union of the tables' ranges),
  ``tables.<table>`` (rows, date column, first and last date of the whole table after the
  import) and ``imports`` (one entry per input file and table, with its ``snapshot_date`` if
  the mapping gave one). Keys written by other code are kept.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from tasks.core.errors import (
    ChurnError,
    ContractViolation,
    DataContractError,
    ImportFileError,
    ImportMappingError,
)
from tasks.core.files import atomic_path, write_parquet_atomic
from tasks.core.layout import MANIFEST_NAME, table_glob, table_path
from tasks.core.schema import SOURCE_TABLES, Column, TableSpec
from tasks.core.sql import connect
from tasks.data.contracts import check_table, is_daily, type_family, violation_sort_key

logger = logging.getLogger(__name__)

MAPPING_KEYS = (
    "table",
    "columns",
    "values",
    "constants",
    "snapshot_date",
    "tenure",
    "date_format",
)
MAX_EXAMPLES = 5
HASH_PREFIX = 16
TRUE_TEXT = frozenset({"true", "t", "yes", "y", "1"})
FALSE_TEXT = frozenset({"false", "f", "no", "n", "0"})

TENURE_TARGETS = {"subscribers": "signup_date"}
"""Table → the column a tenure column derives (``snapshot_date - tenure``)."""
TENURE_UNIT_DAYS = {"months": 30.4375, "days": 1.0}
"""Days per tenure unit (a month is 365.25 / 12 days)."""
MAX_TENURE_DAYS = 36_525
"""A tenure over 100 years is a unit mix-up, not a customer."""
EVENT_TABLES = ("billing", "support_tickets", "plan_changes", "cancellations")
"""Tables that may legitimately be empty: an import of a header-only file writes no rows."""
LABEL_LIKE = re.compile(r"churn|attrition|exited", re.IGNORECASE)
"""File column names that look like a churn label (churn is imported as cancellations rows)."""


@dataclass(frozen=True)
class ImportSummary:
    """What one import wrote."""

    table: str
    rows: int
    written: list[Path]


@dataclass(frozen=True)
class Tenure:
    """``target`` (e.g. ``signup_date``) is ``snapshot_date`` minus the file ``column`` in ``unit``."""

    column: str
    unit: str
    target: str

    @property
    def unit_days(self) -> float:
        return TENURE_UNIT_DAYS[self.unit]


@dataclass(frozen=True)
class ImportMapping:
    """A validated mapping file."""

    spec: TableSpec
    columns: dict[str, str]
    """File column → target column."""
    values: dict[str, dict[str, Any]]
    """Target column → {file value as text → target value}."""
    constants: dict[str, Any]
    snapshot_date: date | None
    """The day the file was observed."""
    date_format: str | None
    tenure: Tenure | None = None

    @property
    def sources(self) -> dict[str, str]:
        """Target column → file column."""
        return {target: source for source, target in self.columns.items()}

    @property
    def file_columns(self) -> list[str]:
        """Every file column the mapping reads, in mapping order."""
        names = list(self.columns)
        if self.tenure is not None and self.tenure.column not in names:
            names.append(self.tenure.column)
        return names

    @property
    def snapshot_fills(self) -> str | None:
        """The date column ``snapshot_date`` fills: the table's date column, unless the mapping
        fills it otherwise or the table is one whose date is not an observation date."""
        spec = self.spec
        if (
            self.snapshot_date is None
            or spec.date_column is None
            or spec.name in TENURE_TARGETS
            or spec.date_column in self.columns.values()
            or spec.date_column in self.constants
        ):
            return None
        return spec.date_column


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def import_file(path: Path, mapping_path: Path, source_dir: Path) -> ImportSummary:
    """Import ``path`` into ``source_dir`` as described by ``mapping_path`` (see module doc)."""
    path, source_dir = Path(path), Path(source_dir)
    mapping = load_mapping(Path(mapping_path))
    spec = mapping.spec
    available = input_columns(path)
    _warn_label_columns(path, available, mapping)
    raw = read_input(path, mapping.file_columns, available)
    if raw.num_rows == 0 and spec.name not in EVENT_TABLES:
        raise ImportFileError(
            f"{path} has no data rows ({spec.name} needs rows; only "
            f"{', '.join(EVENT_TABLES)} may be imported empty)"
        )

    table, cast_failures = build_table(mapping, raw)
    report = check_table(spec, table)
    violations = _merge(spec, cast_failures, report.violations)

    digest = file_sha256(path)
    target = _target_file(source_dir, spec, digest)
    if spec.partitioned:
        violations += _overlap_with_other_parts(spec, table, target)
    if violations:
        violations.sort(key=lambda v: violation_sort_key(spec, v))
        raise DataContractError(spec.name, violations)

    # It passed, so no non-nullable column holds a null: the exact schema now applies.
    data = table.cast(spec.arrow_schema).sort_by([(k, "ascending") for k in spec.keys])
    if not spec.partitioned:
        data = _upsert(spec, data, target)
    write_parquet_atomic(data, target)
    manifest = update_manifest(
        source_dir, spec, path, digest, table, snapshot_date=mapping.snapshot_date
    )
    logger.info("imported %d %s rows from %s into %s", table.num_rows, spec.name, path, target)
    return ImportSummary(table=spec.name, rows=table.num_rows, written=[target, manifest])


# --------------------------------------------------------------------------------------------
# Mapping
# --------------------------------------------------------------------------------------------


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: ``Yes``/``No``/``on``/``off`` stay strings.

    Category labels such as ``Yes``/``No`` are common value-map keys; YAML 1.1 would turn them
    into booleans and they would never match the file's text.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_mapping(mapping_path: Path) -> ImportMapping:
    """Read and validate a mapping file; raise :class:`ImportMappingError` naming what is wrong."""
    try:
        doc = yaml.load(mapping_path.read_text(), Loader=_Yaml12Loader)  # a SafeLoader subclass
    except FileNotFoundError as exc:
        raise ImportMappingError(f"mapping file {mapping_path} not found") from exc
    except yaml.YAMLError as exc:
        raise ImportMappingError(f"mapping file {mapping_path} is not valid YAML: {exc}") from exc
    where = str(mapping_path)
    if not isinstance(doc, dict):
        raise ImportMappingError(f"{where}: expected a mapping with 'table' and 'columns'")
    unknown = sorted(set(map(str, doc)) - set(MAPPING_KEYS))
    if unknown:
        raise ImportMappingError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(MAPPING_KEYS)}"
        )

    spec = _table(doc.get("table"), where)
    names = [c.name for c in spec.columns]
    columns = _columns(doc.get("columns"), spec, names, where)
    values = _values(doc.get("values"), spec, names, columns, where)
    constants = _constants(doc.get("constants"), spec, names, columns, where)
    date_format = doc.get("date_format")
    if date_format is not None and not isinstance(date_format, str):
        raise ImportMappingError(f"{where}: date_format must be a string like '%Y-%m-%d'")
    snapshot = _snapshot_date(
        doc.get("snapshot_date"), spec, columns, constants, date_format, where
    )
    tenure = _tenure(doc.get("tenure"), spec, columns, constants, snapshot, where)
    mapping = ImportMapping(spec, columns, values, constants, snapshot, date_format, tenure)

    filled = set(columns.values()) | set(constants)
    filled |= {mapping.snapshot_fills} - {None}
    filled |= {tenure.target} if tenure else set()
    derivable = TENURE_TARGETS.get(spec.name)
    if derivable is not None and derivable not in filled:
        raise ImportMappingError(
            f"{where}: {spec.name}.{derivable} is not filled: map a file column to {derivable} "
            f"(columns: {{FILE_COLUMN: {derivable}}}), or derive it from a tenure column with "
            "tenure: {column: FILE_COLUMN, unit: months} plus snapshot_date "
            "(snapshot_date alone is the day the file was observed, not a sign-up date)"
        )
    unfilled = [c.name for c in spec.columns if not c.nullable and c.name not in filled]
    if unfilled:
        raise ImportMappingError(
            f"{where}: required column(s) of {spec.name} not filled: {', '.join(unfilled)} "
            "(map a file column to them, or give a constant)"
        )
    return mapping


def _table(value: Any, where: str) -> TableSpec:
    if value not in SOURCE_TABLES:
        raise ImportMappingError(
            f"{where}: unknown target table {value!r}; choose one of {', '.join(SOURCE_TABLES)}"
        )
    return SOURCE_TABLES[value]


def _check_target(target: Any, spec: TableSpec, names: list[str], where: str, key: str) -> str:
    if not isinstance(target, str) or target not in names:
        raise ImportMappingError(
            f"{where}: {key}: unknown target column {target!r} of {spec.name}; "
            f"columns are {', '.join(names)}"
        )
    return target


def _columns(value: Any, spec: TableSpec, names: list[str], where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise ImportMappingError(f"{where}: 'columns' must map file columns to {spec.name} columns")
    columns: dict[str, str] = {}
    for source, target in value.items():
        target = _check_target(target, spec, names, where, f"columns.{source}")
        if target in columns.values():
            raise ImportMappingError(f"{where}: target column {target!r} is mapped twice")
        columns[str(source)] = target
    return columns


def _values(
    value: Any, spec: TableSpec, names: list[str], columns: dict[str, str], where: str
) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImportMappingError(f"{where}: 'values' must map target columns to value maps")
    values: dict[str, dict[str, Any]] = {}
    for target, table in value.items():
        target = _check_target(target, spec, names, where, f"values.{target}")
        if target not in columns.values():
            raise ImportMappingError(
                f"{where}: values.{target}: {target} is not filled from a file column"
            )
        if not isinstance(table, dict):
            raise ImportMappingError(f"{where}: values.{target} must map file values to values")
        values[target] = {_text(k): v for k, v in table.items()}
    return values


def _constants(
    value: Any, spec: TableSpec, names: list[str], columns: dict[str, str], where: str
) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImportMappingError(f"{where}: 'constants' must map target columns to values")
    constants: dict[str, Any] = {}
    for target, constant in value.items():
        target = _check_target(target, spec, names, where, f"constants.{target}")
        if target in columns.values():
            raise ImportMappingError(
                f"{where}: constants.{target}: {target} is also mapped from a file column"
            )
        column = spec.column(target)
        if constant is None:
            if not column.nullable:
                raise ImportMappingError(f"{where}: constants.{target}: {target} cannot be null")
            constants[target] = None
            continue
        cast, failures, _ = _cast(pa.chunked_array([[_text(constant)]], pa.string()), column, None)
        if failures:
            raise ImportMappingError(
                f"{where}: constants.{target}: {constant!r} is not a valid {type_family(column.type)}"
            )
        constants[target] = cast[0].as_py()
    return constants


def _snapshot_date(
    value: Any,
    spec: TableSpec,
    columns: dict[str, str],
    constants: dict[str, Any],
    date_format: str | None,
    where: str,
) -> date | None:
    if value is None:
        return None
    if spec.date_column is None:
        raise ImportMappingError(f"{where}: snapshot_date given but {spec.name} has no date column")
    if spec.name not in TENURE_TARGETS and (
        spec.date_column in columns.values() or spec.date_column in constants
    ):
        raise ImportMappingError(
            f"{where}: snapshot_date given but {spec.date_column} is already filled by the mapping"
        )
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        if date_format:
            return datetime.strptime(str(value), date_format).date()
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise ImportMappingError(f"{where}: snapshot_date {value!r} is not a date") from exc


def _tenure(
    value: Any,
    spec: TableSpec,
    columns: dict[str, str],
    constants: dict[str, Any],
    snapshot: date | None,
    where: str,
) -> Tenure | None:
    """The validated ``tenure`` entry; for subscribers, also that ``snapshot_date`` has a use."""
    target = TENURE_TARGETS.get(spec.name)
    if value is None:
        if target is not None and snapshot is not None:
            raise ImportMappingError(
                f"{where}: snapshot_date does not fill {spec.name}.{target}: it is the day the "
                f"file was observed, not a sign-up date; to derive {target} from it add "
                "tenure: {column: FILE_COLUMN, unit: months}, or remove snapshot_date"
            )
        return None
    if target is None:
        raise ImportMappingError(
            f"{where}: tenure derives {', '.join(f'{t}.{c}' for t, c in TENURE_TARGETS.items())} "
            f"only; {spec.name} has no use for it"
        )
    usage = "tenure must look like {column: FILE_COLUMN, unit: months} (unit: months or days)"
    if not isinstance(value, dict) or set(map(str, value)) != {"column", "unit"}:
        raise ImportMappingError(f"{where}: {usage}")
    column, unit = value["column"], value["unit"]
    if not isinstance(column, str) or not column:
        raise ImportMappingError(f"{where}: tenure.column must name a file column; {usage}")
    if unit not in TENURE_UNIT_DAYS:
        raise ImportMappingError(
            f"{where}: tenure.unit {unit!r} unknown; use {' or '.join(TENURE_UNIT_DAYS)}"
        )
    if target in columns.values() or target in constants:
        raise ImportMappingError(
            f"{where}: tenure given but {target} is already filled by the mapping"
        )
    if snapshot is None:
        raise ImportMappingError(
            f"{where}: tenure needs snapshot_date (the day the file was observed): "
            f"{target} = snapshot_date - tenure"
        )
    return Tenure(column=column, unit=unit, target=target)


def _text(value: Any) -> str:
    """A mapping key or value as the text a file cell would hold (``true``/``false`` for bools)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


# --------------------------------------------------------------------------------------------
# Reading and casting
# --------------------------------------------------------------------------------------------


CSV_SUFFIXES = (".csv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


def input_columns(path: Path) -> list[str]:
    """The column names of a CSV (its header) or Parquet file (its schema).

    Raises :class:`ImportFileError` naming the file when it is missing, of another kind, empty,
    or not readable as what its suffix says.
    """
    if not path.is_file():
        raise ImportFileError(f"{path} not found")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return _csv_header(path)
    if suffix in PARQUET_SUFFIXES:
        try:
            return pq.read_schema(path).names
        except (pa.ArrowException, OSError) as exc:
            raise ImportFileError(
                f"{path} is not a readable Parquet file (corrupt, truncated or another format): {exc}"
            ) from exc
    raise ImportFileError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")


def read_input(path: Path, sources: list[str], available: list[str] | None = None) -> pa.Table:
    """The ``sources`` columns of a CSV (as text) or Parquet file.

    ``available`` is the file's column list when the caller has already read it.
    """
    if available is None:
        available = input_columns(path)
    missing = [s for s in sources if s not in available]
    if missing:
        raise ImportMappingError(
            f"column(s) {', '.join(missing)} named in the mapping are not in {path.name}; "
            f"it has: {', '.join(available)}"
        )
    is_parquet = path.suffix.lower() in PARQUET_SUFFIXES
    try:
        if is_parquet:
            return pq.read_table(path, columns=sources)
        return pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={s: pa.string() for s in sources},
                include_columns=sources,
                strings_can_be_null=True,
            ),
        )
    except (pa.ArrowException, OSError) as exc:
        kind = "Parquet" if is_parquet else "CSV"
        raise ImportFileError(f"{path} cannot be read as {kind}: {exc}") from exc


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return next(csv.reader(handle))
    except StopIteration:
        raise ImportFileError(f"{path} is empty") from None
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path} is not a readable CSV file (not UTF-8 text): {exc}") from exc
    except (csv.Error, OSError) as exc:
        raise ImportFileError(f"{path} is not a readable CSV file: {exc}") from exc


def _warn_label_columns(path: Path, available: list[str], mapping: ImportMapping) -> None:
    """Warn about unmapped columns that look like a churn label: they are not imported."""
    read = set(mapping.file_columns)
    labels = [c for c in available if c not in read and LABEL_LIKE.search(c)]
    if labels:
        logger.warning(
            "%s: column(s) %s look like a churn label and are not imported; churn is recorded "
            "as cancellations rows (import them with table: cancellations and a cancel_date)",
            path.name,
            ", ".join(labels),
        )


def build_table(mapping: ImportMapping, raw: pa.Table) -> tuple[pa.Table, list[ContractViolation]]:
    """The spec-shaped table and one ``type`` violation per column with values that don't cast."""
    spec, rows = mapping.spec, raw.num_rows
    sources = mapping.sources
    arrays, failures = [], []
    for col in spec.columns:
        if mapping.tenure is not None and col.name == mapping.tenure.target:
            array, tenure_failures = _from_tenure(mapping, raw.column(mapping.tenure.column))
            failures += tenure_failures
        elif col.name in sources:
            values = _clean(raw.column(sources[col.name]))
            if col.name in mapping.values:
                values = _map_values(values, mapping.values[col.name])
            array, failed, examples = _cast(values, col, mapping.date_format)
            if failed:
                detail = f"cannot read as {type_family(col.type)}" + (
                    f": e.g. {', '.join(repr(e) for e in examples)}" if examples else ""
                )
                failures.append(ContractViolation(spec.name, col.name, "type", failed, detail))
        elif col.name in mapping.constants:
            array = pa.repeat(pa.scalar(mapping.constants[col.name], col.type), rows)
        elif col.name == mapping.snapshot_fills:
            array = pa.repeat(pa.scalar(mapping.snapshot_date, col.type), rows)
        else:  # load_mapping guarantees only nullable columns are left unfilled
            array = pa.nulls(rows, col.type)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=_nullable(spec.arrow_schema)), failures


def _from_tenure(
    mapping: ImportMapping, values: pa.ChunkedArray
) -> tuple[pa.ChunkedArray, list[ContractViolation]]:
    """``snapshot_date - tenure`` (whole days, rounded down) and the tenure's violations.

    A tenure that is not a number (``type``), negative (``min``) or over
    :data:`MAX_TENURE_DAYS` (``max``) is reported against the derived column and left null.
    """
    tenure, spec, snapshot = mapping.tenure, mapping.spec, mapping.snapshot_date
    assert tenure is not None and snapshot is not None  # load_mapping guarantees both
    source = f"tenure column {tenure.column!r}"
    values = _clean(values)
    number, failed, examples = _cast(values, Column(tenure.column, pa.float64()), None)
    violations = []
    if failed:
        violations.append(
            ContractViolation(
                spec.name,
                tenure.target,
                "type",
                failed,
                f"cannot read {source} as a number: e.g. {', '.join(map(repr, examples))}",
            )
        )
    days = pc.floor(pc.multiply(number, tenure.unit_days))
    for rule, bad in (
        ("min", pc.less(days, 0)),
        ("max", pc.greater(days, MAX_TENURE_DAYS)),
    ):
        bad = bad.fill_null(False)
        count = int(pc.sum(bad).as_py() or 0)
        if count:
            limit = "negative" if rule == "min" else f"over {MAX_TENURE_DAYS:,} days"
            shown = pc.unique(pc.filter(values, bad)).to_pylist()[:MAX_EXAMPLES]
            detail = f"{source} is {limit}: e.g. {', '.join(map(repr, map(str, shown)))}"
            violations.append(ContractViolation(spec.name, tenure.target, rule, count, detail))
            days = pc.if_else(bad, pa.scalar(None, days.type), days)
    epoch_day = (snapshot - date(1970, 1, 1)).days
    signup = pc.subtract(pa.scalar(epoch_day, pa.int32()), days.cast(pa.int32()))
    return signup.cast(pa.date32()), violations


def _nullable(schema: pa.Schema) -> pa.Schema:
    """The spec's schema with every field nullable: the data may still hold nulls at this point
    (the contract reports them); the exact schema is applied once it passed."""
    return pa.schema([f.with_nullable(True) for f in schema])


def _clean(array: pa.ChunkedArray) -> pa.ChunkedArray:
    """Text trimmed, with empty text as null (CSV exports write blanks for missing values)."""
    if type_family(array.type) != "string":
        return array
    trimmed = pc.utf8_trim_whitespace(array)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, trimmed.type), trimmed)


def _map_values(array: pa.ChunkedArray, table: dict[str, Any]) -> pa.ChunkedArray:
    """Replace values found in ``table`` (compared as text); leave the others as they are."""
    text = array.cast(pa.string())
    keys = pa.array(list(table), pa.string())
    targets = pa.array([None if v is None else _text(v) for v in table.values()], pa.string())
    index = pc.index_in(text, value_set=keys)
    mapped = pc.take(targets, index.fill_null(0)) if len(keys) else text
    return pc.if_else(pc.is_valid(index), mapped, text)


def _cast(
    values: pa.ChunkedArray, col: Column, date_format: str | None
) -> tuple[pa.ChunkedArray, int, list[str]]:
    """Cast to ``col.type`` row by row: failing values become null and are counted.

    polars' non-strict casts give exactly that (null where a value does not convert), where a
    pyarrow cast fails the whole column at the first bad value.
    """
    source = pl.from_arrow(values)
    assert isinstance(source, pl.Series)  # an arrow array converts to a Series
    target = pl.from_arrow(pa.array([], type=col.type)).dtype
    family = type_family(col.type)
    if family == "string":
        out = source.cast(pl.String)
    elif family == "boolean":
        out = _to_bool(source)
    elif family in ("date", "timestamp"):
        out = _to_temporal(source, target, date_format)
    elif family == "integer" and source.dtype.is_float():
        # polars truncates 2.5 to 2: a fractional value is a failed cast, not a rounding.
        whole = pl.select(pl.when(source == source.floor()).then(source)).to_series()
        out = whole.cast(target, strict=False)
    else:
        out = source.cast(target, strict=False)
    failed_mask = source.is_not_null() & out.is_null()
    failed = int(failed_mask.sum())
    examples = (
        source.filter(failed_mask).cast(pl.String).unique(maintain_order=True).head(MAX_EXAMPLES)
    )
    array = out.to_arrow().cast(col.type)
    return pa.chunked_array([array]), failed, examples.to_list()


def _to_bool(source: pl.Series) -> pl.Series:
    if source.dtype == pl.String:
        lower = source.str.to_lowercase()
        return (
            pl.select(
                pl.when(lower.is_in(list(TRUE_TEXT)))
                .then(True)
                .when(lower.is_in(list(FALSE_TEXT)))
                .then(False)
                .otherwise(None)
            )
            .to_series()
            .cast(pl.Boolean)
        )
    return source.cast(pl.Boolean, strict=False)


def _to_temporal(source: pl.Series, target: pl.DataType, date_format: str | None) -> pl.Series:
    """Dates/timestamps from text (``date_format`` or inferred), datetimes or dates."""
    if source.dtype.is_temporal():
        if target == pl.Date and isinstance(source.dtype, pl.Datetime):
            return source.dt.date()
        return source.cast(target, strict=False)
    text = source.cast(pl.String)
    try:
        if target == pl.Date:
            return text.str.to_date(format=date_format, strict=False)
        return text.str.to_datetime(format=date_format, strict=False).cast(target, strict=False)
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
        # polars found no date format fitting the values at all: every value fails to cast.
        return pl.Series(source.name, [None] * len(source), dtype=target)


def _merge(
    spec: TableSpec, cast_failures: list[ContractViolation], contract: list[ContractViolation]
) -> list[ContractViolation]:
    """Cast failures plus the contract's violations, each bad cell reported once.

    A value that failed to cast (or a tenure out of range) is null in the checked table;
    ``not_null`` would count it a second time, so its count is reduced by the failures of the
    same column.
    """
    failed: dict[str, int] = {}
    for v in cast_failures:
        failed[v.column] = failed.get(v.column, 0) + v.count
    merged = list(cast_failures)
    for v in contract:
        if v.rule == "not_null" and v.column in failed:
            remaining = v.count - failed[v.column]
            if remaining <= 0:
                continue
            v = ContractViolation(v.table, v.column, v.rule, remaining, "besides the type failures")
        merged.append(v)
    return merged


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _target_file(source_dir: Path, spec: TableSpec, digest: str) -> Path:
    """The single table file, or this input's own part file of a partitioned table."""
    path = table_path(source_dir, spec)
    return path / f"part-import-{digest[:HASH_PREFIX]}.parquet" if spec.partitioned else path


def _overlap_with_other_parts(
    spec: TableSpec, table: pa.Table, target: Path
) -> list[ContractViolation]:
    """Keys of the import already present in other part files (this input's own part is replaced)."""
    others = sorted(p for p in target.parent.glob("*.parquet") if p.name != target.name)
    if not others:
        return []
    keys = ", ".join(f'"{k}"' for k in spec.keys)
    con = connect()
    try:
        con.register("incoming", table.select(list(spec.keys)))
        found = con.execute(
            "SELECT count(*), min(filename) FROM read_parquet($files, filename = true) "
            f"JOIN incoming USING ({keys})",
            {"files": [str(p) for p in others]},
        ).fetchone()
    finally:
        con.close()
    count, first_file = int(found[0]), found[1]
    if count == 0:
        return []
    detail = f"already in other part files of {spec.name}, e.g. {Path(first_file).name}"
    return [ContractViolation(spec.name, ",".join(spec.keys), "unique_keys", count, detail)]


def _upsert(spec: TableSpec, incoming: pa.Table, target: Path) -> pa.Table:
    """Existing rows whose keys are not imported, plus the imported rows, sorted by keys."""
    schema = spec.arrow_schema
    if target.exists():
        existing = pq.read_table(target)
        try:
            existing = existing.select(schema.names).cast(schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ChurnError(f"{target} does not match the {spec.name} schema: {exc}") from exc
        keys = list(spec.keys)
        kept = existing.join(incoming.select(keys), keys=keys, join_type="left anti")
        incoming = pa.concat_tables([kept.select(schema.names).cast(schema), incoming])
    return incoming.sort_by([(k, "ascending") for k in spec.keys])


def update_manifest(
    source_dir: Path,
    spec: TableSpec,
    path: Path,
    digest: str,
    imported: pa.Table,
    *,
    snapshot_date: date | None = None,
) -> Path:
    """Record the import in ``_manifest.json``, keeping every key other code wrote."""
    manifest_path = source_dir / MANIFEST_NAME
    manifest: dict[str, Any] = {}
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ChurnError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ChurnError(f"{manifest_path} does not hold a JSON object")

    previous = manifest.get("source")
    manifest["source"] = "import" if previous in (None, "import") else "mixed"
    tables = manifest.setdefault("tables", {})
    entry = tables.setdefault(spec.name, {}) if isinstance(tables, dict) else None
    if not isinstance(entry, dict):
        raise ChurnError(f"{manifest_path}: 'tables.{spec.name}' is not a JSON object")
    entry.update(_table_stats(source_dir, spec) | {"source": "import"})
    # Top-level start/end are the days the source tables cover (what the feature build reads):
    # the daily table's range when it exists, else the union of the tables' ranges.
    manifest.update(_covered_days(source_dir, tables))

    first, last = _date_range(imported, spec.date_column)
    record = {
        "file": path.name,
        "sha256": digest,
        "table": spec.name,
        "rows": imported.num_rows,
        "first_date": first,
        "last_date": last,
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if snapshot_date is not None:
        record["snapshot_date"] = snapshot_date.isoformat()
    imports = [
        i
        for i in manifest.get("imports", [])
        if not (i.get("sha256") == digest and i.get("table") == spec.name)
    ]
    manifest["imports"] = imports + [record]

    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest_path


def _table_stats(source_dir: Path, spec: TableSpec) -> dict[str, Any]:
    """Rows and date range of the whole table as now written."""
    column = spec.date_column
    select = "count(*)" + (f', min("{column}"), max("{column}")' if column else "")
    con = connect()
    try:
        found = con.execute(
            f"SELECT {select} FROM read_parquet($path)", {"path": table_glob(source_dir, spec)}
        ).fetchone()
    finally:
        con.close()
    stats: dict[str, Any] = {"rows": int(found[0])}
    if column:
        stats |= {
            "date_column": column,
            "first_date": found[1].isoformat() if found[1] else None,
            "last_date": found[2].isoformat() if found[2] else None,
        }
    return stats


def _covered_days(source_dir: Path, tables: dict[str, Any]) -> dict[str, str]:
    """``{"start", "end"}`` of the source directory, or nothing if no table has dates."""
    for spec in SOURCE_TABLES.values():
        if is_daily(spec) and any(table_path(source_dir, spec).glob("*.parquet")):
            stats = _table_stats(source_dir, spec)
            if stats["first_date"]:
                return {"start": stats["first_date"], "end": stats["last_date"]}
    firsts = [
        t["first_date"] for t in tables.values() if isinstance(t, dict) and t.get("first_date")
    ]
    lasts = [t["last_date"] for t in tables.values() if isinstance(t, dict) and t.get("last_date")]
    return {"start": min(firsts), "end": max(lasts)} if firsts and lasts else {}


def _date_range(table: pa.Table, column: str | None) -> tuple[str | None, str | None]:
    if column is None:
        return None, None
    bounds = pc.min_max(table.column(column)).as_py()
    return (
        bounds["min"].isoformat() if bounds["min"] else None,
        bounds["max"].isoformat() if bounds["max"] else None,
    )
