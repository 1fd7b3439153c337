"""The Dockerfile, checked without Docker (no daemon here): hadolint, and its install steps run
from the same lock file in a scratch environment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration

DOCKERFILE = PROJECT_ROOT / "Dockerfile"


def _uv() -> list[str]:
    """uv as the Makefile finds it: on PATH, else the one pip installed for python3."""
    if found := shutil.which("uv"):
        return [found]
    python3 = shutil.which("python3")
    if (
        python3
        and subprocess.run(
            [python3, "-m", "uv", "--version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return [python3, "-m", "uv"]
    pytest.fail("uv is not installed: `make setup` installs it")


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_the_image_is_built_from_the_lock_file_runs_as_non_root_and_starts_a_worker() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY pyproject.toml uv.lock" in text
    assert (
        text.count("uv sync --frozen") == 2
    )  # dependencies first (cached layer), then the project
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK ", text, re.MULTILINE)
    assert 'ENTRYPOINT ["churn"]' in text and 'CMD ["worker"]' in text
    assert "FROM python:3.11-slim AS build" in text and "FROM python:3.11-slim AS runtime" in text
    dockerignore = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".churn"} <= {line.strip("/") for line in dockerignore}


def test_the_dependency_step_installs_from_the_lock_file(tmp_path: Path) -> None:
    """The build stage's `uv sync --frozen --no-dev --no-install-project`, in a scratch folder."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_LINK_MODE": "copy",
    }
    env.pop("VIRTUAL_ENV", None)
    uv = _uv()
    check = subprocess.run(
        [*uv, "lock", "--check"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr  # the lock file matches pyproject.toml
    sync = subprocess.run(
        [*uv, "sync", "--frozen", "--no-dev", "--no-install-project", "--python", sys.executable],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert sync.returncode == 0, sync.stderr[-3000:]
    python = tmp_path / "venv" / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import lightgbm, prefect, mlflow, feast, polars; import pytest"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Runtime dependencies are there; dev tools (pytest) are not.
    assert "No module named 'pytest'" in probe.stderr, probe.stderr[-2000:]
