"""Lineage of a model version: what data, code and environment produced it (DESIGN §5).

Every value is a plain string, short enough for an MLflow run tag (8,000 characters, the
stricter of the run and model-version limits), so the same dictionary can be set on either.
Nothing here raises because git or the lock file is missing: such a value reads ``unknown``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
from datetime import date
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.settings import PROJECT_ROOT

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
MAX_TAG_VALUE_LENGTH = 8000
"""MLflow's limit on a run tag value; model-version tags allow more, so this fits both."""

PACKAGES = (
    "lightgbm",
    "mlflow",
    "feast",
    "pandas",
    "numpy",
    "scikit-learn",
    "polars",
    "duckdb",
    "pyarrow",
)
"""Packages whose installed versions every model version records (``package.<name>`` tags)."""

# Fixed writer options for the fingerprint: the Parquet encoding of the rows, not their in-memory
# layout (chunking, validity buffers, bytes under nulls), so equal rows hash equally. No Arrow
# schema blob (store_schema=False): it would tie the hash to pandas metadata and type spellings.
_FINGERPRINT_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "write_statistics": False,
    "store_schema": False,
    "row_group_size": 1 << 20,
    "data_page_size": 1 << 20,
    "use_dictionary": True,
}


def lineage_tags(
    *,
    training_window: tuple[date, date],
    feature_service: str,
    feature_service_version: str,
    frame: pa.Table | pd.DataFrame,
    reason: str,
    flow_run_id: str | None,
    project_root: Path = PROJECT_ROOT,
) -> dict[str, str]:
    """Tags that say where a model version came from, all strings.

    Keys: ``training_window_start``/``_end`` (ISO dates), ``feature_service``,
    ``feature_service_version``, ``data_fingerprint`` (``sha256:<hex>``), ``data_rows``,
    ``git_commit``, ``git_dirty`` (``true``/``false``/``unknown``), ``uv_lock_sha256``,
    ``package.<name>`` for each of :data:`PACKAGES`, ``reason`` and ``flow_run_id``
    (``none`` outside a Prefect flow run).
    """
    start, end = training_window
    commit, dirty = code_version(project_root)
    tags = {
        "training_window_start": start.isoformat(),
        "training_window_end": end.isoformat(),
        "feature_service": feature_service,
        "feature_service_version": str(feature_service_version),
        "data_fingerprint": data_fingerprint(frame),
        "data_rows": str(frame.num_rows if isinstance(frame, pa.Table) else len(frame)),
        "git_commit": commit,
        "git_dirty": dirty,
        "uv_lock_sha256": lock_file_hash(project_root / "uv.lock"),
        **{f"package.{name}": version for name, version in package_versions().items()},
        "reason": reason,
        "flow_run_id": flow_run_id or "none",
    }
    return {key: _fit(str(value)) for key, value in tags.items()}


class _HashingSink(io.RawIOBase):
    """A write-only file that hashes what is written instead of keeping it."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.position += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.position


def data_fingerprint(frame: pa.Table | pd.DataFrame) -> str:
    """``sha256:<hex>`` of the frame's Parquet encoding with fixed options.

    The same rows in the same order with the same column names and types give the same
    fingerprint, however the table is chunked; any changed value changes it. The bytes are
    streamed into the hash, never held in memory. Stable for one pyarrow version (recorded
    beside it as ``package.pyarrow``).
    """
    table = (
        frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    )
    table = table.replace_schema_metadata(None)
    sink = _HashingSink()
    pq.write_table(table, sink, **_FINGERPRINT_OPTIONS)
    return f"sha256:{sink.digest.hexdigest()}"


def code_version(root: Path = PROJECT_ROOT) -> tuple[str, str]:
    """``(commit, dirty)`` of the git checkout at ``root``; ``("unknown", "unknown")`` outside one.

    ``dirty`` is ``"true"`` when ``git status --porcelain`` lists anything (changed, staged or
    untracked-and-not-ignored files), else ``"false"``.
    """
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return UNKNOWN, UNKNOWN
    status = _git(root, "status", "--porcelain")
    dirty = UNKNOWN if status is None else ("true" if status else "false")
    return commit, dirty


def _git(root: Path, *args: str) -> str | None:
    """Output of ``git -C root args``, stripped; ``None`` when git is absent or says no."""
    try:
        done = subprocess.run(
            # No optional locks: `status` must not take index.lock beside a person's git commands.
            ["git", "--no-optional-locks", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # no git binary, no such dir, hung
        logger.debug("git %s failed: %s", " ".join(args), exc)
        return None
    if done.returncode != 0:
        logger.debug("git %s exited %s: %s", " ".join(args), done.returncode, done.stderr.strip())
        return None
    return done.stdout.strip()


def lock_file_hash(path: Path) -> str:
    """``sha256:<hex>`` of the lock file, or ``unknown`` when it cannot be read."""
    try:
        return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    except OSError:
        return UNKNOWN


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution; ``not installed`` for a missing one."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _fit(value: str) -> str:
    """Cut a value to the tag limit, saying so at the end rather than failing the registration."""
    if len(value) <= MAX_TAG_VALUE_LENGTH:
        return value
    marker = "… [truncated]"
    return value[: MAX_TAG_VALUE_LENGTH - len(marker)] + marker
