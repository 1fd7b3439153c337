"""Extra subscriber attributes: typed columns an export carries beyond the source schema.

A subscribers mapping may declare ``attributes:`` (see :mod:`tasks.data.importer`); each
attribute is a column of a file observed on the mapping's ``snapshot_date``. They are kept in
``<source_dir>/subscriber_attributes.parquet``, one row per (``subscriber_id``,
``observed_date``), one column per attribute (categorical → string, numeric → float64), rows
sorted by the keys. The feature build as-of joins it on ``observed_date``.

The declarations live in the source manifest under ``"attributes"``, merged across imports:

* a categorical attribute's ``allowed`` list is the union of every import's, sorted;
* a numeric attribute's range is the widest (a bound that any import leaves open stays open);
* ``nullable`` is true if any import says so, or once the table holds nulls for it (rows of an
  import that did not declare it are null there);
* an attribute redeclared with another ``type`` is refused.

Column order is the table file's (first-declared first): the manifest is written with sorted
keys, so the file is what remembers the order.

This module parses and merges declarations and writes the table; reading the file's values and
checking them is :mod:`tasks.data.import_export`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.errors import ChurnError, ImportMappingError
from tasks.core.files import write_parquet_atomic
from tasks.core.layout import MANIFEST_NAME
from tasks.core.schema import SUBSCRIBERS, Column, TableSpec

ATTRIBUTES_TABLE = "subscriber_attributes"
KEYS = ("subscriber_id", "observed_date")
ATTRIBUTE_TYPES = ("categorical", "numeric")
ENTRY_KEYS = ("column", "type", "allowed", "values", "nullable", "min", "max")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
RESERVED_NAMES = frozenset(
    {c.name for c in SUBSCRIBERS.columns} | set(KEYS) | {"snapshot_date", "snapshot_ts"}
)
"""Names an attribute cannot take: the subscribers' columns, this table's keys, and the keys of
the feature view built on it (a ``snapshot_date`` attribute would shadow the view's day)."""


@dataclass(frozen=True)
class AttributeDeclaration:
    """What an attribute is: its type and the rules its values obey."""

    name: str
    type: str
    """``categorical`` (text from ``allowed``) or ``numeric`` (a float within ``min``/``max``)."""
    allowed: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.string() if self.type == "categorical" else pa.float64()

    @property
    def column(self) -> Column:
        """The contract column (:func:`tasks.data.contracts.check_table` checks it)."""
        return Column(
            self.name,
            self.arrow_type,
            nullable=self.nullable,
            min=self.min,
            max=self.max,
            allowed=self.allowed,
        )

    def to_json(self) -> dict[str, Any]:
        """The manifest form: ``{"type", "allowed"|"min"+"max", "nullable"}``."""
        if self.type == "categorical":
            rules: dict[str, Any] = {"allowed": list(self.allowed or ())}
        else:
            rules = {"min": self.min, "max": self.max}
        return {"type": self.type, **rules, "nullable": self.nullable}


@dataclass(frozen=True)
class AttributeMapping:
    """One ``attributes:`` entry of a mapping: the declaration and where its values come from."""

    declaration: AttributeDeclaration
    column: str
    """The file column."""
    values: dict[str, Any] = field(default_factory=dict)
    """File text → value, like the mapping's ``values:`` (keys as text)."""


def attributes_path(source_dir: Path) -> Path:
    return Path(source_dir) / f"{ATTRIBUTES_TABLE}.parquet"


def attributes_table_spec(declarations: dict[str, AttributeDeclaration]) -> TableSpec:
    """The table's spec: the keys, then one column per attribute in the given order."""
    return TableSpec(
        name=ATTRIBUTES_TABLE,
        grain="one row per subscriber per day an export observed them",
        keys=KEYS,
        date_column="observed_date",
        columns=(
            Column("subscriber_id", pa.int64(), min=1),
            Column("observed_date", pa.date32()),
            *(d.column for d in declarations.values()),
        ),
    )


def attribute_declarations(source_dir: Path) -> dict[str, AttributeDeclaration]:
    """The declarations recorded in the source manifest, in the table's column order; ``{}`` if none."""
    manifest_path = Path(source_dir) / MANIFEST_NAME
    if not manifest_path.is_file():
        return {}
    try:
        stored = json.loads(manifest_path.read_text()).get("attributes") or {}
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ChurnError(f"{manifest_path}: cannot read the attribute declarations: {exc}") from exc
    declarations = {name: _from_json(name, entry, manifest_path) for name, entry in stored.items()}
    path = attributes_path(source_dir)
    order = pq.read_schema(path).names if path.is_file() else []
    position = {name: i for i, name in enumerate(order)}
    ranked = sorted(declarations, key=lambda n: (position.get(n, len(order)), n))
    return {name: declarations[name] for name in ranked}


def _from_json(name: str, entry: Any, where: Path) -> AttributeDeclaration:
    if not isinstance(entry, dict) or entry.get("type") not in ATTRIBUTE_TYPES:
        raise ChurnError(f"{where}: attributes.{name} is not a declaration: {entry!r}")
    allowed = entry.get("allowed")
    return AttributeDeclaration(
        name=name,
        type=entry["type"],
        allowed=tuple(allowed) if allowed is not None else None,
        min=entry.get("min"),
        max=entry.get("max"),
        nullable=bool(entry.get("nullable", False)),
    )


# --------------------------------------------------------------------------------------------
# Parsing a mapping's `attributes:`
# --------------------------------------------------------------------------------------------


def parse_attributes(value: Any, where: str) -> tuple[AttributeMapping, ...]:
    """The validated ``attributes:`` entries (values' keys as given; the caller makes them text).

    Whether the table is ``subscribers`` with a ``snapshot_date`` is the caller's check.
    """
    if not isinstance(value, dict) or not value:
        raise ImportMappingError(
            f"{where}: 'attributes' must map attribute names to entries like "
            "{column: FILE_COLUMN, type: categorical, allowed: [...]}"
        )
    return tuple(_parse_entry(str(name), entry, where) for name, entry in value.items())


def _parse_entry(name: str, entry: Any, where: str) -> AttributeMapping:
    at = f"{where}: attributes.{name}"
    if not NAME_PATTERN.match(name):
        raise ImportMappingError(f"{at}: the name must be lower_snake_case (e.g. internet_service)")
    if name in RESERVED_NAMES:
        raise ImportMappingError(
            f"{at}: {name} is a column of subscribers, of {ATTRIBUTES_TABLE} or of its feature "
            "view; map it with 'columns:' or choose another name"
        )
    if not isinstance(entry, dict):
        raise ImportMappingError(f"{at}: expected {{column: FILE_COLUMN, type: ...}}")
    unknown = sorted(set(map(str, entry)) - set(ENTRY_KEYS))
    if unknown:
        raise ImportMappingError(
            f"{at}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(ENTRY_KEYS)}"
        )
    column = entry.get("column")
    if not isinstance(column, str) or not column:
        raise ImportMappingError(f"{at}: 'column' must name a file column")
    kind = entry.get("type")
    if kind not in ATTRIBUTE_TYPES:
        raise ImportMappingError(f"{at}: unknown type {kind!r}; use {' or '.join(ATTRIBUTE_TYPES)}")
    nullable = _flag(entry.get("nullable", False), f"{at}: 'nullable'")
    values = entry.get("values", {})
    if not isinstance(values, dict):
        raise ImportMappingError(f"{at}: 'values' must map file values to values")

    if kind == "categorical":
        bounds = [k for k in ("min", "max") if k in entry]
        if bounds:
            raise ImportMappingError(f"{at}: {'/'.join(bounds)} apply to numeric attributes only")
        allowed = entry.get("allowed")
        if (
            not isinstance(allowed, list)
            or not allowed
            or not all(isinstance(a, str) for a in allowed)
        ):
            raise ImportMappingError(
                f"{at}: a categorical attribute needs 'allowed': a non-empty list of strings "
                f"(quote numbers), got {allowed!r}"
            )
        declaration = AttributeDeclaration(name, kind, allowed=tuple(allowed), nullable=nullable)
    else:
        if "allowed" in entry:
            raise ImportMappingError(f"{at}: 'allowed' applies to categorical attributes only")
        low, high = _bound(entry, "min", at), _bound(entry, "max", at)
        if low is not None and high is not None and low > high:
            raise ImportMappingError(f"{at}: min {low:g} is above max {high:g}")
        declaration = AttributeDeclaration(name, kind, min=low, max=high, nullable=nullable)
    return AttributeMapping(declaration, column, dict(values))


def _flag(value: Any, what: str) -> bool:
    """true/false; the mapping loader resolves no booleans (so ``Yes``/``No`` stay text), so
    ``true``/``false`` arrive as text too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ImportMappingError(f"{what} must be true or false, not {value!r}")


def _bound(entry: dict, key: str, at: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ImportMappingError(f"{at}: '{key}' must be a number, not {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Merging declarations across imports
# --------------------------------------------------------------------------------------------


def merge_declarations(
    stored: dict[str, AttributeDeclaration],
    incoming: tuple[AttributeDeclaration, ...],
    where: str,
) -> dict[str, AttributeDeclaration]:
    """Stored declarations widened by this import's (new ones appended in mapping order).

    Raises :class:`ImportMappingError` when an attribute changes type.
    """
    merged = dict(stored)
    for new in incoming:
        old = merged.get(new.name)
        if old is None:
            merged[new.name] = new
        elif old.type != new.type:
            raise ImportMappingError(
                f"{where}: attributes.{new.name} is declared {new.type} here but {old.type} by an "
                "earlier import into this source; keep the type, or choose another name"
            )
        elif new.type == "categorical":
            allowed = tuple(sorted(set(old.allowed or ()) | set(new.allowed or ())))
            merged[new.name] = replace(old, allowed=allowed, nullable=old.nullable or new.nullable)
        else:
            low = None if old.min is None or new.min is None else min(old.min, new.min)
            high = None if old.max is None or new.max is None else max(old.max, new.max)
            merged[new.name] = replace(
                old, min=low, max=high, nullable=old.nullable or new.nullable
            )
    return merged


# --------------------------------------------------------------------------------------------
# Writing the table
# --------------------------------------------------------------------------------------------


def upsert_attributes(
    source_dir: Path, incoming: pa.Table, declarations: dict[str, AttributeDeclaration]
) -> dict[str, AttributeDeclaration]:
    """Write the table: stored rows whose keys are not in ``incoming``, plus ``incoming``.

    ``incoming`` holds the keys and this import's attributes; ``declarations`` are the merged
    ones. Attributes missing on either side are nulls there. Returns the declarations as
    written (``nullable`` set where the table now holds nulls).
    """
    path = attributes_path(source_dir)
    wide = _widen(incoming, declarations)
    if path.is_file():
        stored = _widen(pq.read_table(path), declarations)
        keys = list(KEYS)
        kept = stored.join(wide.select(keys), keys=keys, join_type="left anti")
        wide = pa.concat_tables([kept.select(wide.column_names), wide])
    written = {
        name: d if d.nullable or wide[name].null_count == 0 else replace(d, nullable=True)
        for name, d in declarations.items()
    }
    schema = attributes_table_spec(written).arrow_schema
    data = wide.sort_by([(k, "ascending") for k in KEYS]).cast(schema)
    write_parquet_atomic(data, path)
    return written


def _widen(table: pa.Table, declarations: dict[str, AttributeDeclaration]) -> pa.Table:
    """The keys and every declared attribute (null where ``table`` lacks it), all nullable."""
    columns = {
        "subscriber_id": table["subscriber_id"].cast(pa.int64()),
        "observed_date": table["observed_date"].cast(pa.date32()),
    }
    for name, d in declarations.items():
        present = name in table.column_names
        columns[name] = (
            table[name].cast(d.arrow_type) if present else pa.nulls(table.num_rows, d.arrow_type)
        )
    return pa.table(columns)


def observed_rows(subscriber_ids: pa.ChunkedArray, observed: date) -> pa.Table:
    """The key columns of an import's attribute rows: its subscribers, seen on ``observed``."""
    return pa.table(
        {
            "subscriber_id": subscriber_ids,
            "observed_date": pa.repeat(pa.scalar(observed, pa.date32()), len(subscriber_ids)),
        }
    )
