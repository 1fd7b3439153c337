"""Feast's online store by setting (issue 14): the YAML's SQLite file by default, Feast's Redis
store with CHURN_ONLINE_STORE=redis, its connection string built from CHURN_REDIS_URL."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tasks.core.errors import FeatureStoreError
from tasks.core.settings import Settings
from tasks.features.store import (
    REDIS_TIMEOUT_S,
    check_online_store,
    redis_connection_string,
    repo_config,
)

TIMEOUTS = f"socket_connect_timeout={REDIS_TIMEOUT_S},socket_timeout={REDIS_TIMEOUT_S}"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("CHURN_ONLINE_STORE", "CHURN_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    return Settings(home=tmp_path / "home")


def with_redis(settings: Settings, url: str | None) -> Settings:
    return Settings.model_validate(
        {**settings.model_dump(), "online_store": "redis", "redis_url": url}
    )


def test_the_default_online_store_is_the_sqlite_file_under_the_data_root(settings) -> None:
    config = repo_config(settings)
    assert config.online_store.type == "sqlite"
    assert Path(config.online_store.path) == settings.home / "feast" / "online_store.db"


def test_redis_becomes_feasts_redis_online_store(settings) -> None:
    config = repo_config(with_redis(settings, "redis://:pw-1@cache.internal:6380/2"))
    store = config.online_store
    assert store.type == "redis" and store.redis_type.value == "redis"
    assert store.connection_string == f'cache.internal:6380,{TIMEOUTS},db=2,password="pw-1"'
    # Last write wins, as in the SQLite store and the bulk writer (tasks/features/redis_online.py).
    assert store.skip_dedup is True
    # Everything else (offline store, registry) stays as feature_store.yaml says.
    assert config.offline_store.type.endswith("PartitionedDuckDBOfflineStore")
    assert Path(config.registry.path) == settings.home / "feast" / "registry.db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # No password, no database: host and port only (6379 when the URL has none).
        ("redis://cache", f"cache:6379,{TIMEOUTS}"),
        # A password of digits stays a string after Feast's JSON decoding of each value.
        ("redis://:123456@cache:6379/0", f'cache:6379,{TIMEOUTS},db=0,password="123456"'),
        # ACL user, TLS, URL-encoded password, and a redis-py option of the user's.
        (
            "rediss://app:p%40ss@cache:6390/1?ssl_cert_reqs=none",
            f'cache:6390,{TIMEOUTS},db=1,username="app",password="p@ss",ssl=true,ssl_cert_reqs=none',
        ),
    ],
)
def test_redis_urls_become_feast_connection_strings(url: str, expected: str) -> None:
    assert redis_connection_string(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:secretpw@cache:6379", "must be redis://"),
        ("redis://:secret,pw@cache:6379", "password with a comma"),
        ("redis://:secretpw@cache:6379/zero", "database is not a number"),
    ],
)
def test_unusable_redis_urls_are_named_without_their_password(url: str, message: str) -> None:
    with pytest.raises(FeatureStoreError, match=message) as caught:
        redis_connection_string(url)
    assert "secret" not in str(caught.value) and "cache:6379" in str(caught.value)


def test_redis_without_a_url_fails_loudly(settings) -> None:
    with pytest.raises(FeatureStoreError, match="CHURN_ONLINE_STORE=redis needs CHURN_REDIS_URL"):
        repo_config(with_redis(settings, None))


def test_a_dead_redis_fails_materialization_at_once_without_its_password(settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FeatureStoreError) as caught:
        check_online_store(with_redis(settings, f"redis://:hunter22@127.0.0.1:{port}/0"))
    assert str(caught.value) == (
        f"Feast online store: cannot reach redis at 127.0.0.1:{port}/0: connection refused"
    )
    check_online_store(settings)  # SQLite: nothing to reach
