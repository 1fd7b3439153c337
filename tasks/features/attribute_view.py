"""The optional feature view over imported subscriber attributes (``subscriber_attributes``).

An import may declare attributes of its own (``attributes:`` in a subscribers mapping, kept in
the source table of that name by :mod:`tasks.data.attributes`). A feature definitions file that
declares features under ``views: subscriber_attributes`` makes the build write that feature table
too (``sql/features/subscriber_attributes.sql``, which gives every attribute column; the build
keeps the declared ones), and Feast serve it like any other view. Each day takes the values last
observed on or before it, with one exception: the days a source made from exports covers before
its first observation day (:data:`BACKFILL_VIEW`) take that day's values, for the cold start
learns from them. Without such features nothing here runs, and a source without attributes is
never asked for them.

A categorical attribute is a ``String`` feature and a numeric one a ``Float64`` feature: the
types the source table has, which ``churn features apply`` checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa

from tasks.core.errors import SourceDataMissing
from tasks.data.attributes import attribute_declarations, attributes_path
from tasks.data.sources import read_manifest
from tasks.features.definitions import ATTRIBUTES_VIEW, FEAST_TO_ARROW, Definitions

ALL_IDS_VIEW = f"{ATTRIBUTES_VIEW}_all"
"""The attributes of every subscriber, also in a shard's build (see the view's SQL)."""
BACKFILL_VIEW = f"{ATTRIBUTES_VIEW}_backfill"
"""One row, ``from_day``: the first day that takes the first observation's values (NULL: only
the eve of the first observation day does)."""


def uses_attributes(definitions: Definitions) -> bool:
    return ATTRIBUTES_VIEW in definitions.views


def declared_attributes(definitions: Definitions) -> list[str]:
    """The attribute columns the definitions use, in their view's order."""
    return [f.name for f in definitions.view_features(ATTRIBUTES_VIEW)]


def register_attributes(
    con: duckdb.DuckDBPyConnection, source_dir: Path, subscribers: str | None = None
) -> None:
    """The source's attributes as view ``subscriber_attributes`` (``subscribers``: a shard's ids).

    Raises:
        SourceDataMissing: the source has no attributes table.
    """
    path = attributes_path(source_dir)
    if not path.is_file():
        raise SourceDataMissing(
            f"the feature definitions use imported subscriber attributes (view {ATTRIBUTES_VIEW}), "
            f"but the source has none ({path}): import them with `attributes:` in a "
            "subscribers mapping (see README, Importing your data)"
        )
    _register_backfill(con, backfill_from(source_dir))
    relation = con.read_parquet(str(path))
    # Every id, whatever the shard: the source's first observation day is the source's, so a
    # shard whose subscribers were all first seen later agrees with the whole build.
    relation.create_view(ALL_IDS_VIEW)
    if subscribers:
        relation = relation.filter(subscribers)
    relation.create_view(ATTRIBUTES_VIEW)


def register_empty_attributes(
    con: duckdb.DuckDBPyConnection, definitions: Definitions, source_dir: Path | None
) -> None:
    """An empty ``subscriber_attributes`` table for checking the SQL without data: the columns
    the source's imports declared when there are any, else those the definitions declare (so a
    definitions file can be checked before the first import)."""
    declared = attribute_declarations(source_dir) if source_dir is not None else {}
    if declared:
        columns = {name: d.arrow_type for name, d in declared.items()}
    else:
        columns = {
            f.name: FEAST_TO_ARROW[f.type] for f in definitions.view_features(ATTRIBUTES_VIEW)
        }
    schema = pa.schema(
        [("subscriber_id", pa.int64()), ("observed_date", pa.date32()), *columns.items()]
    )
    con.register(ATTRIBUTES_VIEW, schema.empty_table())
    con.register(ALL_IDS_VIEW, schema.empty_table())
    _register_backfill(con, None)


def backfill_from(source_dir: Path) -> date | None:
    """The first day before the first observation that takes its values, or None (the eve only).

    An export with cancellation dates labels a day a whole label horizon before it (the
    manifest's ``labelled_from``), and the cold start needs the export's attributes on that day.
    Only in a source that export began: where a daily feed covered those days already, later
    values there would leak into rows the rolling retraining may learn from.
    """
    manifest = read_manifest(source_dir)
    labelled_from, start = manifest.get("labelled_from"), manifest.get("start")
    if labelled_from and labelled_from == start:
        return date.fromisoformat(labelled_from)
    return None


def _register_backfill(con: duckdb.DuckDBPyConnection, from_day: date | None) -> None:
    con.register(BACKFILL_VIEW, pa.table({"from_day": pa.array([from_day], pa.date32())}))


def attribute_query(query: str, features: Sequence[str]) -> str:
    """The view's SQL cut to the keys and the declared features (the SQL gives every attribute)."""
    quoted = ", ".join(f'"{name}"' for name in features)
    return f"SELECT subscriber_id, snapshot_ts, {quoted}, snapshot_date FROM ({query})"
