"""Project-level promises: telemetry is off everywhere, nothing runs at import, the CLI is wired."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from tasks.core.settings import PROJECT_ROOT
from tasks.core.telemetry import TELEMETRY_OFF


def test_every_entry_point_turns_off_the_same_telemetry() -> None:
    makefile = dict(
        re.findall(
            r"^export (\w+) := (\S+)$", (PROJECT_ROOT / "Makefile").read_text(), re.MULTILINE
        )
    )
    dockerfile = dict(
        re.findall(
            r"(\w+)=(\S+?)(?: \\)?$", (PROJECT_ROOT / "Dockerfile").read_text(), re.MULTILINE
        )
    )
    prefect = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    for name, value in TELEMETRY_OFF.items():
        assert makefile.get(name) == value, f"Makefile: {name}"
        assert dockerfile.get(name) == value, f"Dockerfile: {name}"
        for deployment in prefect["deployments"]:
            assert deployment["work_pool"]["job_variables"]["env"][name] == value, deployment[
                "name"
            ]


def test_importing_the_project_reads_no_settings_and_writes_nothing(tmp_path) -> None:
    # Import every module with CHURN_HOME pointing at a directory that must stay empty.
    code = (
        "import os, pkgutil, importlib, tasks, flows\n"
        "for pkg in (tasks, flows):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name != 'flows.__main__':\n"
        "            importlib.import_module(m.name)\n"
        "from tasks.core.settings import get_settings\n"
        "assert get_settings.cache_info().currsize == 0, 'settings read at import'\n"
    )
    home = tmp_path / "home"
    env = {"CHURN_HOME": str(home), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not home.exists()
    assert list(tmp_path.iterdir()) == [] or all(p.name.startswith(".") for p in tmp_path.iterdir())
