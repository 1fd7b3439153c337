"""The feature SQL checked against the feature definitions: same columns, same types.

The SQL of a feature is the one part of it that cannot be derived from its definition
(``feature_repo/features.yaml``, :mod:`tasks.features.definitions`), so ``churn features apply``
checks it: DuckDB plans each view's query over empty tables of the source schema (and empty
usage windows) and reports its output columns and types, which must be exactly the view's
declared features (beside the keys), each of its declared type. No row is read: the check of
every view takes well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path

import duckdb

from tasks.core.errors import DefinitionProblem
from tasks.core.sql import SQL_ROOT, connect, used_params
from tasks.data.sources import create_spine, register_empty_sources
from tasks.features.attribute_view import register_empty_attributes, uses_attributes
from tasks.features.definitions import ATTRIBUTES_VIEW, Definitions, display
from tasks.features.shards import FEATURE_TABLES

DUCKDB_TYPES = {
    "Int32": "INTEGER",
    "Int64": "BIGINT",
    "Float32": "FLOAT",
    "Float64": "DOUBLE",
    "String": "VARCHAR",
    "Bool": "BOOLEAN",
}
"""The DuckDB type a feature of each Feast type must have in its SQL's output."""
FEAST_OF = {duck: feast for feast, duck in DUCKDB_TYPES.items()}
KEYS = ("subscriber_id", "snapshot_ts", "snapshot_date")
"""Columns every feature table's SQL gives beside its features."""
_ANY_DAY = date(2026, 1, 1)  # the parameters' values do not change the output's types


def output_types(con: duckdb.DuckDBPyConnection, query: str) -> dict[str, str]:
    """Column name → DuckDB type of a feature query's output, on a connection prepared by
    :func:`sql_problems` (empty sources, spine and usage windows)."""
    query = query.strip().rstrip(";")
    params = {"start_date": _ANY_DAY, "end_date": _ANY_DAY, "snapshot_date": _ANY_DAY}
    relation = con.sql(f"SELECT * FROM ({query}) LIMIT 0", params=used_params(query, params))
    return {name: str(kind) for name, kind in zip(relation.columns, relation.types, strict=True)}


def _prepared(
    sql_dir: Path, definitions: Definitions, source_dir: Path | None
) -> duckdb.DuckDBPyConnection:
    con = connect()
    register_empty_sources(con)
    if uses_attributes(definitions):
        register_empty_attributes(con, definitions, source_dir)
    create_spine(con, [])
    con.execute("CREATE TEMP VIEW usage_nano AS " + (sql_dir / "usage_nano.sql").read_text())
    con.execute(
        "CREATE TEMP TABLE usage_windows AS " + (sql_dir / "usage_windows.sql").read_text(),
        {"snapshot_date": _ANY_DAY},
    )
    return con


def sql_problems(
    definitions: Definitions,
    sql_dir: Path = SQL_ROOT / "features",
    tables: Sequence[str] | None = None,
    source_dir: Path | None = None,
) -> list[DefinitionProblem]:
    """Every disagreement between the definitions and the SQL of their views (none: ``[]``).

    ``tables`` are the feature tables the build writes (default: :data:`FEATURE_TABLES`, and the
    imported attributes' view where the definitions use it): every view with definitions must be
    one, and every one must have definitions. ``source_dir``: the source whose imported
    attributes the attributes' view reads (their declared types are what its SQL gives).
    """
    if tables is None:
        tables = FEATURE_TABLES + ((ATTRIBUTES_VIEW,) if uses_attributes(definitions) else ())
    here = display(definitions.path)
    problems = [
        DefinitionProblem(
            here,
            f"view {view}",
            "is not a feature table the build writes: add it to FEATURE_TABLES in "
            "tasks/features/shards.py",
        )
        for view in definitions.views
        if view not in tables
    ]
    problems += [
        DefinitionProblem(here, f"view {table}", "is built but declares no features here")
        for table in tables
        if table not in definitions.views
    ]
    con = _prepared(sql_dir, definitions, source_dir)
    try:
        for view in definitions.views:
            problems += _view_problems(con, definitions, view, sql_dir / f"{view}.sql")
    finally:
        con.close()
    return problems


def _view_problems(
    con: duckdb.DuckDBPyConnection, definitions: Definitions, view: str, path: Path
) -> list[DefinitionProblem]:
    file, here = display(path), display(definitions.path)
    if not path.is_file():
        return [
            DefinitionProblem(
                file, f"view {view}", "no such file: each view is built by sql/features/<view>.sql"
            )
        ]
    try:
        columns = output_types(con, path.read_text())
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        return [DefinitionProblem(file, f"view {view}", f"the query does not run: {first}")]
    declared = definitions.view_features(view)
    gives = [c for c in columns if c not in KEYS]
    problems = []
    for feature in declared:
        got = columns.get(feature.name)
        if got is None:
            problems.append(
                DefinitionProblem(
                    file,
                    f"feature {feature.name}",
                    f"declared in {here} but not a column of this query "
                    f"(it gives {', '.join(gives) or 'no feature column'})",
                )
            )
        elif got != DUCKDB_TYPES[feature.type]:
            problems.append(
                DefinitionProblem(
                    file,
                    f"feature {feature.name}",
                    f"declared {feature.type} in {here}, but this query gives {got}"
                    + (f" ({FEAST_OF[got]})" if got in FEAST_OF else "")
                    + f": declare its type, or CAST it AS {DUCKDB_TYPES[feature.type]}",
                )
            )
    names = {f.name for f in declared}
    if view == ATTRIBUTES_VIEW:
        return problems  # its SQL gives every imported attribute; the build keeps the declared
    problems += [
        DefinitionProblem(
            file,
            f"column {column}",
            f"is not declared in {here}: declare it under views: {view}, or drop it from the query",
        )
        for column in gives
        if column not in names
    ]
    return problems
