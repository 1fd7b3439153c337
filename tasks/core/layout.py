"""Where each table lives under the data root (DESIGN §3)."""

from __future__ import annotations

from pathlib import Path

from tasks.core.schema import TableSpec

MANIFEST_NAME = "_manifest.json"
"""Beside the source tables: what produced them (simulator arguments or import) and their date range."""


def table_path(root: Path, spec: TableSpec) -> Path:
    """A table's file (``<root>/<name>.parquet``) or, when partitioned, its directory."""
    return root / spec.name if spec.partitioned else root / f"{spec.name}.parquet"


def table_glob(root: Path, spec: TableSpec) -> str:
    """What DuckDB's ``read_parquet`` takes to read the whole table."""
    path = table_path(root, spec)
    return str(path / "*.parquet") if spec.partitioned else str(path)
