"""The real-time endpoint on a real world: Feast's online store, an MLflow champion, HTTP.

The world (``retrain_world_home``) gets its own MLflow store with a champion trained at DAY and
its online store materialized for DAY; the service runs in process (FastAPI's TestClient, clock
fixed at DAY's features plus two hours) and once as ``churn serve`` in a child process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from flows.serve import create_app
from tasks.audit.ledger import read_ledger, verify_log
from tasks.audit.log_schema import ONLINE
from tasks.audit.views import audit_connection, run_readonly
from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.features.frames import build_scoring_frame
from tasks.features.store import feature_service, open_store
from tasks.features.tables import as_of_timestamp, materialize_online
from tasks.scoring.nightly import run_scoring
from tasks.serving.online import OnlineService
from tasks.training.model_spec import ModelSpec
from tasks.training.registry import load_model, promote
from tasks.training.retrain import retrain
from tasks.training.train import predict_proba

from .conftest import RETRAIN_WORLD_DAYS, WORLD_START, champion_environment

with warnings.catch_warnings():
    # Starlette 1.x would rather drive its TestClient with httpx2; httpx (declared) still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

DAY = WORLD_START + timedelta(days=RETRAIN_WORLD_DAYS - 1)
NOW = as_of_timestamp(DAY) + timedelta(hours=2)  # the morning after DAY's features are complete
TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def online_env(retrain_world_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shared world with its own MLflow store (champion = version 1) and DAY materialized."""
    return champion_environment(
        retrain_world_home,
        tmp_path_factory.mktemp("online_mlflow"),
        "online_test_model",
        DAY,
        "test: a champion to serve",
        then=lambda settings: materialize_online(settings, DAY),
    )


def _clean(settings: Settings) -> None:
    shutil.rmtree(settings.predictions_dir, ignore_errors=True)
    shutil.rmtree(settings.retention_dir, ignore_errors=True)


@pytest.fixture
def settings(online_env: dict, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The module's settings, with no prediction log (the world is shared with test_score)."""
    for name, value in online_env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    current = get_settings()
    _clean(current)
    yield current
    _clean(current)
    reset_settings()


@pytest.fixture
def service(settings: Settings) -> OnlineService:
    return OnlineService.open(settings, now=lambda: NOW)


def batch_scores(settings: Settings, version: int | str = "champion") -> dict[int, float]:
    """The batch path's probability of every subscriber in service on DAY."""
    frame = build_scoring_frame(settings, DAY)
    booster, spec, _ = load_model(settings, version)
    p = predict_proba((booster, ModelSpec.from_dict(spec)), frame)
    return dict(zip(frame.column("subscriber_id").to_pylist(), p.tolist(), strict=True))


def test_online_scores_equal_the_nightly_scores_of_the_same_day(settings, service) -> None:
    nightly = run_scoring(settings, DAY)
    log = pq.read_table(nightly.log_files[0]).to_pylist()
    by_id = {row["subscriber_id"]: row for row in log}
    frame = build_scoring_frame(settings, DAY)
    expected = batch_scores(settings)
    values = {row["subscriber_id"]: row for row in frame.to_pylist()}

    with TestClient(create_app(service)) as http:
        served = {sid: http.post("/predict", json={"subscriber_id": sid}).json() for sid in by_id}
        sample = sorted(by_id)[::50]
        direct = {
            sid: http.post(
                "/predict/features",
                json={
                    "subscriber_id": sid,
                    "features": {f: values[sid][f] for f in service.features},
                },
            ).json()
            for sid in sample
        }

    assert len(served) == nightly.scored == len(expected)
    gaps = [abs(served[sid]["probability"] - by_id[sid]["probability"]) for sid in by_id]
    assert max(gaps) <= TOLERANCE  # in fact 0: the same float32 inputs, the same booster
    assert all(served[sid]["probability"] == expected[sid] for sid in by_id)
    assert all(served[sid]["risk_tier"] == by_id[sid]["risk_tier"] for sid in by_id)
    explained = [sid for sid in by_id if by_id[sid]["reasons"] is not None]
    assert explained and all(served[sid]["reasons"] == by_id[sid]["reasons"] for sid in explained)
    assert {served[sid]["model_version"] for sid in by_id} == {1}
    assert not any(served[sid]["feature_freshness"]["stale"] for sid in by_id)
    # Feature values sent in the request score exactly as the store's.
    assert all(abs(direct[sid]["probability"] - expected[sid]) <= TOLERANCE for sid in sample)

    # The online log holds the nightly log's feature struct, field for field and type for type,
    # and the same values for a subscriber, from the store or the request; the audit view reads
    # both.
    nightly_features = pq.read_schema(nightly.log_files[0]).field("features").type
    online_files = sorted(settings.predictions_dir.glob("score_date=*/*-online-*.parquet"))
    assert online_files
    assert {pq.read_schema(f).field("features").type for f in online_files} == {nightly_features}
    conn = audit_connection(settings)
    try:
        features = run_readonly(
            conn,
            # As JSON text: a NaN feature value compares equal to itself there.
            "SELECT role, to_json(features) AS features FROM predictions "
            f"WHERE subscriber_id = {sample[0]} AND role IN ('champion', 'online')",
        ).to_pylist()
    finally:
        conn.close()
    by_role: dict[str, list[str]] = {}
    for row in features:
        by_role.setdefault(row["role"], []).append(row["features"])
    assert len(by_role["champion"]) == 1 and len(by_role[ONLINE]) == 2  # store, then request
    assert all(logged == by_role["champion"][0] for logged in by_role[ONLINE])


def test_the_reader_returns_what_feast_get_online_features_returns(settings, service) -> None:
    store = open_store(settings)
    service_ = feature_service(store, settings.feature_service)
    ids = sorted(batch_scores(settings))[::97]
    feast = store.get_online_features(
        features=service_, entity_rows=[{"subscriber_id": i} for i in ids]
    ).to_dict()
    for row, sid in enumerate(ids):
        ours = service.reader.read(sid)
        assert ours.values == {f: feast[f][row] for f in service.features}
        assert set(ours.event_timestamps.values()) == {as_of_timestamp(DAY)}


def test_unknown_subscriber_is_404_and_old_features_are_flagged(settings) -> None:
    later = OnlineService.open(settings, now=lambda: as_of_timestamp(DAY) + timedelta(days=2))
    subscriber = min(batch_scores(settings))
    with TestClient(create_app(later)) as http:
        missing = http.post("/predict", json={"subscriber_id": 10_000_000})
        stale = http.post("/predict", json={"subscriber_id": subscriber}).json()
        health = http.get("/health").json()

    assert missing.status_code == 404
    assert "subscriber 10000000 is not in the online store" in missing.json()["detail"]
    assert stale["feature_freshness"]["stale"] is True
    assert set(stale["feature_freshness"]["stale_views"]) == set(later.reader.views)
    assert stale["probability"] == batch_scores(settings)[subscriber]  # scored, and flagged
    assert health["features"]["stale"] is True and health["ready"] is True


def test_every_online_prediction_is_in_the_log_and_the_audit_views(settings, service) -> None:
    ids = sorted(batch_scores(settings))[:5]
    with TestClient(create_app(service)) as http:
        served = [http.post("/predict", json={"subscriber_id": sid}).json() for sid in ids * 2]

    entries = read_ledger(settings)
    assert [e.role for e in entries] == [ONLINE] and entries[0].rows == len(served)
    assert verify_log(settings).clean
    conn = audit_connection(settings)
    try:
        rows = run_readonly(
            conn,
            "SELECT prediction_id, probability, role, model_version FROM predictions "
            "ORDER BY scored_at, prediction_id",
        ).to_pylist()
    finally:
        conn.close()
    assert sorted(r["prediction_id"] for r in rows) == sorted(s["prediction_id"] for s in served)
    assert {(r["role"], r["model_version"]) for r in rows} == {(ONLINE, 1)}
    by_id = {r["prediction_id"]: r["probability"] for r in rows}
    assert all(by_id[s["prediction_id"]] == s["probability"] for s in served)


def test_with_an_api_key_requests_need_it(settings, monkeypatch) -> None:
    monkeypatch.setenv("CHURN_API_KEY", "k-123")
    reset_settings()
    keyed = OnlineService.open(get_settings(), now=lambda: NOW)
    subscriber = min(batch_scores(settings))
    with TestClient(create_app(keyed)) as http:
        without = http.post("/predict", json={"subscriber_id": subscriber})
        wrong = http.post(
            "/predict", json={"subscriber_id": subscriber}, headers={"X-API-Key": "x"}
        )
        right = http.post(
            "/predict", json={"subscriber_id": subscriber}, headers={"X-API-Key": "k-123"}
        )
    assert (without.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    # Refused requests are not predictions: only the served one is logged.
    assert [e.rows for e in read_ledger(settings)] == [1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_churn_serve_answers_over_http_and_flushes_the_log_on_shutdown(
    settings, online_env
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        **online_env,
        "CHURN_ONLINE_FLUSH_SECONDS": "3600",  # only the shutdown flush writes
        "COLUMNS": "200",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "flows", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    expected = batch_scores(settings)
    ids = sorted(expected)[:3]
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"churn serve did not start: {server.stdout.read()}")
                time.sleep(0.5)
        assert health.status_code == 200 and health.json()["model"]["version"] == 1
        with httpx.Client(base_url=base, timeout=10) as http:
            answers = [http.post("/predict", json={"subscriber_id": sid}).json() for sid in ids]
            metrics = http.get("/metrics").text
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)

    assert server.returncode == 0, output  # a clean stop, not death by SIGTERM
    assert "Serving churn scores" in output and f"http://127.0.0.1:{port}" in output
    assert "online predictions logged" in output
    age = datetime.now(UTC) - as_of_timestamp(DAY)
    for sid, answer in zip(ids, answers, strict=True):
        assert abs(answer["probability"] - expected[sid]) <= TOLERANCE
        # Wall-clock time: DAY's features are stale once a day older than their TTL of one day.
        assert answer["feature_freshness"]["stale"] is (age > timedelta(days=1))
    assert 'churn_online_requests_total{endpoint="/predict",status="200"} 3.0' in metrics
    # A clean shutdown loses nothing: the buffered predictions were published on the way out.
    assert [e.rows for e in read_ledger(settings)] == [3]
    assert verify_log(settings).clean


def test_an_alias_move_is_served_without_failing_requests_in_flight(settings, monkeypatch) -> None:
    """Last in this module: it registers version 2 (the champion is version 1 again at the end)."""
    monkeypatch.setenv("CHURN_MODEL_RELOAD_SECONDS", "0.2")
    monkeypatch.setenv("CHURN_GATE_AUC_MARGIN", "-1")  # let an equal model through
    reset_settings()
    current = get_settings()
    service = OnlineService.open(current, now=lambda: NOW)
    ids = sorted(batch_scores(current))[:200]
    statuses: list[int] = []
    versions: list[int] = []
    stop = threading.Event()

    with TestClient(create_app(service)) as http:

        def hammer() -> None:
            i = 0
            while not stop.is_set():
                response = http.post("/predict", json={"subscriber_id": ids[i % len(ids)]})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.append(response.json()["model_version"])
                i += 1

        load = threading.Thread(target=hammer)
        load.start()
        try:
            second = retrain(current, DAY - timedelta(days=7), "test: a new champion online")
            assert second.version == 2 and second.promoted
            _wait_for(lambda: service.model.version == 2)
            time.sleep(0.5)  # requests keep coming on the new model
            served_two = http.post("/predict", json={"subscriber_id": ids[0]}).json()
            # And back: the background check follows every move of the alias.
            promote(current, 1, by="test", reason="test: back to version 1")
            _wait_for(lambda: service.model.version == 1)
            health = http.get("/health").json()
        finally:
            stop.set()
            load.join()

    assert statuses and set(statuses) == {200}  # nothing failed or was dropped during the swaps
    assert versions[0] == 1 and 2 in versions and versions[-1] == 1
    assert served_two["model_version"] == 2
    assert abs(served_two["probability"] - batch_scores(current, 2)[ids[0]]) <= TOLERANCE
    assert health["model"]["version"] == health["model"]["alias_version"] == 1
    assert service.metrics.registry.get_sample_value("churn_online_model_reloads_total") == 2
    # Every request was logged, under the version that served it.
    rows = sum(e.rows for e in read_ledger(current))
    assert rows == len(statuses) + 1
    assert {e.model_version for e in read_ledger(current)} == {1, 2}


def _wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the champion to be swapped")
        time.sleep(0.05)
