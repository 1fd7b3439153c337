"""Feast's Redis online store against a real ``redis-server`` (issue 14).

The shared 3,000-subscriber world gets its own MLflow store (a champion trained at DAY) and DAY
materialized into both online stores: SQLite (Feast's writer) and Redis (the bulk writer). Then:
the bulk writer's hashes are Feast's own, byte for byte; Feast's ``get_online_features`` and the
endpoint's readers give the same features from either store; the endpoint answers 503 while
Redis is down and 200 again once it is back, in the same process; two ``churn serve`` processes
on the same Redis give the same answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from flows.serve import create_app
from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.data.sources import active_subscribers
from tasks.features.store import feature_service, open_store, service_columns
from tasks.features.tables import FEATURE_TABLES, as_of_timestamp, materialize_online
from tasks.serving.online import OnlineService
from tasks.serving.reader import OnlineFeatureReader, UnknownSubscriber
from tasks.serving.redis_reader import RedisFeatureReader

from .conftest import RETRAIN_WORLD_DAYS, WORLD_START, champion_environment
from .servers import RedisServer, free_port

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

DAY = WORLD_START + timedelta(days=RETRAIN_WORLD_DAYS - 1)
NOW = as_of_timestamp(DAY) + timedelta(hours=2)
UNKNOWN = 10_000_000


@pytest.fixture(scope="module")
def redis_env(
    retrain_world_home: Path, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> dict[str, str]:
    """Environment of the world with a champion, DAY in the SQLite store and in Redis (db 0)."""
    redis_server.client().flushall()

    def materialize_both(settings: Settings) -> None:
        materialize_online(settings, DAY)
        redis = Settings.model_validate(
            {**settings.model_dump(), "online_store": "redis", "redis_url": redis_server.url}
        )
        materialize_online(redis, DAY)

    env = champion_environment(
        retrain_world_home,
        tmp_path_factory.mktemp("redis_mlflow"),
        "redis_test_model",
        DAY,
        "test: a champion served from redis",
        then=materialize_both,
    )
    return {**env, "CHURN_ONLINE_STORE": "redis", "CHURN_REDIS_URL": redis_server.url}


@pytest.fixture
def settings(redis_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for name, value in redis_env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    yield get_settings()
    reset_settings()


def sqlite_settings(settings: Settings) -> Settings:
    return Settings.model_validate({**settings.model_dump(), "online_store": "sqlite"})


def in_service(settings: Settings) -> list[int]:
    return active_subscribers(settings, DAY).column("subscriber_id").to_pylist()


def test_the_bulk_writer_writes_what_feasts_writer_writes(settings, redis_server) -> None:
    """Feast's own materialization into Redis database 1, the bulk writer's in database 0."""
    feast_url = redis_server.url.removesuffix("/0") + "/1"
    feast_settings = Settings.model_validate({**settings.model_dump(), "redis_url": feast_url})
    store = open_store(feast_settings)
    store.materialize(
        start_date=as_of_timestamp(DAY) - timedelta(days=1),
        end_date=as_of_timestamp(DAY),
        feature_views=list(FEATURE_TABLES),
    )
    bulk, feast = redis_server.client(0), redis_server.client(1)
    ours = sorted(bulk.scan_iter(count=1000))
    theirs = sorted(feast.scan_iter(count=1000))
    assert len(ours) >= len(in_service(settings)) and ours == theirs
    for key in ours:
        assert bulk.hgetall(key) == feast.hgetall(key), key
    feast.flushdb()


def test_feast_and_both_readers_agree_across_the_two_stores(settings) -> None:
    ids = in_service(settings)
    redis_store = open_store(settings)
    sqlite_store = open_store(sqlite_settings(settings))
    columns = service_columns(redis_store, feature_service(redis_store, settings.feature_service))
    service = feature_service(redis_store, settings.feature_service)
    rows = [{"subscriber_id": sid} for sid in ids]
    from_redis = redis_store.get_online_features(features=service, entity_rows=rows).to_dict()
    from_sqlite = sqlite_store.get_online_features(
        features=feature_service(sqlite_store, settings.feature_service), entity_rows=rows
    ).to_dict()
    for column in columns:
        assert from_redis[column] == from_sqlite[column], column

    redis_reader = RedisFeatureReader(redis_store, settings)
    sqlite_reader = OnlineFeatureReader(sqlite_store, sqlite_settings(settings))
    for i, sid in enumerate(ids):
        read = redis_reader.read(sid)
        assert read == sqlite_reader.read(sid)
        assert read.values == {c: from_redis[c][i] for c in columns}
        assert set(read.event_timestamps.values()) == {as_of_timestamp(DAY)}
    with pytest.raises(UnknownSubscriber, match=f"subscriber {UNKNOWN} is not in the online store"):
        redis_reader.read(UNKNOWN)
    redis_reader.close()


def test_the_endpoint_answers_503_while_redis_is_down_and_recovers_by_itself(
    settings, redis_server
) -> None:
    sid = in_service(settings)[0]
    service = OnlineService.open(settings, now=lambda: NOW)
    assert isinstance(service.reader, RedisFeatureReader)
    with TestClient(create_app(service)) as http:
        before = http.post("/predict", json={"subscriber_id": sid})
        assert before.status_code == 200, before.text
        redis_server.stop()
        try:
            began = time.monotonic()
            down = http.post("/predict", json={"subscriber_id": sid})
            assert time.monotonic() - began < 5
            assert down.status_code == 503
            detail = down.json()["detail"]
            assert f"redis at 127.0.0.1:{redis_server.port}/0" in detail
            assert redis_server.password not in down.text
            health = http.get("/health")
            assert health.status_code == 503
            assert any(f"127.0.0.1:{redis_server.port}" in p for p in health.json()["problems"])
        finally:
            redis_server.start()
        after = http.post("/predict", json={"subscriber_id": sid})
        assert after.status_code == 200, after.text
        assert after.json()["probability"] == before.json()["probability"]
        assert http.get("/health").status_code == 200
        assert http.post("/predict", json={"subscriber_id": UNKNOWN}).status_code == 404


def test_two_serve_processes_on_one_redis_give_the_same_answers(settings, redis_env) -> None:
    ids = in_service(settings)[::300]
    ports = [free_port(), free_port()]
    env = {**os.environ, **redis_env, "CHURN_ONLINE_FLUSH_SECONDS": "3600", "COLUMNS": "200"}
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "flows", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for port in ports
    ]
    answers: list[list[dict]] = []
    try:
        for server, port in zip(servers, ports, strict=True):
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 240
            while True:
                try:
                    httpx.get(f"{base}/health", timeout=2)
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"churn serve did not start: {server.stdout.read()}")
                    time.sleep(0.5)
            with httpx.Client(base_url=base, timeout=10) as http:
                answers.append(
                    [http.post("/predict", json={"subscriber_id": s}).json() for s in ids]
                )
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        outputs = [server.communicate(timeout=60)[0] for server in servers]
    assert [s.returncode for s in servers] == [0, 0], outputs
    assert redis_env["CHURN_REDIS_URL"] not in "".join(outputs)
    assert all(f"redis at {redis_env['CHURN_REDIS_URL'].split('@')[1]}" in o for o in outputs)
    first, second = answers
    for a, b in zip(first, second, strict=True):
        assert "probability" in a, a
        for field in ("subscriber_id", "probability", "risk_tier", "reasons", "model_version"):
            assert a[field] == b[field]
        assert (
            a["feature_freshness"]["event_timestamps"] == b["feature_freshness"]["event_timestamps"]
        )
