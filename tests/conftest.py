"""Shared fixtures: every test gets its own data root, and nothing phones home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.core.telemetry import disable_telemetry

disable_telemetry()


@pytest.fixture
def churn_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose ``CHURN_HOME`` is a fresh temporary directory."""
    monkeypatch.setenv("CHURN_HOME", str(tmp_path / "churn_home"))
    reset_settings()
    yield get_settings()
    reset_settings()
