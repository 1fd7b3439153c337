"""Read a user's CSV or Parquet file and build the target source table from it, by its mapping.

CSV cells are read as text; Parquet keeps its types; string values are trimmed and empty ones are
nulls. Columns are renamed, value-mapped and cast to the table's Arrow types; ``signup_date`` may
come from a tenure column and the snapshot date. Values that cannot be cast become counted
``type`` violations for the contract, never an exception. An unmapped file column that looks like
a churn label is left out with a warning (churn is imported as ``cancellations``).
"""

from __future__ import annotations

import csv
import logging
import re
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.core.errors import (
    ContractViolation,
    ImportFileError,
    ImportMappingError,
)
from tasks.core.schema import Column
from tasks.data.contract_values import type_family
from tasks.data.import_mapping import MAX_EXAMPLES, ImportMapping, as_text, cast_column

logger = logging.getLogger(__name__)
MAX_TENURE_DAYS = 36_525
LABEL_LIKE = re.compile(r"churn|attrition|exited", re.IGNORECASE)


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


def warn_label_columns(path: Path, available: list[str], mapping: ImportMapping) -> None:
    """Warn about unmapped columns that look like a churn label: they are not imported.

    A column the mapping reads (``churn:`` included) is not warned about.
    """
    read = set(mapping.file_columns)
    labels = [c for c in available if c not in read and LABEL_LIKE.search(c)]
    if labels:
        logger.warning(
            "%s: column(s) %s look like a churn label and are not imported; churn is recorded "
            "as cancellations rows (declare it in this mapping with churn: {flag: COLUMN}, or "
            "import them with table: cancellations and a cancel_date)",
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
            array, failed, examples = cast_column(values, col, mapping.date_format)
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
    number, failed, examples = cast_column(values, Column(tenure.column, pa.float64()), None)
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
    targets = pa.array([None if v is None else as_text(v) for v in table.values()], pa.string())
    index = pc.index_in(text, value_set=keys)
    mapped = pc.take(targets, index.fill_null(0)) if len(keys) else text
    return pc.if_else(pc.is_valid(index), mapped, text)
