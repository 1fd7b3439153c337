"""Usage windows carried from day to day: the incremental build of the two usage feature views.

Why: ``subscriber_usage_30d`` and ``subscriber_usage_90d`` need each subscriber's use in the 7,
14, 30 and 90 days ending on the snapshot day. Recomputed from the source, one day at 1M
subscribers re-reads 90M usage rows: through running totals and ASOF joins, the two usage queries
took 282 s of the five queries' 288 s (2-core machine, busy). The other three views read small
tables (plans, bills, tickets: 4 s of that day together) and still recompute from the source.

Design, in SQL files (the one definition of every number):

* ``usage_nano.sql``: data and voice as whole nano-units, so every window sum is an exact integer.
* ``usage_windows.sql``: the *windows of day d* from scratch, one row per subscriber with a usage
  row in d-89 .. d: data, voice and days with a row for 7/14/30/90 days, dropped calls for 30.
* ``usage_windows_step.sql``: the windows of d from those of d-1, plus day d, minus the days that
  leave each window (d-7, d-14, d-30, d-90): five days of usage read instead of 90.
* ``subscriber_usage_30d.sql``, ``subscriber_usage_90d.sql``: the feature formulas over the spine
  joined to the windows of the day, whichever way those were reached.

Integer sums make the two ways equal bit for bit, so a published partition does not depend on the
order its days were built in (a property test holds the build to that), and a state depends only
on the usage of the 90 days in its window, never on the chain of days before it. (The running
totals of doubles before gave results that moved in the last bits with the chunk a day was built
in; the 1M world's last day came out identical to them, every value of every row.)

State on disk: ``<features_dir>/_state/usage_windows/snapshot_date=D/part_0.parquet``, the windows
of day D, kept for the newest ``feature_state_days`` days (and only written for those); a build
split by subscriber-id range (``tasks/features/shards.py``) writes one file per shard,
``part_<shard>_0.parquet``, and any later build reads its own ids from them, however it is split.
Each file's Parquet key-value metadata says what it was built from:

* ``churn.state.code``: a fingerprint of every ``sql/features/*.sql`` file, :data:`STATE_FORMAT`
  and the DuckDB version;
* ``churn.state.source_days``: the fingerprint of each usage day in its window (below);
* ``churn.state.shards``: the build that wrote it, its shard and the build's number of shards, so
  a state that lacks a shard's file (a crash while publishing) is never read as a whole one.

At the start of a build every stored state is checked against them, once, before any shard runs.
One from another code version, incomplete, or whose window holds a usage day that changed since
(a late or corrected day), is removed and logged once: a late day x removes exactly the states of
x .. x+89, the ones whose window holds it (a state after x+89 does not read x, and exact sums
carry nothing of it forward), and the next build that needs one of those windows recomputes it.
A day is built by stepping from the windows of the day before (in memory within a chunk, the
file a shard's previous chunk of the same build left, or a stored state up to :data:`MAX_STEPS`
days back, or a stored state of the day itself); otherwise its windows are summed from scratch,
logged once per build. Neither is an error.

Source-day fingerprint: rows and the sum of DuckDB's ``hash`` of every usage row of that day, over
all usage files. Hashing 90 days costs 2 s at 1M, so per-file results are cached in
``<features_dir>/_state/usage_days.json`` keyed by file name, size and mtime: a nightly build
hashes only the files that are new or changed. The fingerprint depends on content only, not on how
the rows are split into files.

Crash safety: states are written to the build's staging folder and moved into place with one
``os.replace`` each, after the chunk's feature partitions (a crash in between leaves partitions
without a state, which only means a scratch build later); metadata lives in the same file, so a
state file is whole or absent, and a state missing one of its shards' files is removed by the next
build. The cache file is replaced the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.files import atomic_path
from tasks.core.layout import table_glob
from tasks.core.schema import SOURCE_TABLES
from tasks.core.settings import Settings
from tasks.core.sql import SQL_ROOT, load_sql
from tasks.features.feast_offline import PARTITION_KEY

logger = logging.getLogger(__name__)

WINDOW_TABLES = ("subscriber_usage_30d", "subscriber_usage_90d")
"""Feature tables built from the usage windows of their day, one day per query."""
STATE_DIR = "_state"
STATE_NAME = "usage_windows"
STATE_FORMAT = "usage_windows/1 nano=1e9"
"""Changes whenever a stored state's columns or units change (with the SQL, in the fingerprint)."""
WINDOW_DAYS = 90
"""Length of the longest window: the usage days a state depends on (d-89 .. d)."""
MAX_STEPS = 4
"""Farthest a stored state is stepped forward: a step costs about a quarter of a scratch sum at 1M."""
CODE_KEY = b"churn.state.code"
SOURCE_KEY = b"churn.state.source_days"
SHARDS_KEY = b"churn.state.shards"


def code_fingerprint() -> str:
    """Fingerprint of what a state means: every ``sql/features`` file, :data:`STATE_FORMAT` and
    the DuckDB version (its ``hash`` makes the source-day fingerprints recorded in a state)."""
    digest = hashlib.sha256(f"{STATE_FORMAT} duckdb {duckdb.__version__}".encode())
    for path in sorted((SQL_ROOT / "features").glob("*.sql")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _window(day: date) -> list[date]:
    return [day - timedelta(days=k) for k in range(WINDOW_DAYS - 1, -1, -1)]


ROW_GROUP_ROWS = 122_880
"""Rows per row group of the files written here (DuckDB's own default)."""


def write_relation(
    relation: duckdb.DuckDBPyRelation, path: Path, metadata: dict[bytes, bytes] | None = None
) -> int:
    """Stream ``relation`` into one Parquet file at ``path`` in its row order; returns its rows.

    Columns are written nullable, as DuckDB's partitioned writes have always written them (its
    plain writer marks a column that holds no NULL as required), so a partition written here reads
    back with the same schema as one written by a partitioned write.
    """
    reader = relation.to_arrow_reader(batch_size=ROW_GROUP_ROWS)
    schema = pa.schema([f.with_nullable(True) for f in reader.schema])
    rows = 0
    # Dictionary pages only where values repeat: on float features and ids they cost up to 50%
    # more bytes than DuckDB's files did (it chooses per column; within 8% of its sizes here).
    repeating = [
        f.name for f in schema if not pa.types.is_floating(f.type) and f.name != "subscriber_id"
    ]
    with pq.ParquetWriter(
        path, schema, compression="zstd", use_dictionary=repeating, store_schema=False
    ) as writer:
        for batch in reader:
            writer.write_batch(batch.cast(schema), row_group_size=ROW_GROUP_ROWS)
            rows += batch.num_rows
        if metadata:
            writer.add_key_value_metadata(metadata)
    return rows


class SourceDays:
    """Content fingerprints of the usage source, per day, cached per file (size and mtime)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
        self.con = con
        self.pattern = Path(table_glob(settings.source_dir, SOURCE_TABLES["usage_daily"]))
        self.cache_path = settings.features_dir / STATE_DIR / "usage_days.json"
        self.format = f"{STATE_FORMAT} duckdb {duckdb.__version__}"

    def _load_cache(self) -> dict:
        try:
            cache = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}
        return cache.get("files", {}) if cache.get("format") == self.format else {}

    @staticmethod
    def _may_hold(path: Path, first: date, last: date) -> bool:
        """Whether the file's row-group statistics allow a usage_date in ``[first, last]``."""
        meta = pq.read_metadata(path)
        column = meta.schema.to_arrow_schema().get_field_index("usage_date")
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(column).statistics
            if stats is None or not stats.has_min_max:
                return True
            if stats.min <= last and stats.max >= first:
                return True
        return False

    def _hash_file(self, path: Path) -> dict[str, list[int]]:
        rows = self.con.execute(
            "SELECT usage_date, COUNT(*), SUM(hash(subscriber_id, usage_date, data_gb, "
            "voice_minutes, dropped_calls)) FROM read_parquet($path, hive_partitioning = false) "
            "GROUP BY usage_date",
            {"path": str(path)},
        ).fetchall()
        return {d.isoformat(): [int(n), int(h) % 2**64] for d, n, h in rows}

    def fingerprints(self, first: date, last: date) -> dict[date, str]:
        """``rows:hash`` of every usage day in ``[first, last]`` that has rows."""
        cached = self._load_cache()
        files: dict[str, dict] = {}
        changed = False
        for path in sorted(self.pattern.parent.glob(self.pattern.name)):
            stat = path.stat()
            entry = cached.get(path.name)
            if entry and (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
                files[path.name] = entry
            elif self._may_hold(path, first, last):
                days = self._hash_file(path)
                files[path.name] = {
                    "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "days": days,
                }
                changed = True
        if changed or files.keys() != cached.keys():
            with atomic_path(self.cache_path) as temp:
                temp.write_text(json.dumps({"format": self.format, "files": files}))
        totals: dict[str, list[int]] = {}
        for entry in files.values():
            for day, (rows, digest) in entry["days"].items():
                total = totals.setdefault(day, [0, 0])
                total[0] += rows
                total[1] = (total[1] + digest) % 2**64
        return {
            date.fromisoformat(day): f"{rows}:{digest:016x}"
            for day, (rows, digest) in totals.items()
            if first <= date.fromisoformat(day) <= last
        }


@dataclass(frozen=True)
class IdRange:
    """A contiguous range of subscriber ids, one shard of a build (``first``/``last`` None: open).

    A build with one shard names its files ``part_0.parquet``; shard ``index`` of ``count`` names
    them ``part_<index:04d>_<i>.parquet``, so a partition's files, read in name order, hold the
    subscribers in id order.
    """

    index: int = 0
    count: int = 1
    first: int | None = None
    last: int | None = None

    def predicate(self) -> str | None:
        """The SQL condition on ``subscriber_id`` that keeps this range (None: everyone)."""
        bounds = []
        if self.first is not None:
            bounds.append(f"subscriber_id >= {int(self.first)}")
        if self.last is not None:
            bounds.append(f"subscriber_id <= {int(self.last)}")
        return " AND ".join(bounds) or None

    @property
    def stem(self) -> str:
        """File name stem before the file's own number: ``part_`` or ``part_<index>_``."""
        return "part_" if self.count == 1 else f"part_{self.index:04d}_"


def id_ranges(max_id: int, per_shard: int) -> list[IdRange]:
    """Ranges of ``per_shard`` ids covering 1 .. ``max_id``; the first and last are open-ended,
    so every id (0 or below, or above ``max_id``) falls in exactly one."""
    count = max(1, -(-max_id // per_shard))
    return [
        IdRange(
            index=k,
            count=count,
            first=None if k == 0 else k * per_shard + 1,
            last=None if k == count - 1 else (k + 1) * per_shard,
        )
        for k in range(count)
    ]


@dataclass(frozen=True)
class WindowsPlan:
    """What every shard of one build knows of the stored states: checked once, before the shards."""

    build: str
    """This build's id, recorded in each state file it writes (a state is the files of one build)."""
    code: str
    sources: dict[date, str]
    keep: frozenset[date]
    """Days whose state survives this build: only those are written."""


def state_root(settings: Settings) -> Path:
    return settings.features_dir / STATE_DIR / STATE_NAME


def state_files(root: Path, day: date) -> list[Path]:
    """The files of the stored state of ``day`` (one per shard of the build that wrote it)."""
    return sorted((root / f"{PARTITION_KEY}={day.isoformat()}").glob("*.parquet"))


def stored_state_days(root: Path) -> list[date]:
    """Days with a stored state, oldest first."""
    if not root.is_dir():
        return []
    return sorted(
        date.fromisoformat(p.name.split("=", 1)[1])
        for p in root.glob(f"{PARTITION_KEY}=*")
        if any(p.glob("*.parquet"))
    )


def _source_days(sources: dict[date, str], day: date) -> dict[str, str]:
    return {d.isoformat(): sources[d] for d in _window(day) if d in sources}


def plan_windows(
    con: duckdb.DuckDBPyConnection, settings: Settings, start: date, end: date, build: str
) -> WindowsPlan:
    """Check the stored states (removing the stale and the incomplete) and plan what to keep."""
    root = state_root(settings)
    stored = stored_state_days(root)
    first = min([start, *stored]) - timedelta(days=WINDOW_DAYS + MAX_STEPS)
    sources = SourceDays(con, settings).fingerprints(first, max([end, *stored]))
    code = code_fingerprint()
    _sweep(settings, root, stored, code, sources)
    build_days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    newest = sorted(set(stored_state_days(root)) | set(build_days))
    keep = frozenset(newest[-settings.feature_state_days :])
    return WindowsPlan(build=build, code=code, sources=sources, keep=keep)


def _file_metadata(path: Path) -> dict[bytes, bytes]:
    try:
        return pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return {}


def _complete(metadata: list[dict[bytes, bytes]]) -> bool:
    """Whether the files are every shard of one build (a state written before shards is one)."""
    shards = [
        json.loads(m.get(SHARDS_KEY, b'{"build": "", "count": 1, "index": 0}')) for m in metadata
    ]
    return len({s["build"] for s in shards}) == 1 and sorted(s["index"] for s in shards) == list(
        range(shards[0]["count"])
    )


def _sweep(
    settings: Settings, root: Path, stored: list[date], code: str, sources: dict[date, str]
) -> None:
    """Remove stored states from another code version, incomplete, or whose window's usage changed."""
    other_code, incomplete, changed = [], [], {}
    for day in stored:
        metadata = [_file_metadata(f) for f in state_files(root, day)]
        if any(m.get(CODE_KEY, b"").decode() != code for m in metadata):
            other_code.append(day)
            continue
        if not _complete(metadata):
            incomplete.append(day)
            continue
        now = set(_source_days(sources, day).items())
        moved = {
            d for m in metadata for d, _ in set(json.loads(m.get(SOURCE_KEY, b"{}")).items()) ^ now
        }
        if moved:
            changed[day] = sorted(moved)
    for day in [*other_code, *incomplete, *changed]:
        shutil.rmtree(root / f"{PARTITION_KEY}={day.isoformat()}", ignore_errors=True)
    if other_code:
        logger.info(
            "usage-window states of %d day(s) (%s .. %s) are from another sql/features "
            "version: removed, to be rebuilt from the source",
            len(other_code),
            other_code[0],
            other_code[-1],
        )
    if incomplete:
        logger.info(
            "usage-window states of %d day(s) (%s .. %s) lack some of their shards' files (a "
            "build stopped while publishing them): removed, to be rebuilt from the source",
            len(incomplete),
            incomplete[0],
            incomplete[-1],
        )
    if changed:
        _log_changed(settings, changed)


def _log_changed(settings: Settings, changed: dict[date, list[str]]) -> None:
    sources = sorted({d for days in changed.values() for d in days})
    days = sorted(changed)
    logger.info(
        "usage of %s changed after the usage-window states of %d day(s) (%s .. %s) were "
        "built: those states are removed and recomputed when next needed",
        ", ".join(sources),
        len(days),
        days[0],
        days[-1],
    )
    published = [
        d
        for d in days
        if any(
            (settings.features_dir / t / f"{PARTITION_KEY}={d.isoformat()}").is_dir()
            for t in WINDOW_TABLES
        )
    ]
    if published:
        logger.warning(
            "the usage feature partitions of %d day(s) between %s and %s were built "
            "before that usage changed: rebuild them (churn features build --start %s "
            "--end %s) to pick it up",
            len(published),
            published[0],
            published[-1],
            published[0],
            published[-1],
        )


def log_scratch(day: date) -> None:
    """Said once per build, by the build (every shard makes the same choice)."""
    logger.info(
        "no usage-window state of %s or the %d days before: its windows are summed "
        "from scratch (%d days of usage), later days step from it",
        day,
        MAX_STEPS,
        WINDOW_DAYS,
    )


def move_partitions(staged_dirs: list[Path], target_dir: Path) -> None:
    """Move the ``snapshot_date=D/*.parquet`` files of every staged folder (one per shard) into
    ``target_dir``, one ``os.replace`` each; then a day's files that these did not bring (an
    earlier split) are removed. Used for the feature tables and for the usage states alike."""
    by_day: dict[str, list[Path]] = {}
    for staged_dir in staged_dirs:
        for staged in sorted(staged_dir.glob(f"{PARTITION_KEY}=*/*.parquet")):
            by_day.setdefault(staged.parent.name, []).append(staged)
    for day_dir, files in sorted(by_day.items()):
        target = target_dir / day_dir
        target.mkdir(parents=True, exist_ok=True)
        for staged in files:
            os.replace(staged, target / staged.name)
        names = {f.name for f in files}
        for old in target.glob("*.parquet"):
            if old.name not in names:
                old.unlink()


def publish_states(settings: Settings, staged_roots: list[Path]) -> None:
    """Move the staged states of every shard into place (the sweep of the next build removes a
    day left half-moved by a crash)."""
    move_partitions([root / STATE_DIR / STATE_NAME for root in staged_roots], state_root(settings))


def prune_states(settings: Settings) -> None:
    """Keep the states of the newest ``feature_state_days`` days only."""
    root = state_root(settings)
    stored = stored_state_days(root)
    for day in stored[: max(0, len(stored) - settings.feature_state_days)]:
        shutil.rmtree(root / f"{PARTITION_KEY}={day.isoformat()}", ignore_errors=True)


class UsageWindows:
    """The usage windows of one shard, one day at a time, in the DuckDB temp table ``usage_windows``.

    One per shard of a chunk: it starts from the windows the shard's previous chunk left
    (``carry``), a stored state, or a scratch sum; moves from day to day with :meth:`advance_to`;
    and stages the states worth keeping. The build publishes them after the features.
    """

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        settings: Settings,
        plan: WindowsPlan,
        shard: IdRange = IdRange(),
        carry: tuple[date, Path] | None = None,
    ) -> None:
        self.con = con
        self.plan = plan
        self.shard = shard
        self.carry = carry
        self.root = state_root(settings)
        self.day: date | None = None  # the day whose windows usage_windows holds
        self.scratch_days: list[date] = []
        con.execute("CREATE OR REPLACE TEMP VIEW usage_nano AS " + load_sql("features/usage_nano"))

    def advance_to(self, day: date) -> None:
        """Fill ``usage_windows`` with the windows of ``day``, by the cheapest exact way."""
        if self.day == day:
            return
        if self.day is not None and self.day < day <= self.day + timedelta(days=MAX_STEPS):
            start = self.day
        elif self.carry and self.carry[0] < day <= self.carry[0] + timedelta(days=MAX_STEPS):
            start = self.carry[0]
            self._load([self.carry[1]])
        else:
            near = [
                d
                for d in stored_state_days(self.root)
                if day - timedelta(days=MAX_STEPS) <= d <= day
            ]
            if not near:
                self._replace(load_sql("features/usage_windows"), {"snapshot_date": day})
                self.day = day
                self.scratch_days.append(day)
                return
            start = near[-1]
            self._load(state_files(self.root, start))
        self.day = start
        while self.day < day:
            self.day += timedelta(days=1)
            self.con.execute("DROP TABLE IF EXISTS usage_windows_before")
            self.con.execute("ALTER TABLE usage_windows RENAME TO usage_windows_before")
            self._replace(load_sql("features/usage_windows_step"), {"snapshot_date": self.day})
        self.con.execute("DROP TABLE IF EXISTS usage_windows_before")

    def _load(self, files: list[Path]) -> None:
        """This shard's rows of a state, whichever shards wrote it."""
        where = self.shard.predicate()
        self._replace(
            "SELECT * FROM read_parquet($files, hive_partitioning = false)"
            + (f" WHERE {where}" if where else ""),
            {"files": [str(f) for f in files]},
        )

    def _replace(self, query: str, params: dict) -> None:
        self.con.execute("CREATE OR REPLACE TEMP TABLE usage_windows AS " + query, params)

    # --- writing -----------------------------------------------------------------------------

    def stage(self, day: date, staging: Path) -> None:
        """Write this shard's windows of ``day`` (held now) under ``staging`` if its state is kept."""
        if day not in self.plan.keep:
            return
        self._check_holds(day)
        path = staging / STATE_DIR / STATE_NAME / f"{PARTITION_KEY}={day.isoformat()}"
        path.mkdir(parents=True)
        shards = {"build": self.plan.build, "count": self.shard.count, "index": self.shard.index}
        metadata = {
            CODE_KEY: self.plan.code.encode(),
            SOURCE_KEY: json.dumps(_source_days(self.plan.sources, day), sort_keys=True).encode(),
            SHARDS_KEY: json.dumps(shards, sort_keys=True).encode(),
        }
        write_relation(
            self.con.sql("SELECT * FROM usage_windows ORDER BY subscriber_id"),
            path / f"{self.shard.stem}0.parquet",
            metadata,
        )

    def save_carry(self, day: date, path: Path) -> None:
        """Leave the windows of ``day`` for this shard's next chunk (a file of this build only)."""
        self._check_holds(day)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_relation(self.con.sql("SELECT * FROM usage_windows"), path)

    def _check_holds(self, day: date) -> None:
        if self.day != day:
            raise RuntimeError(f"usage_windows holds the windows of {self.day}, not of {day}")
