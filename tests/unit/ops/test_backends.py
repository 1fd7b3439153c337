"""Production backends by settings alone (issue 14): defaults unchanged, which backend each part
uses, passwords never shown, and a dead backend failing fast in one line.

No database or Redis server runs here: an unreachable backend is a local port nobody listens on
(refused at once). Real servers are the integration tests' business.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.core.probe import BackendUnreachable, describe, probe
from tasks.core.settings import PROJECT_ROOT, Settings
from tasks.core.urls import location, redact_url, scrub
from tasks.ops.backends import backends, check_backends, prefect_database_url, probe_backends
from tasks.ops.stack import _commands
from tasks.training.mlflow_store import (
    RegistryError,
    artifact_root,
    backend_store_uri,
    check_store,
    tracking_uri,
)
from tasks.training.promotions import history_path

PASSWORD = "s3cretPw_42"
BACKEND_ENV = (
    "CHURN_PREFECT_DATABASE_URL",
    "CHURN_MLFLOW_BACKEND_URI",
    "CHURN_MLFLOW_TRACKING_URI",
    "CHURN_MLFLOW_ARTIFACTS",
    "CHURN_ONLINE_STORE",
    "CHURN_REDIS_URL",
)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Embedded defaults under a temporary data root, whatever the calling shell exports."""
    for name in BACKEND_ENV:
        monkeypatch.delenv(name, raising=False)
    return Settings(home=tmp_path / "home")


def closed_port() -> int:
    """A local port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configured(settings: Settings, **update: object) -> Settings:
    """``settings`` with ``update`` applied and validated (secrets become SecretStr)."""
    return Settings.model_validate({**settings.model_dump(), **update})


def remote(settings: Settings, port: int, **extra: object) -> Settings:
    """Every backend a server on 127.0.0.1:``port`` (nobody listens there), with a password."""
    return configured(
        settings,
        **{
            "prefect_database_url": f"postgresql://churn:{PASSWORD}@127.0.0.1:{port}/prefect",
            "mlflow_backend_uri": f"postgresql://churn:{PASSWORD}@127.0.0.1:{port}/mlflow",
            "online_store": "redis",
            "redis_url": f"redis://:{PASSWORD}@127.0.0.1:{port}/0",
            **extra,
        },
    )


# --------------------------------------------------------------------------- settings


def test_unset_backends_keep_the_embedded_defaults(settings: Settings) -> None:
    home = settings.home
    assert settings.prefect_database_url is None and settings.mlflow_backend_uri is None
    assert settings.online_store == "sqlite" and settings.redis_url is None
    assert (
        tracking_uri(settings)
        == backend_store_uri(settings)
        == f"sqlite:///{home}/mlflow/mlflow.db"
    )
    assert artifact_root(settings) == str(home / "mlflow" / "artifacts")
    assert history_path(settings) == home / "mlflow" / "promotions.jsonl"
    assert [b.line() for b in backends(settings)] == [
        f"Prefect database: sqlite (embedded) at {home}/prefect/prefect.db",
        f"MLflow store: sqlite (embedded) at {home}/mlflow/mlflow.db",
        f"MLflow artifacts: folder (embedded) at {home}/mlflow/artifacts",
        f"Feast online store: sqlite (embedded) at {home}/feast/online_store.db",
    ]
    assert check_backends(settings) and not home.exists(), "checking wrote something"


def test_backend_settings_are_read_from_the_environment_and_secret(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql://churn:{PASSWORD}@db.internal:5433/mlflow"
    monkeypatch.setenv("CHURN_HOME", str(settings.home))
    monkeypatch.setenv("CHURN_PREFECT_DATABASE_URL", url.replace("mlflow", "prefect"))
    monkeypatch.setenv("CHURN_MLFLOW_BACKEND_URI", url)
    monkeypatch.setenv("CHURN_MLFLOW_ARTIFACTS", "s3://models/churn")
    monkeypatch.setenv("CHURN_ONLINE_STORE", "redis")
    monkeypatch.setenv("CHURN_REDIS_URL", f"redis://:{PASSWORD}@cache:6379/2")
    read = Settings()
    assert read.mlflow_backend_uri is not None and read.mlflow_backend_uri.get_secret_value() == url
    assert PASSWORD not in repr(read) and PASSWORD not in str(read.model_dump())
    assert tracking_uri(read) == url  # clients use the backend store when no tracking URI is set
    assert artifact_root(read) == "s3://models/churn"
    assert [b.line() for b in backends(read)] == [
        "Prefect database: postgresql at db.internal:5433/prefect",
        "MLflow store: postgresql at db.internal:5433/mlflow",
        "MLflow artifacts: s3 at models/churn (not probed)",
        "Feast online store: redis at cache:6379/2",
    ]
    assert all(PASSWORD not in repr(b) for b in backends(read))


def test_an_unknown_online_store_is_refused(settings: Settings, monkeypatch) -> None:
    monkeypatch.setenv("CHURN_ONLINE_STORE", "memcached")
    with pytest.raises(ValueError, match="online_store"):
        Settings(home=settings.home)


def test_a_tracking_server_keeps_its_own_store_and_the_ui_the_database(settings: Settings) -> None:
    both = configured(
        settings,
        mlflow_tracking_uri="http://mlflow.internal:5000",
        mlflow_backend_uri=f"postgresql://churn:{PASSWORD}@db:5432/mlflow",
    )
    assert tracking_uri(both) == "http://mlflow.internal:5000"
    assert backend_store_uri(both).startswith("postgresql://")
    # The promotion history of another store is its own file, named without the password.
    assert history_path(both).name.startswith("promotions-")
    rotated = configured(both, mlflow_tracking_uri=None)
    assert history_path(rotated) == history_path(
        configured(rotated, mlflow_backend_uri="postgresql://churn:new-password@db:5432/mlflow")
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # Users write the plain scheme; Prefect's server only runs on async drivers.
        ("postgresql://u:p@db/prefect", "postgresql+asyncpg://u:p@db/prefect"),
        ("postgres://u:p@db:5433/prefect", "postgresql+asyncpg://u:p@db:5433/prefect"),
        ("postgresql+asyncpg://u:p@db/prefect", "postgresql+asyncpg://u:p@db/prefect"),
        ("sqlite:////srv/prefect.db", "sqlite+aiosqlite:////srv/prefect.db"),
    ],
)
def test_prefect_database_url_gets_prefects_async_driver(settings, given, expected) -> None:
    assert prefect_database_url(configured(settings, prefect_database_url=given)) == (expected)


def test_a_prefect_database_prefect_cannot_use_is_named_without_its_password(settings) -> None:
    wrong = configured(settings, prefect_database_url=f"mysql://churn:{PASSWORD}@db:3306/prefect")
    with pytest.raises(BackendUnreachable, match="mysql URL for db:3306/prefect") as caught:
        prefect_database_url(wrong)
    assert PASSWORD not in str(caught.value)


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("url", "shown", "where"),
    [
        (f"postgresql://churn:{PASSWORD}@db:5432/mlflow", "postgresql://churn:***@db:5432/mlflow",
         "db:5432/mlflow"),
        (f"postgresql+asyncpg://churn:{PASSWORD}@db/prefect",
         "postgresql+asyncpg://churn:***@db/prefect", "db:5432/prefect"),
        (f"redis://:{PASSWORD}@cache:6380/1", "redis://:***@cache:6380/1", "cache:6380/1"),
        ("redis://cache", "redis://cache", "cache:6379"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db", "/abs/mlflow.db"),
    ],
)  # fmt: skip
def test_urls_are_shown_without_passwords(url: str, shown: str, where: str) -> None:
    assert redact_url(url) == shown
    assert location(url, 6379 if url.startswith("redis") else 5432) == where
    assert PASSWORD not in describe(url)


def test_scrub_removes_a_password_a_driver_echoes_alone_or_in_its_dsn() -> None:
    url = f"postgresql://churn:{PASSWORD}@db:5432/mlflow"
    text = f"could not log in with {PASSWORD!r} to {url} (and postgresql://x:other@h/d)"
    cleaned = scrub(text, [url, None])
    assert PASSWORD not in cleaned and "other" not in cleaned
    assert "db:5432/mlflow" in cleaned


# --------------------------------------------------------------------------- reachability


def test_a_closed_port_fails_at_once_naming_part_and_host_not_password(settings) -> None:
    port = closed_port()
    started = time.monotonic()
    with pytest.raises(BackendUnreachable) as caught:
        check_backends(remote(settings, port))
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert message == (
        f"Prefect database: cannot reach postgresql at 127.0.0.1:{port}/prefect: connection refused"
    )
    assert "\n" not in message and PASSWORD not in message
    assert not settings.home.exists(), "a failed check wrote something"


def test_every_unreachable_backend_is_reported_with_its_reason(settings) -> None:
    port = closed_port()
    report = probe_backends(backends(remote(settings, port, mlflow_artifacts="s3://b/p")))
    reasons = {b.part: (problem.reason if problem else None) for b, problem in report}
    assert reasons == {
        "Prefect database": "connection refused",
        "MLflow store": "connection refused",
        "MLflow artifacts": None,  # s3: not probed here
        "Feast online store": "connection refused",
    }
    assert all(PASSWORD not in str(problem) for _, problem in report)


def test_a_probe_is_bounded_even_when_nothing_answers() -> None:
    # A listening socket that never accepts: the TCP handshake completes in the backlog, then
    # the HTTP request waits for an answer that never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(
            BackendUnreachable, match=f"MLflow store: cannot reach http server at 127.0.0.1:{port}"
        ):
            probe("MLflow store", f"http://127.0.0.1:{port}", timeout_s=1.0)
        assert time.monotonic() - started < 3


def test_a_malformed_url_is_one_line_without_its_password() -> None:
    with pytest.raises(BackendUnreachable) as caught:
        probe("MLflow store", f"postgresql://churn:{PASSWORD}@db:notaport/mlflow", timeout_s=1)
    assert "port is not a number" in str(caught.value) and PASSWORD not in str(caught.value)


def test_a_sqlite_folder_that_cannot_be_created_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BackendUnreachable, match="is not a folder"):
        probe("MLflow store", f"sqlite:///{blocker}/sub/mlflow.db", timeout_s=1)


def test_the_mlflow_store_fails_fast_before_mlflow_retries(settings) -> None:
    dead = remote(settings, closed_port())
    started = time.monotonic()
    with pytest.raises(RegistryError, match="MLflow store: cannot reach postgresql") as caught:
        check_store(dead)
    assert time.monotonic() - started < 5 and PASSWORD not in str(caught.value)


# --------------------------------------------------------------------------- churn up


def test_database_urls_reach_the_servers_through_their_environment_only(settings) -> None:
    parts = {
        name: (command, env)
        for name, command, _, _, env in _commands(remote(settings, 5432), 4200, 5000)
    }
    _, server_env = parts["prefect-server"]
    assert server_env == {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
            f"postgresql+asyncpg://churn:{PASSWORD}@127.0.0.1:5432/prefect"
        )
    }
    _, mlflow_env = parts["mlflow-ui"]
    assert mlflow_env == {
        "MLFLOW_BACKEND_STORE_URI": f"postgresql://churn:{PASSWORD}@127.0.0.1:5432/mlflow"
    }
    assert parts["prefect-worker"][1] == {}
    # stack.json records the command lines, and `ps` shows them.
    assert not any(PASSWORD in arg for command, _ in parts.values() for arg in command)


def test_embedded_defaults_start_the_same_servers_as_before(settings) -> None:
    parts = {name: (command, env) for name, command, _, _, env in _commands(settings, 4200, 5000)}
    assert parts["prefect-server"][1] == {}  # Prefect's own SQLite under PREFECT_HOME
    assert parts["mlflow-ui"][1] == {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{settings.home}/mlflow/mlflow.db"
    }
    command = parts["mlflow-ui"][0]
    assert command[command.index("--default-artifact-root") + 1] == str(
        settings.home / "mlflow" / "artifacts"
    )


def test_churn_up_with_a_dead_database_fails_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = closed_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in BACKEND_ENV},
        "CHURN_HOME": str(home),
        "CHURN_MLFLOW_BACKEND_URI": f"postgresql://churn:{PASSWORD}@127.0.0.1:{port}/mlflow",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flows", "up"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 15 + 10  # ≤ 15 s of checking, plus this interpreter's start
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: MLflow store: cannot reach postgresql at 127.0.0.1:{port}/mlflow: connection refused"
    ]
    assert PASSWORD not in result.stdout + result.stderr
    assert not home.exists(), "churn up wrote something before failing"


def test_the_mlflow_marker_never_holds_the_password(settings, monkeypatch) -> None:
    from tasks.training import mlflow_store

    # The store answers (probe and MLflow stubbed: no server here); only the marker is checked.
    monkeypatch.setattr(mlflow_store, "check_store", lambda settings: None)

    class Client:
        def search_experiments(self, max_results):
            return []

        def search_registered_models(self, max_results):
            return []

    monkeypatch.setattr(mlflow_store, "_client", lambda uri: Client())
    monkeypatch.setattr(mlflow_store, "_ensure_experiment", lambda client, s, uri: "1")
    configured = remote(settings, 5432)
    uri = mlflow_store.init_store(configured)
    assert PASSWORD in uri  # the clients need it ...
    marker = json.loads(mlflow_store.marker_path(configured).read_text())
    assert marker["uri"] == "postgresql://churn:***@127.0.0.1:5432/mlflow"  # ... the file does not
    assert mlflow_store.init_store(configured) == uri  # and the marker still says "done"
