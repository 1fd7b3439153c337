"""A small simulated world with its feature store applied and built, shared by a test module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.feature_store import apply_feature_repo
from tasks.feature_tables import build_feature_tables
from tasks.simulate import WorldSpec, simulate_world

# A 28-day training window keeps the worlds small: 28 + 30-day horizon + 90-day feature history.
TRAINING_WINDOW_DAYS = "28"
WORLD_START = date(2026, 1, 1)
WORLD_DAYS = 150
WORLD_END = date(2026, 5, 30)  # WORLD_START + WORLD_DAYS - 1


@dataclass(frozen=True)
class World:
    settings: Settings
    spec: WorldSpec


def make_world(home: Path, spec: WorldSpec, *, build: bool = True) -> World:
    """Simulate ``spec`` under ``home``, apply the Feast repo and build every feature day.

    The environment is changed only while building; the returned settings keep the values.
    """
    saved = {name: os.environ.get(name) for name in ("CHURN_HOME", "CHURN_TRAINING_WINDOW_DAYS")}
    os.environ["CHURN_HOME"] = str(home)
    os.environ["CHURN_TRAINING_WINDOW_DAYS"] = TRAINING_WINDOW_DAYS
    reset_settings()
    try:
        settings = get_settings()
        simulate_world(spec, settings.source_dir, settings.truth_dir, chunk_days=31)
        if build:
            apply_feature_repo(settings)
            build_feature_tables(settings)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_settings()
    return World(settings, spec)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """800 subscribers × 150 days, features built; read-only for the tests that share it."""
    return make_world(
        tmp_path_factory.mktemp("world"),
        WorldSpec(subscribers=800, days=WORLD_DAYS, start=WORLD_START, seed=11),
    )


RETRAIN_WORLD_DAYS = 240


@pytest.fixture(scope="session")
def retrain_world_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 subscribers × 240 days, features built: big enough to train and score a model on.

    Shared by the retraining and scoring tests; each test brings its own MLflow store, and the
    scoring tests clean the prediction log and the retention folder they write.
    """
    home = tmp_path_factory.mktemp("retrain_world")
    make_world(
        home, WorldSpec(subscribers=3000, days=RETRAIN_WORLD_DAYS, start=WORLD_START, seed=7)
    )
    return home


@pytest.fixture
def world_settings(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The shared world's settings, with CHURN_HOME pointing at it for the test."""
    monkeypatch.setenv("CHURN_HOME", str(world.settings.home))
    monkeypatch.setenv("CHURN_TRAINING_WINDOW_DAYS", TRAINING_WINDOW_DAYS)
    reset_settings()
    yield get_settings()
    reset_settings()


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path

    def env(self) -> dict[str, str]:
        """Environment for a process that talks to this server."""
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real Prefect API server on 127.0.0.1 (its own SQLite database), for the session."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tasks.core.telemetry import TELEMETRY_OFF

    home = tmp_path_factory.mktemp("prefect_server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **TELEMETRY_OFF, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "prefect", "server", "start",
            "--host", "127.0.0.1", "--port", str(port), "--no-ui",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield PrefectServer(api_url, home)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
