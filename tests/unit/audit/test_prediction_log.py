"""The prediction log: schema, idempotent reruns, atomic publishing, refused batches, tampering."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import tasks.audit.prediction_log as plog
from tasks.audit import ledger
from tasks.audit.ledger import ledger_path, log_files, log_path, read_ledger, verify_log
from tasks.audit.log_schema import (
    EMPTY_FILE_SCHEMA,
    PredictionBatchError,
    PredictionLogError,
    prediction_log_schema,
)
from tasks.audit.prediction_log import PredictionLogWriter
from tasks.core.settings import Settings

DAY = date(2026, 5, 1)
MODEL = "telecom_churn_model"
SCORED_AT = datetime(2026, 5, 2, 3, 15, tzinfo=UTC)
FEATURES_TYPE = pa.struct(
    [
        ("tenure_months", pa.int32()),
        ("monthly_charge", pa.float32()),
        ("plan", pa.string()),
        ("autopay", pa.bool_()),
    ]
)
"""The feature struct of the batches below: a few model inputs of the types a frame has."""
LOG_SCHEMA = prediction_log_schema(FEATURES_TYPE)


def features_of(ids: Sequence[int], struct: pa.StructType = FEATURES_TYPE) -> pa.StructArray:
    """Per id, feature values as the scoring flow logs them (a null where i % 7 == 0)."""
    values = {
        "tenure_months": [i % 60 for i in ids],
        "monthly_charge": [None if i % 7 == 0 else 20.5 + i % 4 for i in ids],
        "plan": [("basic", "plus")[i % 2] for i in ids],
        "autopay": [i % 3 == 0 for i in ids],
        "support_calls_30d": [i % 5 for i in ids],
    }
    return pa.StructArray.from_arrays(
        [pa.array(values[f.name], f.type) for f in struct], fields=list(struct)
    )


def make_batch(
    ids: Sequence[int],
    probabilities: Sequence[float | None] | None = None,
    tiers: Sequence[str | None] | None = None,
    *,
    reasons: bool = True,
) -> pa.Table:
    """A batch as the scoring flow hands it over: the five columns of BATCH_COLUMNS."""
    ids = list(ids)
    if probabilities is None:
        probabilities = [round((i % 97) / 100, 2) for i in ids]
    if tiers is None:
        tiers = ["high" if p >= 0.10 else "medium" if p >= 0.04 else "low" for p in probabilities]
    return pa.table(
        {
            "subscriber_id": pa.array(ids, pa.int64()),
            "probability": pa.array(probabilities, pa.float64()),
            "risk_tier": pa.array(tiers, pa.string()),
            "reasons": pa.array(
                [["tenure_months", "support_calls_30d"] for _ in ids]
                if reasons
                else [None] * len(ids),
                pa.list_(pa.string()),
            ),
            "features": features_of(ids),
        }
    )


def writer(
    settings: Settings,
    *,
    day: date = DAY,
    version: int = 3,
    role: str = "champion",
    model: str = MODEL,
    flow_run_id: str | None = "run-1",
    scored_at: datetime = SCORED_AT,
    feature_service: str = "churn_model_v1",
    features_type: pa.StructType | None = None,
) -> PredictionLogWriter:
    return PredictionLogWriter(
        settings,
        score_date=day,
        model_name=model,
        model_version=version,
        role=role,
        feature_service=feature_service,
        flow_run_id=flow_run_id,
        scored_at=scored_at,
        features_type=features_type,
    )


def publish(settings: Settings, batches: Sequence[pa.Table], **kwargs: object) -> Path:
    """Write ``batches`` as one file of the log and return its path."""
    with writer(settings, **kwargs) as w:  # type: ignore[arg-type]
        for batch in batches:
            w.write(batch)
    return w.path


def temp_files(settings: Settings) -> list[Path]:
    return [p for p in settings.predictions_dir.rglob(f"{ledger.TEMP_PREFIX}*")]


# --- schema and layout -----------------------------------------------------------------------


def test_file_has_the_schema_and_constant_columns(churn_home: Settings) -> None:
    path = publish(churn_home, [make_batch(range(1, 6)), make_batch(range(6, 9), reasons=False)])

    assert (
        path
        == churn_home.predictions_dir / "score_date=2026-05-01" / f"{MODEL}-v3-champion.parquet"
    )
    assert path == log_path(churn_home, DAY, MODEL, 3, "champion")
    table = pq.read_table(path)
    assert table.schema.equals(LOG_SCHEMA)
    assert table.num_rows == 8
    assert pq.ParquetFile(path).metadata.num_row_groups == 2  # one per batch
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    # Dictionaries only where values repeat: not for floats nor for the per-row ids.
    group = pq.ParquetFile(path).metadata.row_group(0)
    dictionary = {
        group.column(i).path_in_schema
        for i in range(group.num_columns)
        if any("DICTIONARY" in e for e in group.column(i).encodings)
    }
    assert {"risk_tier", "model_name", "features.plan", "features.tenure_months"} <= dictionary
    assert not dictionary & {
        "prediction_id",
        "subscriber_id",
        "probability",
        "features.monthly_charge",
    }
    rows = table.to_pylist()
    assert {r["score_date"] for r in rows} == {DAY}
    assert {r["scored_at"] for r in rows} == {SCORED_AT}
    assert {(r["model_name"], r["model_version"], r["role"]) for r in rows} == {
        (MODEL, 3, "champion")
    }
    assert {(r["feature_service"], r["flow_run_id"]) for r in rows} == {("churn_model_v1", "run-1")}
    assert rows[0]["prediction_id"] == f"2026-05-01/{MODEL}/v3/champion/1"
    assert rows[0]["reasons"] == ["tenure_months", "support_calls_30d"]
    assert rows[-1]["reasons"] is None  # not computed for that batch
    assert rows[0]["features"] == {
        "tenure_months": 1,
        "monthly_charge": 21.5,
        "plan": "plus",
        "autopay": False,
    }
    assert rows[6]["features"]["monthly_charge"] is None  # subscriber 7: a missing value

    (entry,) = read_ledger(churn_home)
    assert entry.path == f"score_date=2026-05-01/{MODEL}-v3-champion.parquet"
    assert (entry.rows, entry.model_version, entry.role, entry.flow_run_id) == (
        8,
        3,
        "champion",
        "run-1",
    )
    assert entry.score_date == DAY and entry.written_at.tzinfo is not None
    assert log_files(churn_home) == [path]
    assert temp_files(churn_home) == []
    report = verify_log(churn_home)
    assert report.clean and report.ok == 1


def test_scored_at_in_another_zone_is_stored_in_utc(churn_home: Settings) -> None:
    local = datetime(2026, 5, 2, 5, 15, tzinfo=timezone(timedelta(hours=2)))
    path = publish(churn_home, [make_batch([1])], scored_at=local, flow_run_id=None)
    row = pq.read_table(path).to_pylist()[0]
    assert row["scored_at"] == SCORED_AT
    assert row["flow_run_id"] is None


def test_zero_rows_publish_an_empty_file_with_the_schema(churn_home: Settings) -> None:
    # No batch, no struct known: features is of the null type (Parquet has no empty struct).
    path = publish(churn_home, [])
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.schema.equals(EMPTY_FILE_SCHEMA)
    assert table.schema.field("features").type == pa.null()
    assert read_ledger(churn_home)[0].rows == 0
    assert verify_log(churn_home).clean


def test_zero_rows_with_the_services_struct_publish_it(churn_home: Settings) -> None:
    path = publish(churn_home, [], features_type=FEATURES_TYPE)
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.schema.equals(LOG_SCHEMA)
    assert read_ledger(churn_home)[0].rows == 0
    assert verify_log(churn_home).clean


def test_the_features_struct_round_trips_with_its_types(churn_home: Settings) -> None:
    # Every type a feature frame has, fields not nullable in the batch: the file keeps the
    # types and order, and makes each field nullable.
    struct = pa.struct(
        [
            pa.field("tenure_months", pa.int32(), nullable=False),
            pa.field("support_calls_30d", pa.int64()),
            pa.field("monthly_charge", pa.float32()),
            pa.field("data_gb_30d", pa.float64()),
            pa.field("plan", pa.string()),
            pa.field("autopay", pa.bool_()),
        ]
    )
    values = {
        "tenure_months": pa.array([12, 7], pa.int32()),
        "support_calls_30d": pa.array([3, None], pa.int64()),
        "monthly_charge": pa.array([49.5, 20.25], pa.float32()),
        "data_gb_30d": pa.array([1.1, float("nan")], pa.float64()),
        "plan": pa.array(["basic", None], pa.string()),
        "autopay": pa.array([True, False], pa.bool_()),
    }
    features = pa.StructArray.from_arrays(list(values.values()), fields=list(struct))
    path = publish(churn_home, [make_batch([1, 2]).set_column(4, "features", features)])

    stored = pq.read_table(path).schema.field("features")
    assert not stored.nullable
    assert [(f.name, f.type, f.nullable) for f in stored.type] == [
        (f.name, f.type, True) for f in struct
    ]
    assert pq.read_table(path).schema.equals(prediction_log_schema(struct))
    first, second = pq.read_table(path).column("features").to_pylist()
    assert first == {
        "tenure_months": 12,
        "support_calls_30d": 3,
        "monthly_charge": 49.5,
        "data_gb_30d": pytest.approx(1.1),
        "plan": "basic",
        "autopay": True,
    }
    assert second["support_calls_30d"] is None and second["plan"] is None
    assert second["data_gb_30d"] != second["data_gb_30d"]  # NaN stays NaN, not null


@pytest.mark.parametrize(
    "struct",
    [pa.int32(), pa.struct([])],
    ids=["not a struct", "a struct without fields"],
)
def test_a_features_type_that_is_no_struct_is_refused(churn_home: Settings, struct) -> None:
    with pytest.raises(PredictionLogError, match="features must be a struct of at least one field"):
        writer(churn_home, features_type=struct)


# --- reruns ----------------------------------------------------------------------------------


def test_rerun_replaces_the_file_without_duplicates(churn_home: Settings) -> None:
    first = publish(churn_home, [make_batch(range(1, 51))])
    first_ids = pq.read_table(first).column("prediction_id").to_pylist()
    # The rerun scores the same subscribers with other probabilities.
    second = publish(
        churn_home,
        [make_batch(range(1, 26), [0.5] * 25), make_batch(range(26, 51), [0.5] * 25)],
        flow_run_id="run-2",
    )

    assert second == first
    assert list(first.parent.iterdir()) == [first]
    table = pq.read_table(second)
    assert table.num_rows == 50
    assert table.column("prediction_id").to_pylist() == first_ids  # deterministic ids
    assert set(table.column("probability").to_pylist()) == {0.5}
    assert set(table.column("flow_run_id").to_pylist()) == {"run-2"}
    lines = read_ledger(churn_home)
    assert [e.flow_run_id for e in lines] == ["run-1", "run-2"]
    assert lines[0].path == lines[1].path and lines[0].sha256 != lines[1].sha256
    report = verify_log(churn_home)
    assert report.clean and report.ok == 1 and report.ledger_lines == 2


def test_rerun_leaves_other_versions_roles_and_days_alone(churn_home: Settings) -> None:
    champion = publish(churn_home, [make_batch(range(1, 11))])
    shadow = publish(churn_home, [make_batch(range(1, 11))], version=4, role="shadow")
    older = publish(churn_home, [make_batch(range(1, 11))], version=2)
    next_day = publish(churn_home, [make_batch(range(1, 11))], day=DAY + timedelta(days=1))
    before = {p: p.read_bytes() for p in (shadow, older, next_day)}

    publish(churn_home, [make_batch(range(1, 6))], flow_run_id="rerun")

    assert {p: p.read_bytes() for p in (shadow, older, next_day)} == before
    assert pq.read_table(champion).num_rows == 5
    assert len(log_files(churn_home)) == 4
    assert verify_log(churn_home).ok == 4


# --- atomicity -------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


def test_exception_mid_write_publishes_nothing(churn_home: Settings) -> None:
    published = publish(churn_home, [make_batch(range(1, 11))])
    before = published.read_bytes()

    with pytest.raises(Boom), writer(churn_home, flow_run_id="crashed") as w:
        w.write(make_batch(range(1, 6), [0.9] * 5))
        assert len(temp_files(churn_home)) == 1
        raise Boom("scoring shard 2 failed")

    assert published.read_bytes() == before
    assert temp_files(churn_home) == []
    assert len(read_ledger(churn_home)) == 1
    assert verify_log(churn_home).clean


def test_exception_before_any_publish_leaves_no_file(churn_home: Settings) -> None:
    with pytest.raises(Boom), writer(churn_home) as w:
        w.write(make_batch([1, 2]))
        raise Boom
    assert not w.path.exists() and temp_files(churn_home) == []
    assert read_ledger(churn_home) == []


@pytest.mark.parametrize(
    "failure", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "killed"]
)
def test_crash_between_replace_and_ledger_is_reported_and_healed(
    churn_home: Settings, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    published = publish(churn_home, [make_batch(range(1, 11))])
    new_file = log_path(churn_home, DAY, MODEL, 4, "shadow")

    def crash(settings: Settings, entry: ledger.LedgerEntry) -> None:
        raise failure

    monkeypatch.setattr(plog, "append_ledger", crash)
    expected = PredictionLogError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        publish(churn_home, [make_batch(range(1, 11), [0.7] * 10)])
    with pytest.raises(expected):
        publish(churn_home, [make_batch(range(1, 11))], version=4, role="shadow")
    monkeypatch.undo()

    # The replaced file no longer matches its ledger line; the new one has none.
    report = verify_log(churn_home)
    assert not report.clean
    assert [m.path for m in report.modified] == [
        published.relative_to(churn_home.predictions_dir).as_posix()
    ]
    assert report.unexpected == (new_file.relative_to(churn_home.predictions_dir).as_posix(),)
    assert temp_files(churn_home) == []

    publish(churn_home, [make_batch(range(1, 11), [0.7] * 10)])
    publish(churn_home, [make_batch(range(1, 11))], version=4, role="shadow")
    report = verify_log(churn_home)
    assert report.clean and report.ok == 2


def test_in_flight_writer_is_ignored_and_a_killed_ones_leftovers_are_not(
    churn_home: Settings,
) -> None:
    publish(churn_home, [make_batch([1, 2])])
    with writer(churn_home, version=4, role="shadow") as w:
        w.write(make_batch([1, 2]))
        report = verify_log(churn_home)
        assert report.clean and len(report.in_flight) == 1
        assert report.in_flight[0].startswith("score_date=2026-05-01/.writing-")

    # A writer killed with SIGKILL leaves its temp file behind, unlocked.
    leftover = w.path.parent / f"{ledger.TEMP_PREFIX}{w.path.name}.abc123{ledger.TEMP_SUFFIX}"
    leftover.write_bytes(b"half a parquet file")
    report = verify_log(churn_home)
    assert report.unexpected == (leftover.relative_to(churn_home.predictions_dir).as_posix(),)
    # The next writer of that file clears it.
    publish(churn_home, [make_batch([1, 2])], version=4, role="shadow")
    assert not leftover.exists() and verify_log(churn_home).clean


# --- refused batches -------------------------------------------------------------------------


def _drop(column: str) -> pa.Table:
    return make_batch([1, 2, 3]).drop_columns([column])


BAD_BATCHES = [
    # (case, batch, words the message must contain)
    ("missing column", _drop("risk_tier"), ["risk_tier", "column present", "3 rows"]),
    (
        "extra column",
        make_batch([1, 2]).append_column("age_band", pa.array(["a", "b"])),
        ["age_band", "no extra column"],
    ),
    (
        "probability above 1",
        make_batch([1, 2, 3], [0.2, 1.5, 2.0]),
        ["probability", "in [0, 1]", "2 rows"],
    ),
    (
        "negative probability",
        make_batch([1, 2], [-0.1, 0.2]),
        ["probability", "in [0, 1]", "1 rows"],
    ),
    (
        "NaN probability",
        make_batch([1, 2], [float("nan"), 0.2], ["low", "high"]),
        ["in [0, 1]", "1 rows"],
    ),
    (
        "null probability",
        make_batch([1, 2], [None, 0.2], ["low", "high"]),
        ["probability", "not null", "1 rows"],
    ),
    (
        "duplicate ids",
        make_batch([7, 7, 8, 9, 9]),
        ["subscriber_id", "unique in the batch", "2 rows", "7, 9"],
    ),
    (
        "unknown tier",
        make_batch([1, 2], [0.5, 0.5], ["high", "extreme"]),
        ["risk_tier", "'extreme'", "1 rows"],
    ),
    (
        "uncastable type",
        make_batch([1]).set_column(1, "probability", pa.array(["high"])),
        ["probability", "type double"],
    ),
    (
        # The log's format before features became a struct.
        "features as JSON text",
        make_batch([1, 2]).set_column(4, "features", pa.array(['{"a": 1}', '{"a": 2}'])),
        ["batch.features", "a struct of the feature values", "2 rows", "got string"],
    ),
    (
        "features as a struct without fields",
        make_batch([1]).set_column(4, "features", pa.array([{}], pa.struct([]))),
        ["batch.features", "a struct of the feature values (at least one field)", "1 rows"],
    ),
    (
        "null features",
        make_batch([1, 2, 3]).set_column(
            4,
            "features",
            pa.StructArray.from_arrays(
                features_of([1, 2, 3]).flatten(),
                fields=list(FEATURES_TYPE),
                mask=pa.array([False, True, False]),
            ),
        ),
        ["features", "not null", "1 rows"],
    ),
]


@pytest.mark.parametrize(("case", "batch", "words"), BAD_BATCHES, ids=[c[0] for c in BAD_BATCHES])
def test_bad_batch_is_refused_and_nothing_is_written(
    churn_home: Settings, case: str, batch: pa.Table, words: list[str]
) -> None:
    with pytest.raises(PredictionBatchError) as caught, writer(churn_home) as w:
        w.write(batch)
    for word in words:
        assert word in str(caught.value), (case, str(caught.value))
    assert not w.path.exists() and temp_files(churn_home) == []
    assert read_ledger(churn_home) == []


def test_subscriber_in_two_batches_of_one_file_is_refused(churn_home: Settings) -> None:
    with (
        pytest.raises(
            PredictionBatchError,
            match=r"not in an earlier batch of this file failed for 2 rows \(e.g. 4, 5\)",
        ),
        writer(churn_home) as w,
    ):
        w.write(make_batch([1, 2, 3, 4, 5]))
        w.write(make_batch([4, 5, 6]))
    assert not w.path.exists() and read_ledger(churn_home) == []


TYPE_CHANGES = [
    # (case, the second batch's struct, words the message must contain)
    (
        "a field retyped",
        pa.struct([("tenure_months", pa.int64()), *list(FEATURES_TYPE)[1:]]),
        ["tenure_months int32 -> int64"],
    ),
    ("a field added", pa.struct([*FEATURES_TYPE, ("support_calls_30d", pa.int64())]), ["added"]),
    ("a field gone", pa.struct(list(FEATURES_TYPE)[:3]), ["autopay missing"]),
    ("fields reordered", pa.struct(list(FEATURES_TYPE)[::-1]), ["reordered"]),
]


@pytest.mark.parametrize(
    ("case", "struct", "words"), TYPE_CHANGES, ids=[c[0] for c in TYPE_CHANGES]
)
def test_a_features_struct_that_changes_within_a_file_is_refused(
    churn_home: Settings, case: str, struct: pa.StructType, words: list[str]
) -> None:
    published = publish(churn_home, [make_batch([1, 2])])
    before = published.read_bytes()
    second = make_batch([3, 4]).set_column(4, "features", features_of([3, 4], struct))
    with pytest.raises(PredictionBatchError) as caught, writer(churn_home) as w:
        w.write(make_batch([1, 2]))
        w.write(second)
    message = str(caught.value)
    for word in ["batch.features", "the same struct in every batch of a file", "2 rows", *words]:
        assert word in message, (case, message)
    assert published.read_bytes() == before and temp_files(churn_home) == []
    assert len(read_ledger(churn_home)) == 1


def test_a_batch_of_another_struct_than_the_writers_is_refused(churn_home: Settings) -> None:
    other = pa.struct([("tenure_months", pa.int64())])
    with (
        pytest.raises(PredictionBatchError, match="tenure_months int64 -> int32"),
        writer(churn_home, features_type=other) as w,
    ):
        w.write(make_batch([1]))
    assert not w.path.exists() and read_ledger(churn_home) == []


def test_fields_that_differ_only_in_nullability_are_one_struct(churn_home: Settings) -> None:
    strict = pa.struct([f.with_nullable(False) for f in FEATURES_TYPE])
    batch = make_batch([3]).set_column(4, "features", features_of([3]).cast(strict))
    path = publish(churn_home, [make_batch([1, 2]), batch])
    assert pq.read_table(path).schema.equals(LOG_SCHEMA)


def test_swallowed_batch_error_still_publishes_nothing(churn_home: Settings) -> None:
    published = publish(churn_home, [make_batch([1, 2])])
    before = published.read_bytes()
    # The caller catches the refusal and goes on: the writer still refuses to publish.
    w = writer(churn_home)
    with pytest.raises(PredictionLogError, match="failed; nothing was published"), w:
        w.write(make_batch([1, 2]))
        with pytest.raises(PredictionBatchError):
            w.write(make_batch([3], [3.0]))
        with pytest.raises(PredictionLogError, match="earlier batch"):
            w.write(make_batch([4]))
    assert published.read_bytes() == before and len(read_ledger(churn_home)) == 1


def test_compatible_types_are_cast(churn_home: Settings) -> None:
    batch = pa.table(
        {
            "features": features_of([5]),
            "subscriber_id": pa.array([5], pa.int32()),
            "probability": pa.array([0.25], pa.float32()),
            "risk_tier": pa.array(["high"]).dictionary_encode(),
            "reasons": pa.nulls(1),
        }
    )
    path = publish(churn_home, [batch])
    table = pq.read_table(path)
    assert table.schema.equals(LOG_SCHEMA)
    assert table.column("subscriber_id").to_pylist() == [5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "challenger"}, "role must be one of champion, shadow"),
        ({"model": "../etc"}, "cannot name a log file"),
        ({"version": 0}, "positive int"),
        ({"scored_at": datetime(2026, 5, 2, 3, 15)}, "time-zone aware"),
        ({"day": datetime(2026, 5, 1, 0, 0)}, "must be a date"),
    ],
)
def test_bad_arguments_are_refused(churn_home: Settings, kwargs: dict, message: str) -> None:
    with pytest.raises(PredictionLogError, match=message):
        writer(churn_home, **kwargs)


def test_write_outside_the_block_is_refused(churn_home: Settings) -> None:
    w = writer(churn_home)
    with pytest.raises(PredictionLogError, match="outside its `with` block"):
        w.write(make_batch([1]))


# --- tampering -------------------------------------------------------------------------------


def test_verify_reports_modified_missing_and_unexpected_files(churn_home: Settings) -> None:
    edited = publish(churn_home, [make_batch(range(1, 21))])
    deleted = publish(churn_home, [make_batch(range(1, 21))], version=4, role="shadow")
    kept = publish(churn_home, [make_batch(range(1, 21))], day=DAY + timedelta(days=1))
    assert verify_log(churn_home).clean

    # Same rows, one probability changed: only the checksum can tell.
    table = pq.read_table(edited)
    probability = table.column("probability").to_pylist()
    probability[3] = 0.01
    pq.write_table(
        table.set_column(7, table.schema.field(7), pa.array(probability)),
        edited,
        compression="zstd",
    )
    deleted.unlink()
    planted = edited.parent / f"{MODEL}-v9-champion.parquet"
    pq.write_table(pq.read_table(kept), planted)
    note = churn_home.predictions_dir / "notes.txt"
    note.write_text("hello")

    report = verify_log(churn_home)
    rel = lambda p: p.relative_to(churn_home.predictions_dir).as_posix()
    assert not report.clean and report.ok == 1
    (mismatch,) = report.modified
    assert mismatch.path == rel(edited) and mismatch.actual_rows == mismatch.expected_rows == 20
    assert mismatch.actual_sha256 != mismatch.expected_sha256
    assert report.missing == (rel(deleted),)
    assert report.unexpected == ("notes.txt", rel(planted))
    assert report.summary() == "1 ok, 1 modified, 1 missing, 2 unexpected"


def test_verify_reports_a_truncated_file_as_unreadable(churn_home: Settings) -> None:
    path = publish(churn_home, [make_batch(range(1, 21))])
    path.write_bytes(path.read_bytes()[:100])
    (mismatch,) = verify_log(churn_home).modified
    assert mismatch.actual_rows is None and "unreadable" in str(mismatch)


def test_verify_of_an_empty_home_is_clean_and_creates_nothing(churn_home: Settings) -> None:
    report = verify_log(churn_home)
    assert report.clean and report.ok == 0
    assert not churn_home.predictions_dir.exists()


def test_a_broken_ledger_line_is_named(churn_home: Settings) -> None:
    publish(churn_home, [make_batch([1])])
    with open(ledger_path(churn_home), "a") as handle:
        handle.write('{"path": "../../etc/passwd"}\n')
    with pytest.raises(PredictionLogError, match="line 2 is not a ledger record"):
        verify_log(churn_home)


def test_ledger_line_matches_the_file(churn_home: Settings) -> None:
    path = publish(churn_home, [make_batch(range(1, 4))])
    line = json.loads(ledger_path(churn_home).read_text().splitlines()[0])
    assert set(line) == {
        "path",
        "score_date",
        "model_name",
        "model_version",
        "role",
        "rows",
        "sha256",
        "written_at",
        "flow_run_id",
    }
    import hashlib

    assert line["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert line["rows"] == 3 and line["score_date"] == "2026-05-01"
    assert pc.max(pq.read_table(path).column("subscriber_id")).as_py() == 3
