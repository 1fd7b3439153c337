"""Lineage tags: a deterministic data fingerprint, git info that never crashes, all strings."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from tasks.training.lineage import (
    MAX_TAG_VALUE_LENGTH,
    PACKAGES,
    UNKNOWN,
    code_version,
    data_fingerprint,
    lineage_tags,
    lock_file_hash,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    """Three subscriber snapshots with a nullable int, a category, a float and a date."""
    return pd.DataFrame(
        {
            "subscriber_id": [1, 2, 3],
            "plan": pd.Categorical(["basic", "premium", "basic"]),
            "data_gb_30d": [1.5, None, 7.25],
            "support_calls_30d": pd.array([0, None, 4], dtype="Int64"),
            "event_timestamp": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-01-08"], utc=True),
        }
    )


def test_fingerprint_is_deterministic_whatever_the_layout(frame: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    rechunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 1), table.slice(2)])
    assert rechunked.column(0).num_chunks == 3
    first = data_fingerprint(frame)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    # Same rows: again, as an Arrow table, chunked differently, with other schema metadata.
    assert data_fingerprint(frame) == first
    assert data_fingerprint(table) == first
    assert data_fingerprint(rechunked) == first
    assert data_fingerprint(table.replace_schema_metadata({"x": "y"})) == first


@pytest.mark.parametrize(
    "change",
    [
        # One float a hair different.
        lambda f: f.assign(data_gb_30d=[1.5, None, 7.250001]),
        # A null becomes a value.
        lambda f: f.assign(support_calls_30d=pd.array([0, 0, 4], dtype="Int64")),
        # A category swapped between rows.
        lambda f: f.assign(plan=pd.Categorical(["premium", "basic", "basic"])),
        # A row dropped.
        lambda f: f.iloc[:2],
        # Rows reordered: the fingerprint is of the rows in order.
        lambda f: f.iloc[::-1].reset_index(drop=True),
    ],
)
def test_fingerprint_changes_with_any_value(frame: pd.DataFrame, change) -> None:
    assert data_fingerprint(change(frame.copy())) != data_fingerprint(frame)


def test_git_info_outside_a_checkout_is_unknown(tmp_path: Path, monkeypatch) -> None:
    # Stop git from finding a repository above tmp_path, whatever the machine looks like.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert code_version(tmp_path) == (UNKNOWN, UNKNOWN)
    assert code_version(tmp_path / "does-not-exist") == (UNKNOWN, UNKNOWN)
    assert lock_file_hash(tmp_path / "uv.lock") == UNKNOWN


def test_git_missing_is_unknown(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git binary on PATH
    assert code_version(tmp_path) == (UNKNOWN, UNKNOWN)


def test_tags_are_all_strings_within_limits(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    (tmp_path / "uv.lock").write_text("version = 1\n")
    tags = lineage_tags(
        training_window=(date(2026, 1, 1), date(2026, 3, 31)),
        feature_service="churn_model_v1",
        feature_service_version="1",
        frame=frame,
        reason="x" * 20_000,
        flow_run_id=None,
        project_root=tmp_path,
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    assert all(len(k) <= 250 and len(v) <= MAX_TAG_VALUE_LENGTH for k, v in tags.items())
    assert tags["training_window_start"] == "2026-01-01"
    assert tags["training_window_end"] == "2026-03-31"
    assert tags["feature_service"] == "churn_model_v1"
    assert tags["feature_service_version"] == "1"
    assert tags["data_fingerprint"] == data_fingerprint(frame)
    assert tags["data_rows"] == "3"
    assert tags["git_commit"] == UNKNOWN and tags["git_dirty"] == UNKNOWN
    assert tags["uv_lock_sha256"].startswith("sha256:")
    assert {f"package.{name}" for name in PACKAGES} <= tags.keys()
    assert tags["package.pandas"] == pd.__version__
    assert tags["reason"].endswith("[truncated]")
    assert tags["flow_run_id"] == "none"


def test_tags_in_this_checkout_name_a_commit(frame: pd.DataFrame) -> None:
    tags = lineage_tags(
        training_window=(date(2026, 1, 1), date(2026, 3, 31)),
        feature_service="churn_model_v1",
        feature_service_version="1",
        frame=frame,
        reason="scheduled",
        flow_run_id="0b3c-flow-run",
    )
    # Inside a git checkout a 40-hex commit and a dirty flag; in an exported tree "unknown".
    commit = tags["git_commit"]
    assert commit == UNKNOWN or (len(commit) == 40 and tags["git_dirty"] in ("true", "false"))
    assert tags["flow_run_id"] == "0b3c-flow-run"
