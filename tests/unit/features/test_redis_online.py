"""The bulk Redis writer encodes exactly what Feast's Redis store writes (issue 14).

Each HSET the writer builds is parsed back and compared, byte for byte, with what Feast's own
code gives for the same row: the key (``_redis_key``), the field names (``_mmh3``, ``_ts:``), the
values (``python_values_to_proto_values`` then ``SerializeToString``, as Feast's materialization
does) and the timestamp (``Timestamp.FromDatetime``). No Redis needed; the integration tests
write through a real one.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from tasks.core.errors import FeatureStoreError
from tasks.features.redis_online import (
    ViewLayout,
    encode_commands,
    encode_values,
    entity_key,
    parse_timestamp_seconds,
)

PROJECT = "churn_ops"
FEAST_TYPES = {
    "Int32": ValueType.INT32,
    "Int64": ValueType.INT64,
    "Float32": ValueType.FLOAT,
    "Float64": ValueType.DOUBLE,
    "String": ValueType.STRING,
    "Bool": ValueType.BOOL,
}


def parse_resp(data: bytes) -> list[list[bytes]]:
    """The commands in a stream of Redis protocol arrays of bulk strings."""
    commands, at = [], 0
    while at < len(data):
        assert data[at : at + 1] == b"*"
        end = data.index(b"\r\n", at)
        count, at = int(data[at + 1 : end]), end + 2
        args = []
        for _ in range(count):
            assert data[at : at + 1] == b"$"
            end = data.index(b"\r\n", at)
            size, at = int(data[at + 1 : end]), end + 2
            args.append(data[at : at + size])
            assert data[at + size : at + size + 2] == b"\r\n"
            at += size + 2
        commands.append(args)
    return commands


def feast_hash(layout: ViewLayout, table: pa.Table, row: int) -> tuple[bytes, dict[bytes, bytes]]:
    """Key and hash of one row, built with Feast's own functions (its online_write_batch logic)."""
    sid = table.column(layout.join_key)[row].as_py()
    key = _redis_key(
        PROJECT,
        EntityKey(join_keys=[layout.join_key], entity_values=[Value(int64_val=sid)]),
        entity_key_serialization_version=3,
    )
    ts = Timestamp()
    ts.FromDatetime(table.column(layout.timestamp_column)[row].as_py())
    mapping = {f"_ts:{layout.name}".encode(): ts.SerializeToString()}
    for name, dtype in layout.features:
        # Feast converts a whole column through to_numpy (nulls become NaN/None).
        values = table.column(name).combine_chunks().to_numpy(zero_copy_only=False)
        proto = python_values_to_proto_values(values, FEAST_TYPES[dtype])[row]
        mapping[_mmh3(f"{layout.name}:{name}")] = proto.SerializeToString()
    return key, mapping


LAYOUT = ViewLayout(
    name="subscriber_mixed_30d",
    join_key="subscriber_id",
    timestamp_column="snapshot_ts",
    features=[
        ("f32", "Float32"),
        ("f64", "Float64"),
        ("i32", "Int32"),
        ("i64", "Int64"),
        ("text", "String"),
        ("flag", "Bool"),
    ],
)


def mixed_table() -> pa.Table:
    # Every case the wire format treats differently: nulls, NaN, zero and -0.0, negative
    # integers (ten-byte varints), varint boundaries, long and non-ASCII strings, micro-seconds.
    stamps = [
        datetime(2026, 5, 30, tzinfo=UTC),
        datetime(2026, 5, 31, 0, 0, 0, 123456, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 12, tzinfo=UTC),
        datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 5, 30, tzinfo=UTC),
    ]
    return pa.table(
        {
            "subscriber_id": pa.array([1, 127, 2**40 + 5, 42, 9_999_999, 3], pa.int64()),
            "f32": pa.array([1.5, None, float("nan"), 0.0, -0.0, 3.4e38], pa.float32()),
            "f64": pa.array([0.1, -2.5e-300, None, 0.0, 1e308, 7.0], pa.float64()),
            "i32": pa.array([0, 127, 128, -1, None, 2**31 - 1], pa.int32()),
            "i64": pa.array([-(2**63), 300, None, 16383, 16384, 2**62], pa.int64()),
            "text": pa.array(["basic", "", None, "é" * 100, "premium", "basic"], pa.string()),
            "flag": pa.array([True, False, None, True, False, None], pa.bool_()),
            "snapshot_ts": pa.array(stamps, pa.timestamp("us", "UTC")),
        }
    )


def test_every_hset_is_what_feasts_writer_writes() -> None:
    table = mixed_table()
    commands = parse_resp(encode_commands(LAYOUT, table.to_batches()[0], PROJECT))
    assert len(commands) == table.num_rows
    for row, command in enumerate(commands):
        assert command[0] == b"HSET"
        key, mapping = feast_hash(LAYOUT, table, row)
        assert command[1] == key
        pairs = dict(zip(command[2::2], command[3::2], strict=True))
        assert len(pairs) == len(command[2:]) // 2  # no field twice
        assert pairs == mapping, f"row {row}"


def test_a_batch_of_realistic_rows_matches_too() -> None:
    rng = np.random.default_rng(3)
    n = 2_000
    values = rng.gamma(2.0, 20.0, n).astype(np.float32)
    table = pa.table(
        {
            "subscriber_id": pa.array(rng.permutation(n) + 1, pa.int64()),
            "f32": pa.array(values, mask=rng.random(n) < 0.05),
            "f64": pa.array(rng.normal(0, 1e6, n)),
            "i32": pa.array(rng.integers(-1000, 100_000, n).astype(np.int32)),
            "i64": pa.array(rng.integers(-(2**40), 2**40, n)),
            "text": pa.array(rng.choice(["basic", "standard", "premium"], n)),
            "flag": pa.array(rng.random(n) < 0.5),
            "snapshot_ts": pa.array(
                [datetime(2026, 5, 30, tzinfo=UTC)] * n, pa.timestamp("us", "UTC")
            ),
        }
    )
    commands = parse_resp(encode_commands(LAYOUT, table.to_batches()[0], PROJECT))
    for row in range(0, n, 97):
        key, mapping = feast_hash(LAYOUT, table, row)
        assert commands[row][1] == key
        assert dict(zip(commands[row][2::2], commands[row][3::2], strict=True)) == mapping


def test_the_reader_side_helpers_agree_with_feast() -> None:
    key = _redis_key(
        PROJECT,
        EntityKey(join_keys=["subscriber_id"], entity_values=[Value(int64_val=123456)]),
        entity_key_serialization_version=3,
    )
    assert entity_key("subscriber_id", 123456, PROJECT) == key
    for moment in (datetime(2026, 5, 31, tzinfo=UTC), datetime(1960, 1, 1, tzinfo=UTC)):
        ts = Timestamp()
        ts.FromDatetime(moment)
        assert parse_timestamp_seconds(ts.SerializeToString()) == math.floor(moment.timestamp())
    assert parse_timestamp_seconds(b"") == 0


def test_a_type_the_writer_cannot_encode_is_named() -> None:
    with pytest.raises(FeatureStoreError, match="cannot encode Feast type UnixTimestamp"):
        encode_values(pa.array([1], pa.int64()), "UnixTimestamp")
