"""Online scoring without Feast or MLflow: one-row scoring, freshness, validation, auth, the log.

The model and feature views are the generated ones of the nightly scoring tests
(``tests/unit/scoring/test_shards.py``); the online store is a small in-memory reader with the same
interface as ``tasks.serving.reader.OnlineFeatureReader``.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from flows.serve import create_app
from tasks.audit.ledger import read_ledger, verify_log
from tasks.audit.log_schema import (
    ONLINE,
    ONLINE_BATCH_COLUMNS,
    PREDICTION_LOG_BASE_SCHEMA,
    PredictionBatchError,
    PredictionLogError,
    prediction_log_schema,
)
from tasks.audit.online_log import (
    new_flush_id,
    online_log_path,
    online_prediction_id,
    publish_online_batch,
)
from tasks.audit.views import audit_connection, run_readonly
from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.features.frames import features_from
from tasks.features.tables import as_of_timestamp
from tasks.scoring.reasons import top_reasons
from tasks.scoring.shards import encode_features, risk_tiers
from tasks.serving import log_buffer, online
from tasks.serving.model import ChampionModel, risk_tier
from tasks.serving.online import OnlineService
from tasks.serving.reader import OnlineFeatures, UnknownSubscriber, freshness
from tasks.training.model_spec import model_inputs
from tasks.training.train import predict_proba
from tests.unit.scoring.test_shards import (
    FEATURES,
    PLANS,
    SCORE_DAY,
    SPEC,
    generated_features,
    make_reads,
    train_booster,
    write_partition,
)

with warnings.catch_warnings():
    # Starlette 1.x would rather drive its TestClient with httpx2; httpx (declared) still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

MODEL = "telecom_churn_model"
DAY = date(2026, 3, 10)
# as_of_timestamp(DAY): the event time of DAY's features, when the day's data is complete.
STAMP = datetime(2026, 3, 11, tzinfo=UTC)
NOW = STAMP + timedelta(hours=3)
KEY = "s3cret-key"
FEATURES_TYPE = pa.struct(
    [
        ("tenure_days", pa.int32()),
        ("plan", pa.string()),
        ("monthly_charge", pa.float32()),
        ("support_calls_30d", pa.int32()),
        ("data_gb_30d", pa.float32()),
    ]
)
"""The log's ``features`` for the views of ``make_reads``: the model inputs, typed, in order."""


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_booster(seed=1, rounds=25)


def champion(booster: lgb.Booster, version: int = 1, threshold: float = 0.2) -> ChampionModel:
    return ChampionModel.build(
        MODEL, version, f"run-{version}", booster, SPEC, threshold, "test", NOW
    )


def values_of(frame_row: dict[str, Any]) -> dict[str, Any]:
    """A pandas record as the online store hands it over (NaN as None)."""
    return {
        k: (None if isinstance(v, float) and np.isnan(v) else v)
        for k, v in frame_row.items()
        if k in FEATURES
    }


class MemoryReader:
    """The online store of a few subscribers: values and an event time per view."""

    def __init__(self, rows: dict[int, dict[str, Any]], stamps: dict[str, datetime | None]):
        self.rows = rows
        self.stamps = stamps
        self.on_read = None  # called inside read(): lets a test act while a request is in flight
        self.description = "memory"

    def read(self, subscriber_id: int) -> OnlineFeatures:
        if self.on_read is not None:
            self.on_read(subscriber_id)
        if subscriber_id not in self.rows:
            raise UnknownSubscriber(f"subscriber {subscriber_id} is not in the online store")
        return OnlineFeatures(subscriber_id, self.rows[subscriber_id], dict(self.stamps))

    def materialized_through(self, store: object) -> dict[str, datetime | None]:
        return dict(self.stamps)

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        pass


@pytest.fixture
def frame():
    return generated_features(40, seed=7)


def make_service(
    settings: Settings,
    booster: lgb.Booster,
    frame,
    *,
    tmp_path: Path,
    stamp: datetime | None = STAMP,
    now: datetime = NOW,
) -> OnlineService:
    reads = make_reads(tmp_path / "features")
    rows = {int(r["subscriber_id"]): values_of(r) for r in frame.to_dict("records")}
    reader = MemoryReader(rows, {r.name: stamp for r in reads})
    return OnlineService(settings, None, reads, reader, champion(booster), now=lambda: now)  # type: ignore[arg-type]


@pytest.fixture
def service(churn_home: Settings, booster, frame, tmp_path) -> OnlineService:
    return make_service(churn_home, booster, frame, tmp_path=tmp_path)


@pytest.fixture
def client(service: OnlineService) -> Iterator[TestClient]:
    with TestClient(create_app(service)) as http:
        yield http


# ----------------------------------------------------------------------------- one-row scoring


def test_one_row_scoring_is_the_batch_path_bit_for_bit(booster) -> None:
    frame = generated_features(300, seed=5)
    # An unseen plan and a missing one: both are "missing" to the model, in both paths.
    frame.loc[3, "plan"] = "platinum"
    frame.loc[4, "plan"] = None
    model = champion(booster)
    expected = predict_proba((booster, SPEC), frame)
    reasons = top_reasons(booster, model_inputs(frame, SPEC), 3)

    for i, record in enumerate(frame.to_dict("records")):
        row, shown = model.inputs(values_of(record))
        assert model.probability(row) == expected[i]  # exactly, not approximately
        assert model.reasons(row, shown, 3) == reasons[i]


def test_categories_map_to_the_codes_the_booster_was_trained_with(booster) -> None:
    # The booster keeps its training categories (pandas_categorical); a spec listing them in
    # another order must not change which code a value gets.
    shuffled = replace(SPEC, categories={"plan": sorted(PLANS, reverse=True)})
    frame = generated_features(50, seed=9)
    model = ChampionModel.build(MODEL, 1, None, booster, shuffled, 0.2, "test", NOW)
    expected = predict_proba((booster, SPEC), frame)
    got = [model.probability(model.inputs(values_of(r))[0]) for r in frame.to_dict("records")]
    np.testing.assert_array_equal(got, expected)


def test_risk_tier_is_the_nightly_tiering() -> None:
    p = [0.0, 0.0399999, 0.04, 0.0999999, 0.1, 0.5, 1.0]
    assert [risk_tier(x, 0.04, 0.10) for x in p] == risk_tiers(np.array(p), 0.04, 0.10).to_pylist()


@pytest.mark.parametrize(
    ("age", "stale"),
    [
        (timedelta(hours=3), False),  # served the day after the snapshot: fresh
        (timedelta(days=1), False),  # exactly the TTL: still inside it, as in Feast
        (timedelta(days=1, microseconds=1), True),  # past the TTL
    ],
)
def test_features_older_than_the_ttl_are_stale(tmp_path, age, stale) -> None:
    reads = make_reads(tmp_path)
    stamps = {reads[0].name: STAMP, reads[1].name: STAMP - timedelta(days=2)}

    fresh = freshness(reads, {reads[0].name: STAMP, reads[1].name: STAMP}, STAMP + age)
    mixed = freshness(reads, stamps, STAMP + timedelta(hours=1))

    assert fresh.stale is stale
    assert fresh.age_seconds == age.total_seconds()
    assert mixed.stale_views == (reads[1].name,)  # only the old view is named
    assert mixed.as_of == STAMP - timedelta(days=2)  # the oldest view dates the features


# ----------------------------------------------------------------------------- HTTP


def test_predict_answers_with_probability_flag_tier_reasons_version_and_freshness(
    client, booster, frame
) -> None:
    response = client.post("/predict", json={"subscriber_id": 5})

    assert response.status_code == 200, response.text
    body = response.json()
    inputs = model_inputs(frame.iloc[[4]], SPEC)
    p = float(booster.predict(inputs)[0])
    assert body["probability"] == p
    assert body["will_churn"] is (p >= 0.2) and body["operating_threshold"] == 0.2
    assert body["risk_tier"] == risk_tier(p, 0.04, 0.10)
    assert body["reasons"] == top_reasons(booster, inputs, 3)[0]
    assert (body["model_name"], body["model_version"]) == (MODEL, 1)
    assert body["prediction_id"].startswith(f"{NOW.date()}/{MODEL}/v1/online/")
    freshness_ = body["feature_freshness"]
    assert freshness_["stale"] is False and freshness_["age_seconds"] == 3 * 3600
    assert freshness_["as_of"] == STAMP.isoformat()


def test_predict_features_scores_the_values_given(client, booster, frame) -> None:
    record = values_of(frame.to_dict("records")[11])
    response = client.post("/predict/features", json={"subscriber_id": 12, "features": record})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["probability"] == predict_proba((booster, SPEC), frame.iloc[[11]])[0]
    assert body["feature_freshness"]["source"] == "request"
    assert body["feature_freshness"]["stale"] is False


def test_unknown_subscriber_is_a_404_that_says_so(client) -> None:
    response = client.post("/predict", json={"subscriber_id": 999})

    assert response.status_code == 404
    assert "subscriber 999 is not in the online store" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        # Not an id.
        ("/predict", {"subscriber_id": "abc"}, ["subscriber_id"]),
        ("/predict", {"subscriber_id": 0}, ["subscriber_id"]),
        ("/predict", {}, ["subscriber_id"]),
        ("/predict", {"subscriber_id": 1, "extra": 1}, ["extra"]),
        ("/predict", {"subscriber_id": 1, "customer_key": "7590-VHVEG"}, ["subscriber_id"]),
        # Outside the contract of the feature views: an unknown plan, a charge above 500,
        # negative counts, an unknown feature, a missing one, null where nulls are not allowed.
        ("/predict/features", {"plan": "platinum"}, ["features.plan"]),
        ("/predict/features", {"monthly_charge": 501.0}, ["features.monthly_charge"]),
        ("/predict/features", {"support_calls_30d": -1}, ["features.support_calls_30d"]),
        ("/predict/features", {"tenure_days": 1.5}, ["features.tenure_days"]),
        ("/predict/features", {"colour": "red"}, ["features.colour"]),
        ("/predict/features", {"tenure_days": None}, ["features.tenure_days"]),
        ("/predict/features", {"plan": None}, ["features.plan"]),
    ],
)
def test_invalid_requests_are_422_naming_each_field(client, frame, path, body, fields) -> None:
    if path == "/predict/features":
        body = {"subscriber_id": 1, "features": values_of(frame.to_dict("records")[0]) | body}
    response = client.post(path, json=body)

    assert response.status_code == 422, response.text
    named = [e["field"] for e in response.json()["errors"]]
    assert named == fields
    assert all(f"{f}:" in response.json()["detail"] for f in fields)


def test_a_missing_feature_is_named(client, frame) -> None:
    features = values_of(frame.to_dict("records")[0])
    del features["monthly_charge"]
    response = client.post("/predict/features", json={"subscriber_id": 1, "features": features})

    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "features.monthly_charge", "message": "Field required", "type": "missing"}
    ]


def test_nullable_features_accept_null(client, frame) -> None:
    features = values_of(frame.to_dict("records")[0]) | {"data_gb_30d": None}
    response = client.post("/predict/features", json={"subscriber_id": 1, "features": features})
    assert response.status_code == 200, response.text


def test_stale_features_are_scored_and_flagged(churn_home, booster, frame, tmp_path) -> None:
    service = make_service(
        churn_home, booster, frame, tmp_path=tmp_path, now=STAMP + timedelta(days=3)
    )
    with TestClient(create_app(service)) as http:
        body = http.post("/predict", json={"subscriber_id": 5}).json()
        metrics = http.get("/metrics").text

    assert body["feature_freshness"]["stale"] is True
    assert body["feature_freshness"]["stale_views"] == [r.name for r in service.reads]
    assert body["probability"] == predict_proba((booster, SPEC), frame.iloc[[4]])[0]
    assert "churn_online_stale_predictions_total 1.0" in metrics


@pytest.fixture
def keyed(monkeypatch, churn_home, booster, frame, tmp_path) -> Iterator[TestClient]:
    monkeypatch.setenv("CHURN_API_KEY", KEY)
    reset_settings()
    service = make_service(get_settings(), booster, frame, tmp_path=tmp_path)
    with TestClient(create_app(service)) as http:
        yield http
    reset_settings()


@pytest.mark.parametrize("path", ["/predict", "/predict/features"])
@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
def test_with_an_api_key_set_requests_without_it_get_401(keyed, frame, path, headers) -> None:
    body: dict[str, Any] = {"subscriber_id": 5}
    if path == "/predict/features":
        body["features"] = values_of(frame.to_dict("records")[4])
    response = keyed.post(path, json=body, headers=headers)

    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]
    assert KEY not in response.text


def test_with_the_api_key_requests_are_served_and_probes_stay_open(keyed) -> None:
    assert keyed.post("/predict", json={"subscriber_id": 5}, headers={"X-API-Key": KEY}).is_success
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_without_an_api_key_set_no_header_is_needed(client) -> None:
    assert client.post("/predict", json={"subscriber_id": 5}).status_code == 200


def test_health_reports_model_alias_and_freshness(client) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready" and body["problems"] == []
    assert body["model"]["version"] == 1 and body["model"]["alias"] == "champion"
    assert body["features"]["materialized_through"] == STAMP.isoformat()
    assert body["features"]["age_seconds"] == 3 * 3600 and body["features"]["stale"] is False


def test_health_is_503_before_the_store_is_materialized(churn_home, booster, frame, tmp_path):
    service = make_service(churn_home, booster, frame, tmp_path=tmp_path, stamp=None)
    with TestClient(create_app(service)) as http:
        response = http.get("/health")

    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert "churn features materialize" in response.json()["problems"][0]


def test_metrics_are_prometheus_text(client) -> None:
    client.post("/predict", json={"subscriber_id": 5})
    client.post("/predict", json={"subscriber_id": 999})
    text = client.get("/metrics").text

    assert 'churn_online_requests_total{endpoint="/predict",status="200"} 1.0' in text
    assert 'churn_online_errors_total{endpoint="/predict",status="404"} 1.0' in text
    assert 'churn_online_request_duration_seconds_count{endpoint="/predict"} 2.0' in text
    assert "churn_online_model_version 1.0" in text
    assert "churn_online_log_buffered_predictions 1.0" in text


def test_two_services_in_one_process_count_apart(churn_home, booster, frame, tmp_path) -> None:
    # Importing Feast moves prometheus_client's own metrics to a process-wide file store.
    import feast.metrics  # noqa: F401

    first = make_service(churn_home, booster, frame, tmp_path=tmp_path)
    second = make_service(churn_home, booster, frame, tmp_path=tmp_path)
    first.predict_subscriber(5)

    served = ("churn_online_predictions_total", {"source": "online_store"})
    assert first.metrics.registry.get_sample_value(*served) == 1
    assert second.metrics.registry.get_sample_value(*served) is None


def test_a_request_in_flight_finishes_with_its_model_while_the_next_gets_the_new_one(
    service, client, booster, frame, monkeypatch
) -> None:
    other = train_booster(seed=2, rounds=10)
    monkeypatch.setattr(
        online, "current_alias", lambda settings, alias: type("Info", (), {"version": 2})()
    )
    monkeypatch.setattr(
        online, "load_champion", lambda settings, features, info: champion(other, version=2)
    )

    def alias_moves_now(subscriber_id: int) -> None:
        service.reader.on_read = None
        assert service.check_champion() is True

    service.reader.on_read = alias_moves_now
    during = client.post("/predict", json={"subscriber_id": 5}).json()
    after = client.post("/predict", json={"subscriber_id": 5}).json()

    x = model_inputs(frame.iloc[[4]], SPEC)
    assert (during["model_version"], during["probability"]) == (1, booster.predict(x)[0])
    assert (after["model_version"], after["probability"]) == (2, other.predict(x)[0])
    assert "churn_online_model_version 2.0" in client.get("/metrics").text
    assert service.check_champion() is False  # no move, no reload


# ----------------------------------------------------------------------------- the log


def test_every_prediction_is_logged_on_shutdown_and_verifies(churn_home, service, frame) -> None:
    with TestClient(create_app(service)) as http:
        served = [http.post("/predict", json={"subscriber_id": i}).json() for i in (5, 6, 5)]
        served.append(
            http.post(
                "/predict/features",
                json={"subscriber_id": 7, "features": values_of(frame.to_dict("records")[6])},
            ).json()
        )
        assert list(churn_home.predictions_dir.glob("**/*.parquet")) == []  # still buffered
    # Leaving the client ran the lifespan's exit: the buffer is flushed.
    (path,) = churn_home.predictions_dir.glob("**/*.parquet")
    table = pq.read_table(path)
    assert table.schema.equals(prediction_log_schema(FEATURES_TYPE))
    rows = table.to_pylist()
    assert [r["prediction_id"] for r in rows] == [s["prediction_id"] for s in served]
    assert [r["probability"] for r in rows] == [s["probability"] for s in served]
    assert [r["subscriber_id"] for r in rows] == [5, 6, 5, 7]  # the same subscriber twice: fine
    assert {(r["role"], r["model_version"], r["flow_run_id"]) for r in rows} == {(ONLINE, 1, None)}
    assert {r["score_date"] for r in rows} == {NOW.date()}
    assert rows[0]["reasons"] == served[0]["reasons"]
    logged = rows[0]["features"]
    assert list(logged) == FEATURES
    assert logged["plan"] == frame.loc[4, "plan"]
    assert logged["monthly_charge"] == pytest.approx(float(frame.loc[4, "monthly_charge"]))
    assert np.float32(logged["monthly_charge"]) == frame.loc[4, "monthly_charge"]  # as served
    assert logged["tenure_days"] == frame.loc[4, "tenure_days"]
    (entry,) = read_ledger(churn_home)
    assert (entry.role, entry.rows, entry.path) == (
        ONLINE,
        4,
        path.relative_to(churn_home.predictions_dir).as_posix(),
    )
    assert verify_log(churn_home).clean


def test_the_online_features_struct_is_the_nightly_one(
    churn_home, service, frame, tmp_path
) -> None:
    # Nightly: the point-in-time feature frame of the same views, encoded as scoring does.
    reads = make_reads(tmp_path / "nightly")
    for read in reads:
        write_partition(read, SCORE_DAY, frame)
    ids = pa.table({"subscriber_id": pa.array([5, 6], pa.int64())})
    nightly = encode_features(features_from(reads, as_of_timestamp(SCORE_DAY), ids), FEATURES)

    with TestClient(create_app(service)) as http:
        http.post("/predict", json={"subscriber_id": 5})
        http.post("/predict", json={"subscriber_id": 6})
    (path,) = churn_home.predictions_dir.glob("**/*.parquet")
    online_features = pq.read_table(path).column("features")

    assert online_features.type == prediction_log_schema(nightly.type).field("features").type
    assert online_features.type == FEATURES_TYPE
    # The same values too: the online store holds what the nightly frame read.
    assert online_features.to_pylist() == nightly.to_pylist()


def test_the_audit_views_include_the_online_partition(churn_home, service) -> None:
    with TestClient(create_app(service)) as http:
        for i in (5, 6, 5):
            http.post("/predict", json={"subscriber_id": i})
    conn = audit_connection(churn_home)
    try:
        volumes = run_readonly(
            conn, "SELECT role, sum(predictions) AS n FROM daily_volumes GROUP BY role"
        )
        history = run_readonly(
            conn, "SELECT count(*) AS n FROM subscriber_predictions WHERE subscriber_id = 5"
        )
    finally:
        conn.close()
    assert volumes.to_pylist() == [{"role": ONLINE, "n": 3}]
    assert history.to_pylist() == [{"n": 2}]


def test_a_failed_flush_keeps_its_rows_for_the_next_one(churn_home, service, monkeypatch) -> None:
    real = log_buffer.publish_online_batch
    calls = {"n": 0}

    def disk_full_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(log_buffer, "publish_online_batch", disk_full_once)
    service.predict_subscriber(5)
    service.predict_subscriber(6)

    with pytest.raises(OSError, match="disk full"):
        service.log.flush()
    assert service.log.buffered == 2  # nothing lost
    assert service.log.try_flush() is True  # the flusher's next round
    assert service.log.buffered == 0
    (entry,) = read_ledger(churn_home)
    assert entry.rows == 2


def test_a_full_buffer_is_flushed_by_the_background_thread(churn_home, service) -> None:
    service.log.flush_rows = 3
    service.log.start()
    try:
        for i in (5, 6, 7):
            service.predict_subscriber(i)
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while service.log.written < 3 and datetime.now(UTC) < deadline:
            time.sleep(0.01)
        assert service.log.written == 3  # long before flush_seconds
    finally:
        service.log.close()


def test_a_failed_flush_makes_health_not_ready_until_one_succeeds(service, monkeypatch) -> None:
    monkeypatch.setattr(
        log_buffer,
        "publish_online_batch",
        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")),
    )
    service.predict_subscriber(5)
    assert service.log.try_flush() is False

    report = service.health()
    assert report["ready"] is False
    assert "disk full" in report["problems"][0]
    assert service.log.buffered == 1
    monkeypatch.undo()
    assert service.log.try_flush() is True
    assert service.health()["ready"] is True


def test_flush_groups_by_version_and_date(churn_home, service, booster) -> None:
    service.predict_subscriber(5)
    service._model = champion(booster, version=2)
    service.predict_subscriber(5)
    service.now = lambda: NOW + timedelta(days=1)
    service.predict_subscriber(5)

    entries = service.log.flush()

    assert [(e.score_date, e.model_version, e.rows) for e in entries] == [
        (NOW.date(), 1, 1),
        (NOW.date(), 2, 1),
        (NOW.date() + timedelta(days=1), 2, 1),
    ]
    assert verify_log(churn_home).clean


# ----------------------------------------------------------------------------- publish_online_batch


def online_batch(ids: list[int], *, day: date = DAY, version: int = 3) -> pa.Table:
    return pa.table(
        {
            "prediction_id": [
                online_prediction_id(day, MODEL, version, f"r{i}") for i in range(len(ids))
            ],
            "scored_at": pa.array([NOW] * len(ids), pa.timestamp("us", tz="UTC")),
            "subscriber_id": pa.array(ids, pa.int64()),
            "probability": pa.array([0.5] * len(ids), pa.float64()),
            "risk_tier": ["high"] * len(ids),
            "reasons": pa.array([["x"]] * len(ids), pa.list_(pa.string())),
            "features": pa.array([{"a": i} for i in ids], pa.struct([("a", pa.int64())])),
        }
    )


def publish(settings: Settings, batch: pa.Table, **kwargs: Any):
    args = {"score_date": DAY, "model_name": MODEL, "model_version": 3, "feature_service": "svc"}
    return publish_online_batch(settings, batch, **(args | kwargs))


def test_each_flush_is_a_new_file_with_its_own_ledger_line(churn_home) -> None:
    first = publish(churn_home, online_batch([1, 2, 1]))
    second = publish(churn_home, online_batch([1]))

    assert first.path != second.path
    assert first.path.startswith(f"score_date={DAY}/{MODEL}-v3-online-")
    assert [e.path for e in read_ledger(churn_home)] == [first.path, second.path]
    assert sorted(p.name for p in churn_home.predictions_dir.glob("*/*.parquet")) == sorted(
        Path(e.path).name for e in (first, second)
    )
    report = verify_log(churn_home)
    assert report.clean and report.ok == 2


def test_an_online_file_is_never_replaced(churn_home) -> None:
    flush_id = new_flush_id(NOW)
    publish(churn_home, online_batch([1]), flush_id=flush_id)
    before = online_log_path(churn_home, DAY, MODEL, 3, flush_id).read_bytes()

    with pytest.raises(PredictionLogError, match="never replaced"):
        publish(churn_home, online_batch([2]), flush_id=flush_id)

    assert online_log_path(churn_home, DAY, MODEL, 3, flush_id).read_bytes() == before


def test_tampering_with_an_online_file_is_detected(churn_home) -> None:
    entry = publish(churn_home, online_batch([1, 2]))
    path = churn_home.predictions_dir / entry.path
    pq.write_table(pq.read_table(path).slice(0, 1), path)

    report = verify_log(churn_home)
    assert [m.path for m in report.modified] == [entry.path]


@pytest.mark.parametrize(
    ("batch", "rule"),
    [
        (online_batch([1, 2]).set_column(0, "prediction_id", pa.array(["x", "y"])), "starts with"),
        (
            online_batch([1, 2]).set_column(
                0, "prediction_id", pa.array([online_prediction_id(DAY, MODEL, 3, "same")] * 2)
            ),
            "unique in the batch",
        ),
        (online_batch([1]).set_column(3, "probability", pa.array([1.5])), "in [0, 1]"),
        (online_batch([1]).drop_columns(["scored_at"]), "column present"),
        (
            online_batch([1]).set_column(1, "scored_at", pa.nulls(1, pa.timestamp("us", tz="UTC"))),
            "not null",
        ),
        (
            # The log's format before features became a struct.
            online_batch([1, 2]).set_column(6, "features", pa.array(['{"a":1}', '{"a":2}'])),
            "batch.features: a struct of the feature values (at least one field) failed for 2 rows",
        ),
    ],
)
def test_a_bad_online_batch_is_refused_and_nothing_is_written(churn_home, batch, rule) -> None:
    with pytest.raises(PredictionBatchError, match=re.escape(rule)):
        publish(churn_home, batch)
    assert not list(churn_home.predictions_dir.rglob("*.parquet"))
    assert not list(churn_home.predictions_dir.rglob("*.tmp"))
    assert read_ledger(churn_home) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"flush_id": "../../x"}, "flush id"),
        ({"model_name": "a/b"}, "cannot name a log file"),
        ({"model_version": 0}, "positive int"),
    ],
)
def test_bad_online_arguments_are_refused(churn_home, kwargs, message) -> None:
    with pytest.raises(PredictionLogError, match=message):
        publish(churn_home, online_batch([1]), **kwargs)


def test_an_empty_flush_publishes_nothing(churn_home) -> None:
    with pytest.raises(PredictionLogError, match="empty"):
        publish(churn_home, online_batch([]))
    assert read_ledger(churn_home) == []


def test_online_batch_columns_are_the_writers_contract() -> None:
    assert set(ONLINE_BATCH_COLUMNS) <= set(PREDICTION_LOG_BASE_SCHEMA.names)


def test_an_online_file_has_the_schema_of_its_features_struct(churn_home) -> None:
    entry = publish(churn_home, online_batch([1, 2]))
    table = pq.read_table(churn_home.predictions_dir / entry.path)
    assert table.schema.equals(prediction_log_schema(pa.struct([("a", pa.int64())])))
    assert table.column("features").to_pylist() == [{"a": 1}, {"a": 2}]
