"""whylogs profiles: chunked and merged profiles count what the whole frame holds, exact summary
figures survive sampling, files round-trip, and whylogs never reports usage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tasks.core.settings import PROJECT_ROOT
from tasks.monitoring.profiles import (
    SUMMARY_SCHEMA,
    ProfileError,
    profile_frame,
    profile_summary,
    read_profile,
    write_profile,
)

N = 12_000


def frame(n: int = N, seed: int = 0) -> pa.Table:
    """Scoring-like columns: floats with NaN and nulls, counts, a category with nulls, a flag."""
    rng = np.random.default_rng(seed)
    charge = rng.gamma(4.0, 14.0, n)
    charge[rng.random(n) < 0.01] = np.nan  # NaN counts as missing, as whylogs does
    plan = rng.choice(["basic", "premium", "standard", "unlimited"], size=n).astype(object)
    plan[rng.random(n) < 0.02] = None
    return pa.table(
        {
            "monthly_charge": pa.array(charge.astype(np.float32), mask=rng.random(n) < 0.03),
            "support_calls_30d": pa.array(rng.poisson(0.3, n).astype(np.int32)),
            "plan": pa.array(plan.tolist(), pa.string()),
            "autopay": pa.array(rng.random(n) < 0.4),
            "probability": pa.array(rng.beta(1, 30, n)),
        }
    )


def counts(handle: object) -> dict[str, tuple[int, int]]:
    """whylogs' own ``counts/n`` and ``counts/null`` per column."""
    out = {}
    for name in handle.columns:
        metric = handle.view.get_column(name).get_metric("counts")
        out[name] = (int(metric.n.value), int(metric.null.value))
    return out


def test_chunks_merge_to_the_whole_frame() -> None:
    table = frame()
    whole = profile_frame(table, max_rows=None, chunk_rows=N)
    chunked = profile_frame(table, max_rows=None, chunk_rows=3_000)
    halves = profile_frame(table.slice(0, 5_432), max_rows=None).merge(
        profile_frame(table.slice(5_432), max_rows=None)
    )
    expected = {
        "monthly_charge": (N, _missing(table, "monthly_charge")),
        "support_calls_30d": (N, 0),
        "plan": (N, table.column("plan").null_count),
        "autopay": (N, 0),
        "probability": (N, 0),
    }
    assert counts(whole) == counts(chunked) == counts(halves) == expected
    summaries = [profile_summary(h) for h in (whole, chunked, halves)]
    for column in ("rows", "nulls", "min", "max"):
        assert summaries[0].column(column).equals(summaries[1].column(column))
        assert summaries[0].column(column).equals(summaries[2].column(column))
    for s in summaries[1:]:  # means agree to rounding
        np.testing.assert_allclose(
            s.column("mean").to_numpy(zero_copy_only=False),
            summaries[0].column("mean").to_numpy(zero_copy_only=False),
            rtol=1e-12,
        )
    # Sketch estimates of a merged profile stay close to the whole one's.
    np.testing.assert_allclose(
        summaries[2].column("q50").to_numpy(zero_copy_only=False)[[0, 4]],
        summaries[0].column("q50").to_numpy(zero_copy_only=False)[[0, 4]],
        rtol=0.05,
    )


def _missing(table: pa.Table, name: str) -> int:
    column = table.column(name)
    return column.null_count + int(pc.sum(pc.is_nan(column)).as_py())


def test_summary_is_exact_in_rows_nulls_and_mean() -> None:
    table = frame()
    summary = {r["column"]: r for r in profile_summary(profile_frame(table)).to_pylist()}
    assert profile_summary(profile_frame(table)).schema == SUMMARY_SCHEMA
    charge = summary["monthly_charge"]
    values = table.column("monthly_charge").to_numpy(zero_copy_only=False).astype(np.float64)
    assert charge["rows"] == N
    assert charge["nulls"] == _missing(table, "monthly_charge")
    assert charge["mean"] == pytest.approx(np.nanmean(values), rel=1e-9)
    assert charge["min"] == pytest.approx(np.nanmin(values))
    assert charge["max"] == pytest.approx(np.nanmax(values))
    assert charge["q50"] == pytest.approx(np.nanmedian(values), rel=0.03)
    plan = summary["plan"]
    assert (plan["kind"], plan["distinct_estimate"]) == ("categorical", pytest.approx(4, abs=0.01))
    assert plan["top_values"].count("%") == 4
    assert summary["autopay"]["mean"] == pytest.approx(
        float(np.mean(table.column("autopay").to_numpy(zero_copy_only=False)))
    )


def test_sampled_profile_keeps_exact_counts_and_bounded_quantiles() -> None:
    table = frame(200_000, seed=1)
    sampled = profile_frame(table, max_rows=50_000, seed=7)
    assert (sampled.rows, sampled.profiled_rows, sampled.sampled) == (200_000, 50_000, True)
    assert all(n == 50_000 for n, _ in counts(sampled).values())
    full = {
        r["column"]: r for r in profile_summary(profile_frame(table, max_rows=None)).to_pylist()
    }
    part = {r["column"]: r for r in profile_summary(sampled).to_pylist()}
    for name in full:
        assert part[name]["rows"] == full[name]["rows"] == 200_000
        assert part[name]["nulls"] == full[name]["nulls"]
        assert part[name]["mean"] == full[name]["mean"]
    # The sample's median of the probability sits within a few rank points of the full one.
    p = np.sort(table.column("probability").to_numpy())
    rank = np.searchsorted(p, part["probability"]["q50"]) / len(p)
    assert abs(rank - 0.5) < 0.03
    # Same seed, same sample: the same extremes (KLL keeps them exactly; its quantiles come from
    # randomised compaction, so they may differ within the sketch's error from run to run).
    again = profile_summary(profile_frame(table, max_rows=50_000, seed=7))
    for column in ("rows", "nulls", "min", "max", "profiled_rows"):
        assert again.column(column).equals(profile_summary(sampled).column(column))


def test_write_read_roundtrip(tmp_path: Path) -> None:
    handle = profile_frame(frame(), max_rows=10_000)
    path = write_profile(handle, tmp_path / "profiles" / "2026-07-01" / "inputs.bin")
    assert sorted(p.name for p in path.parent.iterdir()) == ["inputs.bin"]  # no temp file left
    back = read_profile(path)
    assert (back.rows, back.profiled_rows, back.columns) == (N, 10_000, handle.columns)
    assert profile_summary(back).equals(profile_summary(handle))
    with pytest.raises(FileNotFoundError, match="no profile"):
        read_profile(tmp_path / "absent.bin")


def test_empty_frame_and_bad_columns() -> None:
    table = frame(0)
    summary = profile_summary(profile_frame(table))
    assert summary.column("rows").to_pylist() == [0] * 5
    with pytest.raises(ProfileError, match="tenure_days: not in the frame|tenure_days"):
        profile_frame(frame(10), ["tenure_days"])
    with pytest.raises(ProfileError, match="cannot profile column blob"):
        profile_frame(pa.table({"blob": pa.array([b"x"], pa.binary())}))


def test_whylogs_stays_behind_one_module() -> None:
    # Profiles for monitoring, and the data contracts built on whylogs' constraints.
    allowed = {
        PROJECT_ROOT / "tasks" / "monitoring" / "profiles.py",
        PROJECT_ROOT / "tasks" / "data" / "contracts.py",
        PROJECT_ROOT / "tasks" / "data" / "contract_values.py",
    }
    for path in [*(PROJECT_ROOT / "tasks").rglob("*.py"), *(PROJECT_ROOT / "flows").rglob("*.py")]:
        if path not in allowed:
            text = path.read_text()
            assert "import whylogs" not in text and "from whylogs" not in text, path


def test_whylogs_analytics_are_off(tmp_path: Path) -> None:
    """In a fresh interpreter without the opt-out variable, profiling reports nothing anywhere."""
    script = """
import socket, sys
def refuse(*args, **kwargs):
    raise AssertionError(f"network use: {args}")
socket.socket.connect = refuse
socket.create_connection = refuse
import numpy as np, pyarrow as pa
import tasks.monitoring.profiles as profiles
assert "whylogs" not in sys.modules, "whylogs imported at module import"
handle = profiles.profile_frame(pa.table({"x": np.arange(100.0)}))
import whylogs.api.usage_stats as usage
assert usage._TELEMETRY_DISABLED, "whylogs telemetry is on"
assert not usage._TRACKED_EVENTS, usage._TRACKED_EVENTS
print("ok", handle.rows)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("WHYLOGS_NO_ANALYTICS",)}
    env["HOME"] = str(tmp_path)  # no ~/.whylogs/disable_telemetry file to lean on
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok 100"
