"""The import mapping (``MAPPING.yaml``): which source table a file fills, and how its columns become that table's.

:func:`load_mapping` parses a mapping and checks it against the target table (rules in
:mod:`tasks.data.importer`); a breach raises :class:`~tasks.core.errors.ImportMappingError`
saying what is wrong and where. Whether the file has the mapped columns is checked when it is
read (:mod:`tasks.data.import_read`). :func:`cast_column` casts values (file columns, constants,
tenures) to a target column's type, counting, not raising on, the values that cannot be cast.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import yaml

from tasks.core.errors import (
    ImportMappingError,
)
from tasks.core.schema import CANCEL_REASONS, SOURCE_TABLES, Column, TableSpec
from tasks.data.attributes import AttributeMapping, parse_attributes
from tasks.data.contract_values import type_family

MAPPING_KEYS = (
    "table",
    "columns",
    "values",
    "constants",
    "snapshot_date",
    "tenure",
    "date_format",
    "attributes",
    "churn",
    "customer_key",
)
MAX_EXAMPLES = 5
TRUE_TEXT = frozenset({"true", "t", "yes", "y", "1"})
FALSE_TEXT = frozenset({"false", "f", "no", "n", "0"})

TENURE_TARGETS = {"subscribers": "signup_date"}
CUSTOMER_ID = "subscriber_id"
"""The column ``customer_key:`` fills with the numbers churn-ops gives the customers' own ids."""
EXPORT_TABLE = "subscribers"
"""The table whose mapping may carry ``attributes:`` and ``churn:`` (a snapshot export)."""
CHURN_KINDS = ("flag", "cancel_date")
TENURE_UNIT_DAYS = {"months": 30.4375, "days": 1.0}


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
class Churn:
    """``churn:``: who left, from a yes/no ``flag`` column or a ``cancel_date`` column."""

    kind: str
    """``flag`` or ``cancel_date``."""
    column: str
    reason: str


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
    attributes: tuple[AttributeMapping, ...] = ()
    churn: Churn | None = None
    customer_key: str | None = None
    """The file column holding the customer's own id, numbered into ``subscriber_id``
    (:mod:`tasks.data.customer_keys`)."""

    @property
    def sources(self) -> dict[str, str]:
        """Target column → file column."""
        return {target: source for source, target in self.columns.items()}

    @property
    def file_columns(self) -> list[str]:
        """Every file column the mapping reads, in mapping order."""
        names = list(self.columns)
        extra = [self.customer_key] if self.customer_key is not None else []
        extra += [self.tenure.column] if self.tenure is not None else []
        extra += [a.column for a in self.attributes]
        extra += [self.churn.column] if self.churn is not None else []
        for name in extra:
            if name not in names:
                names.append(name)
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
    attributes = _attributes(doc.get("attributes"), spec, snapshot, where)
    churn = _churn(doc.get("churn"), spec, snapshot, where)
    customer_key = _customer_key(doc.get("customer_key"), spec, columns, constants, where)
    mapping = ImportMapping(
        spec,
        columns,
        values,
        constants,
        snapshot,
        date_format,
        tenure,
        attributes,
        churn,
        customer_key,
    )

    filled = set(columns.values()) | set(constants)
    filled |= {CUSTOMER_ID} if customer_key is not None else set()
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
        values[target] = {as_text(k): v for k, v in table.items()}
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
        cast, failures, _ = cast_column(
            pa.chunked_array([[as_text(constant)]], pa.string()), column, None
        )
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


def _needs_export(key: str, spec: TableSpec, snapshot: date | None, where: str) -> None:
    """``attributes``/``churn`` describe a subscribers export observed on ``snapshot_date``."""
    if spec.name != EXPORT_TABLE:
        raise ImportMappingError(
            f"{where}: '{key}' is only allowed with table: {EXPORT_TABLE}, not {spec.name}"
        )
    if snapshot is None:
        raise ImportMappingError(
            f"{where}: '{key}' needs snapshot_date: the day the export was taken "
            f"(the day its {'attributes were observed' if key == 'attributes' else 'churn is known'})"
        )


def _attributes(
    value: Any, spec: TableSpec, snapshot: date | None, where: str
) -> tuple[AttributeMapping, ...]:
    if value is None:
        return ()
    _needs_export("attributes", spec, snapshot, where)
    return tuple(
        AttributeMapping(a.declaration, a.column, {as_text(k): v for k, v in a.values.items()})
        for a in parse_attributes(value, where)
    )


def _churn(value: Any, spec: TableSpec, snapshot: date | None, where: str) -> Churn | None:
    if value is None:
        return None
    _needs_export("churn", spec, snapshot, where)
    usage = (
        "churn must look like {flag: FILE_COLUMN} or {cancel_date: FILE_COLUMN}, "
        "optionally with reason: other"
    )
    if not isinstance(value, dict):
        raise ImportMappingError(f"{where}: {usage}")
    unknown = sorted(set(map(str, value)) - {*CHURN_KINDS, "reason"})
    if unknown:
        raise ImportMappingError(f"{where}: churn: unknown key(s) {', '.join(unknown)}; {usage}")
    kinds = [k for k in CHURN_KINDS if k in value]
    if len(kinds) != 1:
        raise ImportMappingError(
            f"{where}: churn needs exactly one of flag or cancel_date; {usage}"
        )
    column = value[kinds[0]]
    if not isinstance(column, str) or not column:
        raise ImportMappingError(f"{where}: churn.{kinds[0]} must name a file column")
    reason = value.get("reason", "other")
    if reason not in CANCEL_REASONS:
        raise ImportMappingError(
            f"{where}: churn.reason {reason!r} unknown; use one of {', '.join(CANCEL_REASONS)}"
        )
    return Churn(kind=kinds[0], column=column, reason=reason)


def _customer_key(
    value: Any, spec: TableSpec, columns: dict[str, str], constants: dict[str, Any], where: str
) -> str | None:
    """The file column ``customer_key`` names; it fills ``subscriber_id``, so nothing else may."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ImportMappingError(
            f"{where}: customer_key must name the file column holding the customer's own id, "
            f"not {value!r}"
        )
    if CUSTOMER_ID not in {c.name for c in spec.columns}:
        raise ImportMappingError(
            f"{where}: customer_key fills {CUSTOMER_ID}, which {spec.name} does not have"
        )
    mapped = [source for source, target in columns.items() if target == CUSTOMER_ID]
    if mapped or CUSTOMER_ID in constants:
        how = f"columns: {{{mapped[0]}: {CUSTOMER_ID}}}" if mapped else f"constants.{CUSTOMER_ID}"
        raise ImportMappingError(
            f"{where}: customer_key: {value} and {how} both fill {CUSTOMER_ID}; give one: "
            "customer_key for the customer's own id (any text, numbered by churn-ops), or a "
            f"column of whole numbers mapped to {CUSTOMER_ID}"
        )
    return value


def as_text(value: Any) -> str:
    """A mapping key or value as the text a file cell would hold (``true``/``false`` for bools)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def cast_column(
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
