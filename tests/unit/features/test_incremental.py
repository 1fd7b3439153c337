"""The incremental feature build: stepped usage windows equal a from-scratch recompute, whatever the order.

Worlds are small and random (a dozen subscribers, five months of usage, values with full double
precision, exact zeros, gaps and emptied windows); the reference builds each day alone in another
home with no state at all. Equality is exact: same schema, same row order, same bits.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import PLANS, SOURCE_TABLES
from tasks.core.settings import Settings
from tasks.features import windows as windows_module
from tasks.features.feast_offline import partition_files
from tasks.features.tables import FEATURE_TABLES, build_feature_tables
from tasks.features.windows import STATE_DIR, STATE_NAME, WINDOW_DAYS, SourceDays

START = date(2026, 1, 1)
SOURCE_DAYS = 150
END = START + timedelta(days=SOURCE_DAYS - 1)


def day(offset: int) -> date:
    return START + timedelta(days=int(offset))


# --- a random world ---------------------------------------------------------------------------


def _value(rng: np.random.Generator, scale: float) -> float:
    """Use of one day: full double precision, rounded like the simulator, or exactly zero."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return 0.0
    if kind == 1:
        return round(float(rng.exponential(scale)), 3)
    return float(rng.exponential(scale))


def random_world(rng: np.random.Generator) -> dict[str, list[dict]]:
    """Rows of every source table for a dozen subscribers over START .. END."""
    n = int(rng.integers(6, 14))
    rows: dict[str, list[dict]] = {name: [] for name in SOURCE_TABLES}
    plans = list(PLANS)
    for sid in range(1, n + 1):
        signup = day(rng.integers(-40, 120))
        plan = plans[int(rng.integers(0, len(plans)))]
        rows["subscribers"].append(
            {
                "subscriber_id": sid,
                "signup_date": signup,
                "plan": plan,
                "contract_type": "month_to_month",
                "payment_method": "card",
                "monthly_charge": PLANS[plan],
                "region": "north",
                "age_band": "25-34",
                "gender": "female",
            }
        )
        cancel = day(rng.integers(60, SOURCE_DAYS + 30)) if rng.random() < 0.3 else None
        if cancel is not None and cancel > signup:
            rows["cancellations"].append(
                {"subscriber_id": sid, "cancel_date": cancel, "reason": "price"}
            )
        else:
            cancel = None
        # How often this subscriber has a usage row; some stop using early, so windows empty.
        p = float(rng.choice([0.0, 0.2, 0.7, 1.0]))
        stop = day(rng.integers(20, SOURCE_DAYS)) if rng.random() < 0.2 else END
        d = max(signup, START)
        while d <= min(stop, END, (cancel or END + timedelta(days=1)) - timedelta(days=1)):
            if rng.random() < p:
                rows["usage_daily"].append(
                    {
                        "subscriber_id": sid,
                        "usage_date": d,
                        "data_gb": _value(rng, 2.0),
                        "voice_minutes": _value(rng, 30.0),
                        "dropped_calls": int(rng.integers(0, 3)),
                    }
                )
            d += timedelta(days=1)
        for month in range(5):
            due = day(month * 30 + int(rng.integers(0, 30)))
            rows["billing"].append(
                {
                    "subscriber_id": sid,
                    "bill_date": due - timedelta(days=14),
                    "due_date": due,
                    "amount": PLANS[plan],
                    "days_late": int(rng.choice([0, 0, 3, 12])),
                }
            )
        for _ in range(int(rng.integers(0, 5))):
            rows["support_tickets"].append(
                {
                    "ticket_id": len(rows["support_tickets"]) + 1,
                    "subscriber_id": sid,
                    "opened_date": day(rng.integers(0, SOURCE_DAYS)),
                    "category": "network" if rng.random() < 0.5 else "billing",
                }
            )
        if rng.random() < 0.4:
            rows["plan_changes"].append(
                {
                    "subscriber_id": sid,
                    "change_date": day(rng.integers(0, SOURCE_DAYS)),
                    "old_plan": plan,
                    "new_plan": "premium",
                    "old_monthly_charge": PLANS[plan],
                    "new_monthly_charge": 75.0,
                    "reason": "upgrade",
                }
            )
    return rows


def write_world(settings: Settings, rows: dict[str, list[dict]]) -> None:
    """Every source table, usage in three part files (as the simulator splits it), a manifest."""
    settings.source_dir.mkdir(parents=True)
    for name, spec in SOURCE_TABLES.items():
        table = pa.Table.from_pylist(rows[name], schema=spec.arrow_schema)
        path = table_path(settings.source_dir, spec)
        if not spec.partitioned:
            pq.write_table(table, path)
            continue
        path.mkdir()
        dates = table["usage_date"].to_pylist()
        for part, (lo, hi) in enumerate([(0, 50), (50, 100), (100, SOURCE_DAYS)]):
            keep = pa.array([day(lo) <= d < day(hi) for d in dates], pa.bool_())
            pq.write_table(table.filter(keep), path / f"part-{part}.parquet")
    manifest = {"source": "test", "start": START.isoformat(), "end": END.isoformat()}
    (settings.source_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def add_usage_file(settings: Settings, name: str, rows: list[dict]) -> None:
    """A late usage file: rows the source did not have when the states were built."""
    spec = SOURCE_TABLES["usage_daily"]
    pq.write_table(
        pa.Table.from_pylist(rows, schema=spec.arrow_schema),
        table_path(settings.source_dir, spec) / name,
    )


# --- builds and the reference -----------------------------------------------------------------


def reference_home(tmp_path: Path, settings: Settings) -> Settings:
    """Another data root reading the same source: there, every day is built alone from scratch."""
    ref = Settings(home=tmp_path / "reference")
    ref.home.mkdir(parents=True, exist_ok=True)
    if not ref.source_dir.exists():
        ref.source_dir.symlink_to(settings.source_dir, target_is_directory=True)
    return ref


def published(settings: Settings, snapshot: date) -> dict[str, pa.Table | None]:
    """Every feature table's partition of ``snapshot`` (None where it has none)."""
    result = {}
    for name in FEATURE_TABLES:
        files = partition_files(settings.features_dir / name, snapshot, snapshot)
        result[name] = pq.read_table(files) if files else None
    return result


def scratch(ref: Settings, snapshot: date) -> dict[str, pa.Table | None]:
    """``snapshot`` built alone with no state: the windows summed over the 90 days."""
    shutil.rmtree(ref.features_dir / STATE_DIR, ignore_errors=True)
    build_feature_tables(ref, snapshot, snapshot, specs={})
    return published(ref, snapshot)


def state_path(settings: Settings, snapshot: date) -> Path:
    return (
        settings.features_dir
        / STATE_DIR
        / STATE_NAME
        / f"snapshot_date={snapshot.isoformat()}"
        / "part_0.parquet"
    )


def stored_states(settings: Settings) -> list[date]:
    root = settings.features_dir / STATE_DIR / STATE_NAME
    return sorted(date.fromisoformat(p.name.split("=")[1]) for p in root.glob("snapshot_date=*"))


def assert_equal_to_scratch(settings: Settings, ref: Settings, days: list[date]) -> None:
    """Every table's partition of every day, and every stored state, equals the scratch build."""
    for snapshot in days:
        got, want = published(settings, snapshot), scratch(ref, snapshot)
        for name in FEATURE_TABLES:
            assert (got[name] is None) == (want[name] is None), (name, snapshot)
            if want[name] is not None:
                assert got[name].schema == want[name].schema, (name, snapshot)
                assert got[name].equals(want[name]), (name, snapshot)
        if state_path(settings, snapshot).exists():
            assert pq.read_table(state_path(settings, snapshot)).equals(
                pq.read_table(state_path(ref, snapshot))
            ), ("state", snapshot)


def keeping(settings: Settings, days: int) -> Settings:
    return settings.model_copy(update={"feature_state_days": days})


# --- the property: any build order gives the scratch result -----------------------------------


def build_plan(rng: np.random.Generator, order: str, days: list[date]) -> list[tuple[date, date]]:
    """Ranges to build, in order; together they cover ``days``."""
    first, last = days[0], days[-1]
    cut = days[int(rng.integers(1, len(days) - 1))]
    cut2 = days[int(rng.integers(days.index(cut) + 1, len(days)))]
    one_day = timedelta(days=1)
    if order == "forward":  # the nightly: one day after another
        return [(d, d) for d in days]
    if order == "backfill":  # the newest days first, then earlier ones, day by day
        return [(cut, last), *((d, d) for d in reversed(days) if d < cut)]
    if order == "gap_filled_later":
        return [(first, cut - one_day), (cut2, last), (cut, cut2 - one_day)]
    if order == "rebuild":  # everything, then a stretch again, then one day again
        again = days[int(rng.integers(0, len(days)))]
        return [(first, last), (cut, cut2), (again, again)]
    plan = []  # random ranges, then whatever is still missing
    for _ in range(int(rng.integers(2, 6))):
        a, b = sorted(rng.choice(len(days), size=2))
        plan.append((days[a], days[b]))
    built = {d for a, b in plan for d in days if a <= d <= b}
    plan += [(d, d) for d in days if d not in built]
    return plan


@pytest.mark.parametrize(
    ("order", "seed"),
    [
        ("forward", 1),
        ("backfill", 1),
        ("gap_filled_later", 1),
        ("rebuild", 1),
        ("random", 1),
        ("random", 2),
        ("random", 3),
    ],
)
def test_any_build_order_equals_a_from_scratch_recompute(
    churn_home: Settings, tmp_path: Path, order: str, seed: int
) -> None:
    rng = np.random.default_rng([seed, len(order)])
    write_world(churn_home, random_world(rng))
    ref = reference_home(tmp_path, churn_home)
    # Days on both sides of the 90-day mark, so windows fill, slide and (for some) empty.
    first = int(rng.integers(70, 115))
    days = [day(first + i) for i in range(int(rng.integers(8, 16)))]
    settings = keeping(churn_home, int(rng.choice([1, 3, 1000])))
    for start, end in build_plan(rng, order, days):
        build_feature_tables(settings, start, end, specs={}, chunk_days=int(rng.choice([1, 3, 31])))
    assert len(stored_states(settings)) <= settings.feature_state_days
    assert_equal_to_scratch(settings, ref, days)


def test_usage_partitions_are_ordered_by_subscriber(churn_home: Settings) -> None:
    write_world(churn_home, random_world(np.random.default_rng(5)))
    build_feature_tables(churn_home, day(95), day(97), specs={})
    for snapshot in (day(95), day(97)):
        for name in ("subscriber_usage_30d", "subscriber_usage_90d"):
            ids = published(churn_home, snapshot)[name]["subscriber_id"].to_pylist()
            assert ids == sorted(ids) and ids


# --- state missing, from another version ------------------------------------------------------


def test_missing_state_is_rebuilt_from_scratch_and_logged_once(
    churn_home: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_world(churn_home, random_world(np.random.default_rng(11)))
    build_feature_tables(churn_home, day(100), day(102), specs={})
    assert stored_states(churn_home) == [day(100), day(101), day(102)]
    shutil.rmtree(churn_home.features_dir / STATE_DIR)

    with caplog.at_level(logging.INFO, logger="tasks.features.windows"):
        build_feature_tables(churn_home, day(103), day(108), specs={}, chunk_days=2)
    scratch_logs = [r for r in caplog.records if "summed from scratch" in r.getMessage()]
    assert len(scratch_logs) == 1 and scratch_logs[0].levelno == logging.INFO
    assert stored_states(churn_home) == [day(106), day(107), day(108)]
    assert_equal_to_scratch(
        churn_home, reference_home(tmp_path, churn_home), [day(o) for o in range(100, 109)]
    )


def test_state_from_another_sql_version_is_rebuilt(
    churn_home: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_world(churn_home, random_world(np.random.default_rng(12)))
    build_feature_tables(churn_home, day(100), day(101), specs={})
    before = windows_module.code_fingerprint()

    # Any change to a file under sql/features changes what a state means.
    sql_copy = tmp_path / "sql"
    shutil.copytree(windows_module.SQL_ROOT, sql_copy)
    path = sql_copy / "features" / "subscriber_profile.sql"
    path.write_text(path.read_text() + "\n-- edited\n")
    monkeypatch.setattr(windows_module, "SQL_ROOT", sql_copy)
    assert windows_module.code_fingerprint() != before

    with caplog.at_level(logging.INFO, logger="tasks.features.windows"):
        build_feature_tables(churn_home, day(102), day(103), specs={})
    messages = [r.getMessage() for r in caplog.records]
    assert sum("another sql/features version" in m for m in messages) == 1
    assert sum("summed from scratch" in m for m in messages) == 1
    assert stored_states(churn_home) == [day(102), day(103)]  # the old ones are gone
    assert_equal_to_scratch(
        churn_home, reference_home(tmp_path, churn_home), [day(o) for o in range(100, 104)]
    )


# --- crashes ----------------------------------------------------------------------------------


class Crash(RuntimeError):
    pass


def all_files(settings: Settings) -> dict[str, bytes]:
    return {
        str(p.relative_to(settings.features_dir)): p.read_bytes()
        for p in sorted(settings.features_dir.rglob("*"))
        if p.is_file()
    }


def test_crash_while_writing_leaves_no_partial_partition_or_state(
    churn_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_world(churn_home, random_world(np.random.default_rng(13)))
    build_feature_tables(churn_home, day(100), day(101), specs={})
    before = all_files(churn_home)
    real = windows_module.write_relation

    def write_then_crash(relation, path, metadata=None):
        rows = real(relation, path, metadata)
        if "subscriber_usage_90d" in str(path) and day(103).isoformat() in str(path):
            raise Crash("killed after the partition's temp file was written")
        return rows

    monkeypatch.setattr("tasks.features.shards.write_relation", write_then_crash)
    with pytest.raises(Crash):
        build_feature_tables(churn_home, day(102), day(104), specs={})
    # Nothing of the chunk reached the tables or the states; the staging area is gone.
    assert all_files(churn_home) == before
    assert not any((churn_home.home / "tmp" / "staging").iterdir())

    monkeypatch.undo()
    build_feature_tables(churn_home, day(102), day(104), specs={})
    assert_equal_to_scratch(
        churn_home, reference_home(tmp_path, churn_home), [day(o) for o in range(100, 105)]
    )


@pytest.mark.parametrize("crash_at", [1, 4, 7, 12])
def test_crash_while_publishing_leaves_whole_files_and_the_rerun_is_the_same(
    churn_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    write_world(churn_home, random_world(np.random.default_rng(14)))
    settings = keeping(churn_home, 1000)
    build_feature_tables(settings, day(100), day(101), specs={})
    real, calls = os.replace, []

    def replace_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == crash_at:
            raise Crash(f"killed before moving {dst}")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_crash)
    with pytest.raises(Crash):
        build_feature_tables(settings, day(102), day(103), specs={})
    monkeypatch.undo()

    ref = reference_home(tmp_path, churn_home)
    # Every file in place is whole: each partition and each state equals its scratch build.
    for snapshot in (day(102), day(103)):
        want = scratch(keeping(ref, 1000), snapshot)
        for name, table in published(settings, snapshot).items():
            assert table is None or table.equals(want[name]), (name, snapshot)
        if state_path(settings, snapshot).exists():
            assert pq.read_table(state_path(settings, snapshot)).equals(
                pq.read_table(state_path(ref, snapshot))
            )
    build_feature_tables(settings, day(102), day(103), specs={})
    assert_equal_to_scratch(settings, ref, [day(o) for o in range(100, 104)])


# --- late source days -------------------------------------------------------------------------


def test_a_late_source_day_invalidates_exactly_the_states_whose_window_holds_it(
    churn_home: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = random_world(np.random.default_rng(15))
    write_world(churn_home, rows)
    settings = keeping(churn_home, 1000)
    # States on both sides of the window of the late day (30 .. 45 and 125 .. 135).
    early, later = [day(o) for o in range(30, 46)], [day(o) for o in range(125, 136)]
    days = early + later
    for stretch in (early, later):
        build_feature_tables(settings, stretch[0], stretch[-1], specs={})
    assert stored_states(settings) == days

    late = day(40)  # its states: late .. late + 89; those before it and after that stay valid
    add_usage_file(
        settings,
        "part-late.parquet",
        [
            {
                "subscriber_id": 999,
                "usage_date": late,
                "data_gb": 1.5,
                "voice_minutes": 3.0,
                "dropped_calls": 1,
            },
            {
                "subscriber_id": rows["subscribers"][0]["subscriber_id"],
                "usage_date": late,
                "data_gb": 0.25,
                "voice_minutes": 0.0,
                "dropped_calls": 0,
            },
        ],
    )
    with caplog.at_level(logging.INFO, logger="tasks.features.windows"):
        build_feature_tables(settings, days[-1], days[-1], specs={})
    invalid = {late + timedelta(days=k) for k in range(WINDOW_DAYS)}
    assert stored_states(settings) == [d for d in days if d not in invalid]
    changed = [
        r for r in caplog.records if "changed after the usage-window states" in r.getMessage()
    ]
    assert len(changed) == 1 and late.isoformat() in changed[0].getMessage()
    stale = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(stale) == 1 and "rebuild them" in stale[0].getMessage()

    # The next build over those days recomputes them from the source as it is now.
    for stretch in (early, later):
        build_feature_tables(settings, stretch[0], stretch[-1], specs={})
    assert stored_states(settings) == days
    assert_equal_to_scratch(
        settings, reference_home(tmp_path, churn_home), [late, day(45), day(129), day(130)]
    )


def test_a_rewritten_usage_file_invalidates_only_the_days_whose_rows_changed(
    churn_home: Settings,
) -> None:
    write_world(churn_home, random_world(np.random.default_rng(16)))
    settings = keeping(churn_home, 1000)
    built = [day(o) for o in range(95, 100)]
    build_feature_tables(settings, built[0], built[-1], specs={})
    part = table_path(settings.source_dir, SOURCE_TABLES["usage_daily"]) / "part-0.parquet"
    table = pq.read_table(part)
    # The same rows in another order and row-group layout: no usage day changed.
    pq.write_table(table.sort_by([("data_gb", "descending")]), part, row_group_size=7)
    build_feature_tables(settings, built[-1], built[-1], specs={})
    assert stored_states(settings) == built
    # One value of one early day changes: only the states whose window holds that day go.
    dates = table["usage_date"].to_pylist()
    i = min(range(len(dates)), key=lambda k: (dates[k] < day(6), dates[k]))
    data = table["data_gb"].to_pylist()
    data[i] += 1.0
    table = table.set_column(table.schema.get_field_index("data_gb"), "data_gb", [data])
    pq.write_table(table, part)
    build_feature_tables(settings, built[-1], built[-1], specs={})
    holding = {d for d in built if d - timedelta(days=WINDOW_DAYS - 1) <= dates[i] <= d}
    assert holding and stored_states(settings) == [d for d in built if d not in holding]


def test_source_day_fingerprints_are_cached_per_file(
    churn_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_world(churn_home, random_world(np.random.default_rng(17)))
    hashed: list[str] = []
    real = SourceDays._hash_file
    monkeypatch.setattr(
        SourceDays, "_hash_file", lambda self, path: hashed.append(path.name) or real(self, path)
    )
    build_feature_tables(churn_home, day(145), day(146), specs={})
    assert sorted(hashed) == ["part-1.parquet", "part-2.parquet"]  # part-0 ends 90 days before
    hashed.clear()
    build_feature_tables(churn_home, day(147), day(147), specs={})
    assert hashed == []  # nothing changed: every fingerprint from the cache
    late = {"subscriber_id": 1, "usage_date": day(140), "data_gb": 1.0, "voice_minutes": 1.0}
    add_usage_file(churn_home, "part-3.parquet", [{**late, "dropped_calls": 0}])
    build_feature_tables(churn_home, day(148), day(148), specs={})
    assert hashed == ["part-3.parquet"]
