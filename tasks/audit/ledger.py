"""The prediction log's ledger: one JSON line per published file, and the check that nothing changed.

``$CHURN_HOME/predictions/_ledger.jsonl`` is append-only: path, rows, SHA-256, model, role, flow
run. Publishing (a rename plus its ledger line) and verifying serialise on ``.ledger.lock``.
:func:`verify_log` recomputes every file's checksum and row count and reports modified, missing
and unexpected files; a temp file whose writer still holds its lock is in flight, not unexpected.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.audit.log_schema import ONLINE, ROLES, PredictionLogError
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)

LEDGER_NAME = "_ledger.jsonl"
LOCK_NAME = ".ledger.lock"
TEMP_PREFIX = ".writing-"
TEMP_SUFFIX = ".tmp"
PARTITION_PREFIX = "score_date="
LOG_GLOB = f"{PARTITION_PREFIX}*/*.parquet"
_PATH_RE = re.compile(
    rf"^{PARTITION_PREFIX}(\d{{4}}-\d{{2}}-\d{{2}})/"
    rf"([A-Za-z0-9][A-Za-z0-9_.-]*)-v([1-9][0-9]*)-"
    rf"(?:{'|'.join(ROLES)}|{ONLINE}-[0-9]{{8}}T[0-9]{{12}}Z-[0-9a-f]{{8}})\.parquet$"
)
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class LedgerEntry:
    """One published file: its path relative to the log, what it holds, rows and checksum."""

    path: str
    score_date: date
    model_name: str
    model_version: int
    role: str
    rows: int
    sha256: str
    written_at: datetime
    flow_run_id: str | None

    def to_json(self) -> str:
        record = asdict(self)
        record["score_date"] = self.score_date.isoformat()
        record["written_at"] = self.written_at.isoformat()
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> LedgerEntry:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise TypeError("not a JSON object")
        record["score_date"] = date.fromisoformat(record["score_date"])
        record["written_at"] = datetime.fromisoformat(record["written_at"])
        entry = cls(**record)
        if not _PATH_RE.match(entry.path):
            raise ValueError(f"path {entry.path!r} is not a prediction log file")
        return entry


@dataclass(frozen=True)
class FileMismatch:
    """A published file whose bytes or row count differ from its latest ledger line."""

    path: str
    expected_sha256: str
    actual_sha256: str
    expected_rows: int
    actual_rows: int | None  # None: not readable as Parquet any more

    def __str__(self) -> str:
        rows = "unreadable" if self.actual_rows is None else f"{self.actual_rows:,}"
        return (
            f"{self.path}: sha256 {self.actual_sha256[:12]}… (ledger {self.expected_sha256[:12]}…),"
            f" rows {rows} (ledger {self.expected_rows:,})"
        )


@dataclass(frozen=True)
class VerifyReport:
    """The log on disk against its ledger.

    ``ok``: files whose checksum and rows match; ``modified``: differ; ``missing``: in the ledger,
    not on disk; ``unexpected``: on disk, not in the ledger (including temp files no writer holds
    any more); ``in_flight``: temp files a live writer holds (ignored, listed for information).
    """

    ok: int
    modified: tuple[FileMismatch, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    in_flight: tuple[str, ...] = ()
    ledger_lines: int = 0

    @property
    def clean(self) -> bool:
        return not (self.modified or self.missing or self.unexpected)

    def summary(self) -> str:
        return (
            f"{self.ok} ok, {len(self.modified)} modified, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected"
        )


def log_path(
    settings: Settings, score_date: date, model_name: str, model_version: int, role: str
) -> Path:
    """Where the file of (score date, model version, role) lives."""
    return settings.predictions_dir / relative_path(score_date, model_name, model_version, role)


def ledger_path(settings: Settings) -> Path:
    return settings.predictions_dir / LEDGER_NAME


def relative_path(score_date: date, model_name: str, model_version: int, role: str) -> str:
    return (
        f"{PARTITION_PREFIX}{score_date.isoformat()}/{model_name}-v{model_version}-{role}.parquet"
    )


def sha256_file(path: Path, *, fsync: bool = False) -> str:
    """The SHA-256 of ``path``, read in chunks; with ``fsync``, its bytes are flushed to disk too."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def held_by_writer(path: Path) -> bool:
    """Whether a live writer holds ``path`` (a temp file) locked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


# --- ledger --------------------------------------------------------------------------------


@contextlib.contextmanager
def ledger_lock(settings: Settings, mode: int) -> Iterator[None]:
    """Serialise publishing (exclusive) against verifying (shared), across processes."""
    lock = settings.predictions_dir / LOCK_NAME
    if mode == fcntl.LOCK_SH and not lock.exists():
        yield  # nothing was ever published, and a read-only check creates nothing
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append_ledger(settings: Settings, entry: LedgerEntry) -> None:
    """Append one line, flushed and fsynced; a partial write is cut off again."""
    path = ledger_path(settings)
    with open(path, "ab") as handle:
        size = handle.seek(0, os.SEEK_END)
        try:
            handle.write((entry.to_json() + "\n").encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            handle.truncate(size)
            raise
    if size == 0:
        fsync_dir(path.parent)


def read_ledger(settings: Settings) -> list[LedgerEntry]:
    """Every ledger line, oldest first (empty before the first file is published).

    Raises:
        PredictionLogError: a line is not a valid ledger record (named by its number).
    """
    path = ledger_path(settings)
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(LedgerEntry.from_json(line))
        except (ValueError, TypeError, KeyError) as exc:
            raise PredictionLogError(f"{path} line {number} is not a ledger record: {exc}") from exc
    return entries


def latest_entries(settings: Settings) -> dict[str, LedgerEntry]:
    """The expected state of the log: the latest ledger line per path, by path."""
    return {entry.path: entry for entry in read_ledger(settings)}


def log_files(settings: Settings) -> list[Path]:
    """Every published Parquet file of the log on disk, sorted (temp files of writers excluded)."""
    root = settings.predictions_dir
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(LOG_GLOB) if p.is_file())


# --- verify --------------------------------------------------------------------------------


def verify_log(settings: Settings) -> VerifyReport:
    """Check every file of the log against the latest ledger line for its path.

    Reads only; holds the ledger lock shared, so no file is published halfway through.

    Raises:
        PredictionLogError: the ledger itself is not readable.
    """
    root = settings.predictions_dir
    if not root.is_dir():
        return VerifyReport(ok=0)
    with ledger_lock(settings, fcntl.LOCK_SH):
        lines = read_ledger(settings)
        expected = {entry.path: entry for entry in lines}
        ok = 0
        modified: list[FileMismatch] = []
        missing: list[str] = []
        for rel, entry in sorted(expected.items()):
            path = root / rel
            if not path.is_file():
                missing.append(rel)
                continue
            sha256 = sha256_file(path)
            rows = _row_count(path)
            if sha256 == entry.sha256 and rows == entry.rows:
                ok += 1
            else:
                modified.append(FileMismatch(rel, entry.sha256, sha256, entry.rows, rows))
        unexpected: list[str] = []
        in_flight: list[str] = []
        for path in sorted(root.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                continue
            rel = path.relative_to(root).as_posix()
            if rel in expected or rel in (LEDGER_NAME, LOCK_NAME):
                continue
            if is_temp(path.name) and held_by_writer(path):
                in_flight.append(rel)
            else:
                unexpected.append(rel)
    report = VerifyReport(
        ok=ok,
        modified=tuple(modified),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        in_flight=tuple(in_flight),
        ledger_lines=len(lines),
    )
    logger.info("verified prediction log %s: %s", root, report.summary())
    return report


def _row_count(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError):
        return None
