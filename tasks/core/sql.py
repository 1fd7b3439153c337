"""Load the project's SQL files and run them on a DuckDB session pinned to UTC."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import duckdb

from tasks.core.settings import PROJECT_ROOT

SQL_ROOT = PROJECT_ROOT / "sql"


@cache
def load_sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` (e.g. ``features/subscriber_usage_30d``)."""
    path = SQL_ROOT / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {path.relative_to(PROJECT_ROOT)}")
    return path.read_text()


def connect(
    memory_limit: str | None = None, spill_dir: Path | None = None, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB session in UTC.

    Mixed naive/aware timestamps are interpreted in the session time zone; pinning it to
    UTC keeps as-of joins identical on every machine whatever its local zone. With a memory
    limit, DuckDB spills to ``spill_dir`` instead of growing. ``threads``: DuckDB's default is
    every core, too many where several sessions share a machine.
    """
    config: dict[str, str] = {}
    if memory_limit is not None:
        config["memory_limit"] = memory_limit
    if threads is not None:
        config["threads"] = str(threads)
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(spill_dir)
    con = duckdb.connect(":memory:", config=config)
    con.execute("SET TimeZone = 'UTC'")
    return con


def used_params(sql_text: str, params: dict[str, object]) -> dict[str, object]:
    """The subset of ``params`` that ``sql_text`` references as ``$name`` (DuckDB rejects extras)."""
    import re

    code = re.sub(r"--[^\n]*", "", sql_text)  # header comments mention parameters too
    names = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", code))
    return {k: v for k, v in params.items() if k in names}
