"""Customers' own ids (text such as ``7590-VHVEG``) and the numbers churn-ops gives them.

A mapping's ``customer_key: COLUMN`` names the file column holding the customer's own id, in
place of a column mapped to ``subscriber_id`` (see :mod:`tasks.data.importer`). The source table
``<source_dir>/customer_keys.parquet`` holds one row per key ever imported: ``customer_key``
(text, trimmed, unique) and ``subscriber_id`` (int64 ≥ 1, unique), rows sorted by
``subscriber_id``. Every other table, the features, the models and the prediction log keep the
number; the high-risk file and the audit view ``customer_keys`` give the key back.

Numbering: a key seen before keeps its number. A ``subscribers`` import numbers its new keys
from the highest number the source holds (in ``customer_keys`` or ``subscribers``) plus one, in
the order the file first lists them, so the same file gives the same numbers. Any other table's
import only looks keys up: an unknown one is a ``known_key`` violation. An empty key is a
``not_null`` violation and, where ``subscriber_id`` is unique (subscribers, cancellations), a
repeated key a ``unique`` violation, each reported against the file column with the keys as
examples (instead of the ``subscriber_id`` violations they would cause).

A source that numbers its customers this way takes no mapping to ``subscriber_id`` any more: a
number from the file would mean another customer than the one churn-ops numbered so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.errors import ChurnError, ContractViolation, ImportMappingError
from tasks.core.files import write_parquet_atomic
from tasks.core.layout import table_path
from tasks.core.schema import SUBSCRIBERS, Column, TableSpec
from tasks.data.import_mapping import CUSTOMER_ID, MAX_EXAMPLES, ImportMapping
from tasks.data.import_read import _clean

ID = CUSTOMER_ID
KEY = "customer_key"
CUSTOMER_KEYS = TableSpec(
    name="customer_keys",
    grain="one row per customer key ever imported; subscriber_id is the number churn-ops gave it",
    keys=(KEY,),
    columns=(
        Column(KEY, pa.string(), unique=True),
        Column(ID, pa.int64(), min=1, unique=True),
    ),
)
NUMBERING_TABLE = SUBSCRIBERS.name
"""The only import that gives new keys numbers: the others' rows are about known customers."""
ID_RULES_REPORTED = frozenset({"not_null", "unique"})
"""The contract's ``subscriber_id`` violations that key violations stand for."""


def customer_keys_path(source_dir: Path) -> Path:
    return table_path(Path(source_dir), CUSTOMER_KEYS)


@dataclass(frozen=True)
class NumberedKeys:
    """An import's customer keys as numbers, their violations, and the keys table to write.

    Without ``customer_key`` in the mapping every method leaves things as they are.
    """

    ids: pa.ChunkedArray | None = None
    """One number per file row; null where the key is empty or unknown."""
    violations: list[ContractViolation] = field(default_factory=list)
    table: pa.Table | None = None
    """The whole keys table once this import's new keys are added; None when it adds none."""

    def fill(self, table: pa.Table) -> pa.Table:
        """``table`` (the import's rows, spec-shaped) with its ``subscriber_id`` column filled."""
        if self.ids is None:
            return table
        return table.set_column(table.schema.get_field_index(ID), ID, self.ids)

    def merge(self, violations: list[ContractViolation]) -> list[ContractViolation]:
        """The key violations first, then the contract's others: a ``subscriber_id`` that is
        null or repeated is an empty, unknown or repeated key, reported already."""
        if self.ids is None:
            return violations
        others = [v for v in violations if not (v.column == ID and v.rule in ID_RULES_REPORTED)]
        return self.violations + others

    def write(self, source_dir: Path) -> list[Path]:
        """Write the keys table if this import added keys; return what was written."""
        if self.table is None:
            return []
        return [write_parquet_atomic(self.table, customer_keys_path(source_dir))]


def number_customer_keys(mapping: ImportMapping, raw: pa.Table, source_dir: Path) -> NumberedKeys:
    """The numbers of the file's customer keys (module doc); nothing is written here.

    Raises:
        ImportMappingError: the source numbers customers by key and the mapping maps a file
            column to ``subscriber_id`` instead.
    """
    stored = read_customer_keys(source_dir)
    if mapping.customer_key is None:
        if stored.num_rows:
            raise ImportMappingError(
                f"{customer_keys_path(source_dir)} numbers this source's customers by their own "
                f"id: map the file's customer id with customer_key: COLUMN, not to {ID}"
            )
        return NumberedKeys()
    spec, column = mapping.spec, mapping.customer_key
    keys = _clean(raw.column(column).cast(pa.string()))
    table = None
    if spec.name == NUMBERING_TABLE:
        new = _new_keys(keys, stored[KEY])
        if len(new):
            first = _highest_id(source_dir, stored) + 1
            numbers = pa.array(range(first, first + len(new)), pa.int64())
            added = pa.table({KEY: new, ID: numbers}, schema=CUSTOMER_KEYS.arrow_schema)
            stored = table = pa.concat_tables([stored, added])
    # Row by row: the position of the row's key among the numbered ones, then its number.
    index = pc.index_in(keys, value_set=stored[KEY].combine_chunks())
    ids = pc.take(stored[ID].combine_chunks(), index)
    return NumberedKeys(ids, _violations(spec, column, keys, index), table)


def read_customer_keys(source_dir: Path) -> pa.Table:
    """The stored keys table (empty, with its schema, when the source has none)."""
    path = customer_keys_path(source_dir)
    schema = CUSTOMER_KEYS.arrow_schema
    if not path.is_file():
        return schema.empty_table()
    try:
        return pq.read_table(path).select(schema.names).cast(schema)
    except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ChurnError(f"{path} does not match the {CUSTOMER_KEYS.name} schema: {exc}") from exc


def keys_of(source_dir: Path, subscriber_ids: pa.ChunkedArray | pa.Array) -> pa.Table | None:
    """``subscriber_id`` and ``customer_key`` of these subscribers (one row each that has a key);
    None when the source numbers no customers by key.

    Only the rows asked for are kept while the file is read, so a short list costs a scan of
    the table, not a copy of it."""
    path = customer_keys_path(source_dir)
    if not path.is_file():
        return None
    wanted = pc.field(ID).isin(pc.unique(subscriber_ids))
    return pq.read_table(path, columns=[ID, KEY], filters=wanted)


def numbers_of_keys(source_dir: Path, keys: list[str]) -> dict[str, int]:
    """``{customer_key: subscriber_id}`` for those of ``keys`` an import numbered."""
    path = customer_keys_path(source_dir)
    if not path.is_file():
        return {}
    found = pq.read_table(path, columns=[KEY, ID], filters=pc.field(KEY).isin(keys))
    return dict(zip(found[KEY].to_pylist(), found[ID].to_pylist(), strict=True))


def subscriber_of(source_dir: Path, given: str) -> int:
    """The ``subscriber_id`` someone means by ``given``: in a source numbered by key, the
    customer's own id first (the id the team knows them by), else a whole number.

    Raises:
        ChurnError: ``given`` is neither a known key nor a whole number.
    """
    path = customer_keys_path(source_dir)
    key = given.strip()
    found = numbers_of_keys(source_dir, [key])
    if key in found:
        return found[key]
    try:
        return int(key)
    except ValueError:
        known = f" nor a {KEY} in {path}" if path.is_file() else ""
        raise ChurnError(f"{given!r} is not a {ID} (a whole number){known}") from None


def _new_keys(keys: pa.ChunkedArray, known: pa.ChunkedArray) -> pa.Array:
    """The keys not numbered yet, each once, in the order the file first lists them."""
    series = pl.from_arrow(keys)
    assert isinstance(series, pl.Series)  # a chunked array converts to a Series
    distinct = series.drop_nulls().unique(maintain_order=True).to_arrow().cast(pa.string())
    if not len(known):
        return distinct
    return distinct.filter(pc.invert(pc.is_in(distinct, value_set=known.combine_chunks())))


def _highest_id(source_dir: Path, stored: pa.Table) -> int:
    """The highest number in use: in the keys table or among subscribers imported without keys
    (a new key must never take an existing subscriber's number)."""
    highest = [pc.max(stored[ID]).as_py() or 0]
    subscribers = table_path(Path(source_dir), SUBSCRIBERS)
    if subscribers.is_file():
        highest.append(pc.max(pq.read_table(subscribers, columns=[ID])[ID]).as_py() or 0)
    return max(highest)


def _violations(
    spec: TableSpec, column: str, keys: pa.ChunkedArray, index: pa.ChunkedArray
) -> list[ContractViolation]:
    """Empty keys (``not_null``), unknown keys (``known_key``) and, where ``subscriber_id`` is
    unique, repeated keys (``unique``), against the file column."""
    found = []
    empty = keys.null_count
    if empty:
        detail = f"{KEY}: the customer's own id is empty"
        found.append(ContractViolation(spec.name, column, "not_null", empty, detail))
    unknown = pc.and_(pc.is_valid(keys), pc.is_null(index))
    count = int(pc.sum(unknown).as_py() or 0)
    if count:
        missing = pc.unique(pc.filter(keys, unknown))
        detail = (
            f"{len(missing):,} {KEY}(s) not in {CUSTOMER_KEYS.name} (a {NUMBERING_TABLE} import "
            f"numbers them): e.g. {_shown(missing)}"
        )
        found.append(ContractViolation(spec.name, column, "known_key", count, detail))
    if spec.column(ID).unique or spec.keys == (ID,):
        repeated = _repeated(keys)
        if repeated is not None:
            found.append(ContractViolation(spec.name, column, "unique", *repeated))
    return found


def _repeated(keys: pa.ChunkedArray) -> tuple[int, str] | None:
    """Rows beyond the first of each repeated key, and which keys (as the contract counts)."""
    counts = pa.table({KEY: keys}).drop_null().group_by(KEY).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts["count_all"], 1)).sort_by(KEY)
    if repeated.num_rows == 0:
        return None
    surplus = int(pc.sum(pc.subtract(repeated["count_all"], 1)).as_py())
    detail = f"{repeated.num_rows:,} repeated {KEY}(s), e.g. {_shown(repeated[KEY])}"
    return surplus, detail


def _shown(values: pa.Array | pa.ChunkedArray) -> str:
    return ", ".join(repr(v) for v in values.to_pylist()[:MAX_EXAMPLES])
