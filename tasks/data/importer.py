"""Import a user's own data (CSV or Parquet, one snapshot or a history) into the source schema.

``churn import PATH --mapping MAPPING.yaml`` calls :func:`import_file`. The mapping says which
source table the file fills and how its columns become that table's columns::

    table: subscribers            # target source table (one of SOURCE_TABLES)
    customer_key: customerID      # the customer's own id, any text (churn-ops numbers it); ids
                                  # that are whole numbers may map to subscriber_id instead
    columns:                      # file column -> target column
      Contract: contract_type
    values:                       # optional: per target column, file value -> target value
      contract_type: {"Month-to-month": month_to_month, "One year": one_year, "Two year": two_year}
    constants:                    # optional: target columns filled with one value
      payment_method: autopay
    snapshot_date: 2026-01-31     # optional: the day the file was observed (exported)
    tenure: {column: tenure, unit: months}  # subscribers only: signup_date from a tenure column
    date_format: "%Y-%m-%d"       # optional: strftime format of string dates (default: inferred)
    churn: {flag: Churn}          # subscribers + snapshot_date only: who had left (see below)
    attributes:                   # subscribers + snapshot_date only: extra typed columns
      internet_service: {column: InternetService, type: categorical, allowed: [dsl, none]}
      total_charges: {column: TotalCharges, type: numeric, min: 0, nullable: true}

What a usable source needs: all six source tables, ``subscribers``, ``usage_daily``,
``billing``, ``support_tickets``, ``plan_changes`` and ``cancellations`` (the feature build
refuses a source directory that lacks one), each imported with its own mapping. The event
tables (``billing``, ``support_tickets``, ``plan_changes``, ``cancellations``) may be imported
from a file with a header and no rows when there is nothing to record; ``subscribers`` and
``usage_daily`` need rows, and ``usage_daily`` sets the days the source covers. Or a single
*snapshot export*: a subscribers import with ``churn:`` (below) is a whole source.

Churn is a ``cancellations`` row (``subscriber_id``, ``cancel_date`` = first day without
service, ``reason``), imported either as its own file with ``table: cancellations``, or from
the subscribers export itself with ``churn:`` (needs ``snapshot_date``):

* ``churn: {flag: Churn}``: a yes/no column (yes/no, y/n, true/false, t/f, 1/0, any case);
  each "yes" is a cancellation on ``snapshot_date`` (they had left when the export was taken).
  Any other value, empty included, is a ``yes_no`` violation of that file column;
* ``churn: {cancel_date: LeftOn}``: a date column (``date_format`` applies), empty = still a
  customer; a date after ``snapshot_date`` is a ``max`` violation, one before the subscriber's
  ``signup_date`` a ``min`` violation (both of ``cancellations.cancel_date``);
* ``reason``: optional, one of CANCEL_REASONS, default ``other``.

The rows are upserted by ``subscriber_id`` and checked by the cancellations contract, with the
subscribers rows. Then every source table not there yet is written empty (``usage_daily`` as
``usage_daily/part-empty.parquet``), existing tables are never touched, and the manifest's
``snapshot_export`` records ``snapshot_date``, ``subscribers``, ``churned`` and ``file`` (the
export with the latest ``snapshot_date``). A file column such as ``Churn``/``Exited`` that the
mapping does not read is ignored with a warning. Labels are only as mature as the cancellations
data reaches: the 30-day label of a snapshot day is known only once cancellations are recorded
through the 30 days that follow it, so cancellations that stop earlier make the newest labels
look like "stayed".

``attributes``: extra subscriber attributes, kept in ``subscriber_attributes`` (keys
``subscriber_id``, ``observed_date`` = ``snapshot_date``); the entry syntax, the merging of
declarations across imports and the table are in :mod:`tasks.data.attributes`. Their contract
(``type``, ``allowed_values``, ``min``, ``max``, ``not_null``, column = the attribute's name) is
checked with the subscribers rows. All violations of every table are raised together, and
nothing (no table, no manifest) is written unless all pass.

``snapshot_date`` and ``tenure`` (a snapshot export is an observation on ``snapshot_date``):

* for the event and daily tables (``usage_daily``, ``billing``, …) ``snapshot_date`` fills the
  table's date column when the file has none: the rows were observed on that day;
* it never fills ``subscribers.signup_date``: a subscriber seen in a snapshot did not sign up on
  that day. ``signup_date`` is mapped from a file column, or derived from a tenure column with
  ``tenure: {column: FILE_COLUMN, unit: months|days}``, which needs ``snapshot_date``:
  ``signup_date = snapshot_date - tenure``, a month being 30.4375 days, rounded down to whole
  days (tenure 0 signed up on the snapshot day). A tenure that is not a number, negative or
  over 100 years is a violation of ``signup_date`` (``type``, ``min``, ``max``).

Rules of the mapping (any breach raises :class:`~tasks.core.errors.ImportMappingError` naming the culprit):

* ``table`` must be a source table; every target column must belong to it; a target is filled
  once (from ``columns``, ``constants``, ``snapshot_date`` or ``tenure``), and every
  non-nullable column of the table must be filled. File columns named in ``columns``,
  ``tenure``, ``churn`` or ``attributes`` must exist in the file; other file columns are
  ignored. ``churn`` and ``attributes`` need ``table: subscribers`` and ``snapshot_date``.
* ``values`` keys are compared with the file's text (CSV) or the value's text form (Parquet);
  values without an entry pass through unchanged (and the contract judges them). Booleans are
  YAML 1.2 ``true``/``false`` only, so ``Yes``/``No`` keys stay strings.
* ``customer_key`` (any table: they all have ``subscriber_id``) replaces a column mapped to
  ``subscriber_id``; both is an error, and so is a ``subscriber_id`` column once the source
  numbers its customers by key. Numbering, the ``customer_keys`` table and its violations:
  :mod:`tasks.data.customer_keys`.
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
  import, for every table it wrote) and ``imports`` (one entry per input file and table, with
  its ``snapshot_date`` if the mapping gave one), ``attributes`` and ``snapshot_export``. When
  ``usage_daily`` has no rows and there is a snapshot export, ``start``/``end`` are the day
  before the export and its day. Keys written by other code are kept.

This module runs the import and writes the table; the mapping's rules are checked in
:mod:`tasks.data.import_mapping`, and reading, trimming, casting, the tenure derivation and the
churn-label warning are :mod:`tasks.data.import_read`; attributes and churn rows are built in
:mod:`tasks.data.import_export`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.errors import (
    ChurnError,
    ContractViolation,
    DataContractError,
    ImportFileError,
    ImportMappingError,
)
from tasks.core.files import atomic_path, write_parquet_atomic
from tasks.core.layout import MANIFEST_NAME, table_glob, table_path
from tasks.core.schema import CANCELLATIONS, SOURCE_TABLES, TableSpec
from tasks.core.sql import connect
from tasks.data.attributes import (
    AttributeDeclaration,
    attribute_declarations,
    attributes_path,
    attributes_table_spec,
    merge_declarations,
    upsert_attributes,
)
from tasks.data.contracts import check_table, is_daily, violation_sort_key
from tasks.data.customer_keys import CUSTOMER_KEYS, number_customer_keys
from tasks.data.import_export import (
    LABEL_HORIZON_DAYS,
    attribute_violations,
    build_attributes,
    build_cancellations,
    check_export_columns,
    labelled_day,
    signup_not_after_cancel_date,
    write_missing_tables,
)
from tasks.data.import_mapping import ImportMapping, load_mapping
from tasks.data.import_read import build_table, input_columns, read_input, warn_label_columns
from tasks.data.sources import export_days

logger = logging.getLogger(__name__)
HASH_PREFIX = 16
EVENT_TABLES = ("billing", "support_tickets", "plan_changes", "cancellations")


@dataclass(frozen=True)
class ImportSummary:
    """What one import wrote."""

    table: str
    rows: int
    written: list[Path]
    churned: int | None = None
    """Cancellations rows a ``churn:`` mapping gave (None without ``churn:``)."""


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def import_file(
    path: Path,
    mapping_path: Path,
    source_dir: Path,
    *,
    label_horizon_days: int = LABEL_HORIZON_DAYS,
) -> ImportSummary:
    """Import ``path`` into ``source_dir`` as described by ``mapping_path`` (see module doc).

    ``label_horizon_days``: how far ahead the label looks; an export with cancellation dates
    is labelled that many days before its day (:func:`labelled_day`).
    """
    path, source_dir = Path(path), Path(source_dir)
    mapping = load_mapping(Path(mapping_path))
    spec = mapping.spec
    _refuse_an_older_export(mapping, source_dir, mapping_path)
    # A type clash with an earlier import is a mapping error: found before reading any data.
    declarations = merge_declarations(
        attribute_declarations(source_dir),
        tuple(a.declaration for a in mapping.attributes),
        str(mapping_path),
    )
    available = input_columns(path)
    check_export_columns(mapping, available, path, str(mapping_path))
    warn_label_columns(path, available, mapping)
    raw = read_input(path, mapping.file_columns, available)
    if raw.num_rows == 0 and spec.name not in EVENT_TABLES:
        raise ImportFileError(
            f"{path} has no data rows ({spec.name} needs rows; only "
            f"{', '.join(EVENT_TABLES)} may be imported empty)"
        )

    table, cast_failures = build_table(mapping, raw)
    table = signup_not_after_cancel_date(mapping, raw, table)
    keyed = number_customer_keys(mapping, raw, source_dir)
    table = keyed.fill(table)
    report = check_table(spec, table)
    violations = _merge(spec, cast_failures, report.violations)

    digest = file_sha256(path)
    target = _target_file(source_dir, spec, digest)
    if spec.partitioned:
        violations += _overlap_with_other_parts(spec, table, target)
    violations.sort(key=lambda v: violation_sort_key(spec, v))
    violations = keyed.merge(violations)
    extras = _build_extras(mapping, raw, table)
    # Every table's violations in one error: the subscribers rows first, then what they bring.
    by_table = {spec.name: violations}
    for name, found in extras.violations.items():
        by_table[name] = by_table.get(name, []) + found
    failing = {name: found for name, found in by_table.items() if found}
    if failing:
        raise DataContractError(", ".join(failing), [v for f in failing.values() for v in f])

    # It passed, so no non-nullable column holds a null: the exact schema now applies.
    data = table.cast(spec.arrow_schema).sort_by([(k, "ascending") for k in spec.keys])
    if not spec.partitioned:
        data = _upsert(spec, data, target)
    # The keys' numbers first: rows never refer to a number the keys table does not hold.
    numbered = keyed.write(source_dir)
    write_parquet_atomic(data, target)
    written, refreshed = [target, *numbered], [CUSTOMER_KEYS] if numbered else []
    if extras.attributes is not None:
        declarations = upsert_attributes(source_dir, extras.attributes, declarations)
        written.append(attributes_path(source_dir))
        refreshed.append(attributes_table_spec(declarations))
    export = None
    if extras.cancellations is not None:
        written.append(_write_cancellations(source_dir, extras.cancellations))
        refreshed.append(CANCELLATIONS)
        for empty, empty_path in write_missing_tables(source_dir):
            written.append(empty_path)
            refreshed.append(empty)
        assert mapping.snapshot_date is not None  # load_mapping requires it with churn
        assert mapping.churn is not None  # cancellations come from `churn:`
        export = {
            "snapshot_date": mapping.snapshot_date.isoformat(),
            "subscribers": table.num_rows,
            "churned": extras.cancellations.num_rows,
            "file": path.name,
            "churn": mapping.churn.kind,
            "labelled_day": labelled_day(
                mapping.snapshot_date, mapping.churn.kind, label_horizon_days
            ).isoformat(),
        }
    manifest = update_manifest(
        source_dir,
        spec,
        path,
        digest,
        table,
        snapshot_date=mapping.snapshot_date,
        refreshed=refreshed,
        attributes=declarations if mapping.attributes else None,
        snapshot_export=export,
    )
    logger.info("imported %d %s rows from %s into %s", table.num_rows, spec.name, path, target)
    churned = extras.cancellations.num_rows if extras.cancellations is not None else None
    return ImportSummary(spec.name, table.num_rows, [*written, manifest], churned)


def _refuse_an_older_export(mapping: ImportMapping, source_dir: Path, mapping_path: Path) -> None:
    """An export older than the newest one imported would roll the subscribers' rows (their
    contract, charge, sign-up) and their churn back to an older state: exports go in in order."""
    if mapping.snapshot_date is None or not (mapping.churn or mapping.attributes):
        return
    days = export_days(source_dir)
    if days and mapping.snapshot_date < days[-1]:
        raise ImportMappingError(
            f"{mapping_path}: snapshot_date {mapping.snapshot_date} is before the newest export "
            f"already imported ({days[-1]}): import exports in the order they were taken (an "
            "older one would overwrite newer subscriber rows)"
        )


@dataclass(frozen=True)
class _Extras:
    """What a subscribers export brings besides subscribers (see :mod:`tasks.data.import_export`)."""

    attributes: pa.Table | None
    cancellations: pa.Table | None
    violations: dict[str, list[ContractViolation]]
    """Table name → its violations, in report order."""


def _build_extras(mapping: ImportMapping, raw: pa.Table, subscribers: pa.Table) -> _Extras:
    attributes = cancellations = None
    violations: dict[str, list[ContractViolation]] = {}
    if mapping.attributes:
        attributes, cast_failures = build_attributes(mapping, raw, subscribers["subscriber_id"])
        spec = attributes_table_spec(
            {a.declaration.name: a.declaration for a in mapping.attributes}
        )
        found = _merge(spec, cast_failures, attribute_violations(mapping, attributes))
        violations[spec.name] = sorted(found, key=lambda v: violation_sort_key(spec, v))
    if mapping.churn is not None:
        cancellations, found = build_cancellations(mapping, raw, subscribers)
        # A bad flag is a subscribers column's violation; the rest are the cancellations'.
        flags = [v for v in found if v.table == mapping.spec.name]
        violations["cancellations"] = [v for v in found if v.table == CANCELLATIONS.name]
        violations[mapping.spec.name] = flags
    return _Extras(attributes, cancellations, violations)


def _write_cancellations(source_dir: Path, incoming: pa.Table) -> Path:
    """Upsert by subscriber_id like a ``table: cancellations`` import, except that a subscriber
    already recorded as leaving earlier keeps that date: a later export that still lists a
    former customer as churned says nothing new, and moving the date would put them back in
    service in between."""
    target = table_path(source_dir, CANCELLATIONS)
    data = incoming.cast(CANCELLATIONS.arrow_schema)
    if target.exists():
        existing = pq.read_table(target).select(CANCELLATIONS.arrow_schema.names)
        earlier = existing.join(
            data.select(["subscriber_id", "cancel_date"]).rename_columns(["subscriber_id", "new"]),
            keys="subscriber_id",
            join_type="inner",
        ).filter(pc.field("cancel_date") <= pc.field("new"))
        data = (
            data.join(
                earlier.select(["subscriber_id"]), keys="subscriber_id", join_type="left anti"
            )
            .select(CANCELLATIONS.arrow_schema.names)
            .cast(CANCELLATIONS.arrow_schema)
        )
    return write_parquet_atomic(_upsert(CANCELLATIONS, data, target), target)


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
    refreshed: Iterable[TableSpec] = (),
    attributes: dict[str, AttributeDeclaration] | None = None,
    snapshot_export: dict[str, Any] | None = None,
) -> Path:
    """Record the import in ``_manifest.json``, keeping every key other code wrote.

    ``refreshed``: other tables the import wrote, whose ``tables`` stats are recomputed.
    ``attributes``: the merged attribute declarations, stored under ``"attributes"``.
    ``snapshot_export``: this import's export record; it replaces the stored one unless that
    observed a later day (an older export imported afterwards does not move the source back).
    """
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
    for other in refreshed:
        tables.setdefault(other.name, {}).update(
            _table_stats(source_dir, other) | {"source": "import"}
        )
    if attributes is not None:
        manifest["attributes"] = {name: d.to_json() for name, d in attributes.items()}
    if (snapshot_export is not None or attributes is not None) and snapshot_date is not None:
        days = {*manifest.get("export_days", []), snapshot_date.isoformat()}
        manifest["export_days"] = sorted(days)
    if snapshot_export is not None:
        # The earliest day an export labels: a source of exports covers it (_covered_days).
        labelled = [
            d for d in (manifest.get("labelled_from"), snapshot_export["labelled_day"]) if d
        ]
        manifest["labelled_from"] = min(labelled)
    stored_export = manifest.get("snapshot_export")
    if snapshot_export is not None and not (
        isinstance(stored_export, dict)
        and str(stored_export.get("snapshot_date", "")) > snapshot_export["snapshot_date"]
    ):
        manifest["snapshot_export"] = snapshot_export
    # Top-level start/end are the days the source tables cover (what the feature build reads).
    manifest.update(
        _covered_days(
            source_dir, tables, manifest.get("export_days"), manifest.get("labelled_from")
        )
    )

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


def _covered_days(
    source_dir: Path, tables: dict[str, Any], exported: Any = None, labelled_from: Any = None
) -> dict[str, str]:
    """``{"start", "end"}`` of the source directory, or nothing if no table has dates.

    The daily table's range when it has rows. Else, after snapshot exports, from the day before
    the first (or the earliest day an export with cancellation dates labels, if earlier) to the
    day of the newest: an export says who was in service on the day before it (everyone in it,
    churned or not) and on its day (those who had not left); with cancellation dates, also on
    each day since its labelled day. A source of exports alone keeps every day since its first.
    Else the union of the tables' ranges.
    """
    for spec in SOURCE_TABLES.values():
        if is_daily(spec) and any(table_path(source_dir, spec).glob("*.parquet")):
            stats = _table_stats(source_dir, spec)
            if stats["first_date"]:
                return {"start": stats["first_date"], "end": stats["last_date"]}
    if isinstance(exported, list) and exported:
        days = sorted(date.fromisoformat(d) for d in exported)
        start = days[0] - timedelta(days=1)
        if labelled_from:
            start = min(start, date.fromisoformat(labelled_from))
        return {"start": start.isoformat(), "end": days[-1].isoformat()}
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
