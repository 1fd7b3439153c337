"""Feast's Redis online store, written in bulk: the keys and values Feast writes, byte for byte.

Feast's layout (``feast/infra/online_stores/redis.py``), one Redis hash per entity, shared by
every feature view of that entity:

* key: the entity key serialized as Feast's version 3 does (for one int64 join key:
  ``<I 1><I STRING><I len(name)> name <I INT64><I 8><q id>``) followed by the project name;
* per view, field ``_ts:<view>``: the row's event time as a ``google.protobuf.Timestamp``;
* per feature, field ``murmur3_32("<view>:<feature>")`` (4 bytes, little endian): the value as a
  Feast ``Value`` protobuf, ``b""`` for a null (Feast turns NaN into null too).

Feast's own writer turns every value into a protobuf object in Python and reads each key's old
timestamp before writing it (bench/materialize.py, 20,000 subscribers: ~15,000 view rows/s,
against ~78,000 here). :func:`write_rows` instead encodes a whole batch of rows column by column
with numpy and Arrow (the protobuf wire format and the Redis protocol are simple enough for
that) and sends it as one pipeline of ``HSET`` commands, one per entity and view, checking
every reply. It does not compare timestamps: the last materialization wins, as in
the SQLite store and in Feast's Redis store with ``skip_dedup: true`` (which
:func:`tasks.features.store.online_store_config` sets, so ``feast materialize`` behaves the same).
A test holds the hashes to those Feast's writer produces, and reads them back through
``get_online_features``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureStore, FeatureView
from feast.protos.feast.types.Value_pb2 import ValueType

from tasks.core.errors import FeatureStoreError
from tasks.core.urls import scrub

logger = logging.getLogger(__name__)

KEY_SERIALIZATION_VERSION = 3
"""The only entity-key version this writer produces (feature_store.yaml pins it)."""

# Protobuf wire tags (field number << 3 | wire type) of the Value fields written here.
_TAG_STRING = 0x12  # string_val = 2, length-delimited
_TAG_INT32 = 0x18  # int32_val = 3, varint
_TAG_INT64 = 0x20  # int64_val = 4, varint
_TAG_DOUBLE = 0x29  # double_val = 5, 64-bit
_TAG_FLOAT = 0x35  # float_val = 6, 32-bit
_TAG_BOOL = 0x38  # bool_val = 7, varint
_TAG_SECONDS = 0x08  # Timestamp.seconds = 1, varint
_TAG_NANOS = 0x10  # Timestamp.nanos = 2, varint


# ----------------------------------------------------------------------------- names


def key_prefix(join_key: str) -> bytes:
    """The bytes of a serialized single-int64 entity key before the id itself."""
    name = join_key.encode()
    return (
        struct.pack("<III", 1, ValueType.STRING, len(name))
        + name
        + struct.pack("<II", ValueType.INT64, 8)
    )


def entity_key(join_key: str, entity_id: int, project: str) -> bytes:
    """The Redis key of one entity: what Feast's ``_redis_key`` gives for an int64 join key."""
    return key_prefix(join_key) + struct.pack("<q", entity_id) + project.encode()


def feature_field(view: str, feature: str) -> bytes:
    """The hash field of one feature: murmur3 (32 bits, unsigned) of ``view:feature``, little endian."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def timestamp_field(view: str) -> bytes:
    """The hash field holding a view's event time."""
    return f"_ts:{view}".encode()


def parse_timestamp_seconds(blob: bytes) -> int:
    """Whole seconds of a serialized ``google.protobuf.Timestamp`` (0 when absent)."""
    seconds, shift, i = 0, 0, 0
    while i < len(blob):
        tag = blob[i]
        i += 1
        value, shift = 0, 0
        while True:
            byte = blob[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if tag == _TAG_SECONDS:
            seconds = value - (1 << 64) if value >= 1 << 63 else value
    return seconds


# ----------------------------------------------------------------------------- encoding
#
# A batch is encoded column by column into Arrow binary arrays (one element per row), and
# Arrow's ``binary_join_element_wise`` lays them end to end per row; the joined array's data
# buffer is then the batch's stream of commands. numpy builds each column's bytes as a matrix
# (one row per row, as wide as the longest encoding) and keeps the used prefix of each row.


def _compact(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A binary array of ``data[i, :lengths[i]]`` per row."""
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    used = np.arange(data.shape[1])[None, :] < lengths[:, None]
    values = np.ascontiguousarray(data[used])
    return pa.Array.from_buffers(
        pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(values)]
    )


def _fixed_width(data: np.ndarray) -> pa.Array:
    """A binary array of each row of ``data`` (all the same width)."""
    rows, width = data.shape
    offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())]
    )


def _varint(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints of ``values`` (int64; negatives as ten-byte two's complement): a
    (rows, 10) matrix and each row's length."""
    unsigned = values.astype(np.int64).view(np.uint64)
    groups = np.stack(
        [((unsigned >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) for k in range(10)],
        axis=1,
    )
    lengths = np.ones(len(values), np.int64)
    for k in range(1, 10):
        lengths += (unsigned >> np.uint64(7 * k)) != 0
    more = np.arange(10)[None, :] < (lengths[:, None] - 1)
    groups[more] |= 0x80
    return groups, lengths


def _tagged_varints(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> pa.Array:
    """Per row, for each (tag, values, present): ``tag varint(value)`` where present, one after
    the other (a protobuf message of varint fields)."""
    rows = len(parts[0][1])
    data = np.zeros((rows, 11 * len(parts)), np.uint8)
    lengths = np.zeros(rows, np.int64)
    # Written left to right; a field that is absent takes no room, so later fields shift left.
    for tag, values, present in parts:
        groups, sizes = _varint(values)
        field = np.concatenate([np.full((rows, 1), tag, np.uint8), groups], axis=1)
        sizes = np.where(present, 1 + sizes, 0)
        columns = lengths[:, None] + np.arange(11)[None, :]
        keep = np.arange(11)[None, :] < sizes[:, None]
        data[np.nonzero(keep)[0], columns[keep]] = field[keep]
        lengths += sizes
    return _compact(data, lengths)


def _bulk(payload: pa.Array) -> list[pa.Array | pa.Scalar]:
    """Each row's payload as a Redis bulk string: ``$<length>\r\n<payload>\r\n``."""
    lengths = pc.binary_length(payload).to_numpy(zero_copy_only=False)
    longest = int(lengths.max()) if len(lengths) else 0
    headers = pa.array([b"$%d\r\n" % n for n in range(longest + 1)], pa.binary())
    return [headers.take(pa.array(lengths)), payload, _CRLF]


_CRLF = pa.scalar(b"\r\n", pa.binary())


def _fixed_bulk(tag: int, raw: np.ndarray, valid: np.ndarray) -> pa.Array:
    """``tag`` and each row's little-endian bytes as a bulk string; an invalid row: empty."""
    width = raw.dtype.itemsize
    head = b"$%d\r\n" % (1 + width)
    data = np.empty((len(raw), len(head) + 1 + width + 2), np.uint8)
    data[:, : len(head)] = np.frombuffer(head, np.uint8)
    data[:, len(head)] = tag
    data[:, len(head) + 1 : -2] = (
        raw.astype(raw.dtype.newbyteorder("<")).view(np.uint8).reshape(-1, width)
    )
    data[:, -2:] = np.frombuffer(b"\r\n", np.uint8)
    return pc.if_else(pa.array(valid), _fixed_width(data), pa.scalar(b"$0\r\n\r\n", pa.binary()))


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_bulk(column: pa.Array) -> pa.Array:
    """``string_val`` of each row as a bulk string, encoded once per distinct string."""
    encoded = pc.dictionary_encode(column.cast(pa.string()))
    words = [
        bytes([_TAG_STRING]) + _varint_bytes(len(b)) + b
        for b in (s.encode() for s in encoded.dictionary.to_pylist())
    ]
    choices = pa.array([*(b"$%d\r\n%s\r\n" % (len(w), w) for w in words), b"$0\r\n\r\n"])
    return choices.take(encoded.indices.fill_null(len(words)))


def encode_values(column: pa.Array, dtype: str) -> pa.Array:
    """Each row's Feast ``Value`` protobuf (as ``Value.SerializeToString`` writes it), as a
    Redis bulk string.

    Raises:
        FeatureStoreError: a Feast type this writer does not encode.
    """
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if dtype in ("Float32", "Float64"):
        raw = column.fill_null(0).to_numpy(zero_copy_only=False)
        raw = raw.astype(np.float32 if dtype == "Float32" else np.float64)
        valid = valid & ~np.isnan(raw)  # Feast writes NaN as a null Value
        return _fixed_bulk(_TAG_FLOAT if dtype == "Float32" else _TAG_DOUBLE, raw, valid)
    if dtype in ("Int32", "Int64", "Bool"):
        if dtype == "Bool":
            column = column.cast(pa.int8())
        raw = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        tag = {"Int32": _TAG_INT32, "Int64": _TAG_INT64, "Bool": _TAG_BOOL}[dtype]
        return pc.binary_join_element_wise(*_bulk(_tagged_varints([(tag, raw, valid)])), b"")
    if dtype == "String":
        return _string_bulk(column)
    raise FeatureStoreError(f"the bulk Redis writer cannot encode Feast type {dtype}")


def encode_timestamps(column: pa.Array) -> pa.Array:
    """Each row's event time as a serialized ``google.protobuf.Timestamp`` (not a bulk string)."""
    micros = column.cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    seconds = np.floor_divide(micros, 1_000_000)
    nanos = (micros - seconds * 1_000_000) * 1000
    return _tagged_varints([(_TAG_SECONDS, seconds, seconds != 0), (_TAG_NANOS, nanos, nanos != 0)])


# ----------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ViewLayout:
    """What one feature view writes: its entity key, fields and the types of its features."""

    name: str
    join_key: str
    timestamp_column: str
    features: list[tuple[str, str]]  # (feature name, Feast type)

    @classmethod
    def of(cls, view: FeatureView) -> ViewLayout:
        """The layout of a view with one int64 join key (the subscriber).

        Raises:
            FeatureStoreError: the view has another entity shape.
        """
        keys = [c for c in view.entity_columns]
        if len(keys) != 1 or str(keys[0].dtype) != "Int64":
            raise FeatureStoreError(
                f"the bulk Redis writer takes one int64 join key; {view.name} has "
                + ", ".join(f"{c.name} ({c.dtype})" for c in keys)
            )
        return cls(
            view.name,
            keys[0].name,
            view.batch_source.timestamp_field,
            [(f.name, str(f.dtype)) for f in view.features],
        )


def encode_commands(layout: ViewLayout, batch: pa.RecordBatch, project: str) -> bytes:
    """One ``HSET key _ts:<view> <ts> <field> <value> …`` per row, in the Redis protocol."""
    rows = batch.num_rows
    ids = batch.column(layout.join_key).to_numpy(zero_copy_only=False).astype("<i8")
    key = key_prefix(layout.join_key)
    suffix = project.encode()
    keys = np.empty((rows, len(key) + 8 + len(suffix)), np.uint8)
    keys[:, : len(key)] = np.frombuffer(key, np.uint8)
    keys[:, len(key) : len(key) + 8] = ids.view(np.uint8).reshape(-1, 8)
    keys[:, len(key) + 8 :] = np.frombuffer(suffix, np.uint8)
    head = _command_head(2 + 2 * (1 + len(layout.features))) + b"$%d\r\n" % keys.shape[1]
    parts: list[pa.Array | pa.Scalar] = [
        pa.scalar(head, pa.binary()),
        _fixed_width(keys),
        pa.scalar(b"\r\n" + _bulk_bytes(timestamp_field(layout.name)), pa.binary()),
        *_bulk(encode_timestamps(batch.column(layout.timestamp_column))),
    ]
    for name, dtype in layout.features:
        parts.append(pa.scalar(_bulk_bytes(feature_field(layout.name, name)), pa.binary()))
        parts.append(encode_values(batch.column(name), dtype))
    joined = pc.binary_join_element_wise(*parts, b"")
    offsets = np.frombuffer(joined.buffers()[1], np.int32, rows + 1, joined.offset * 4)
    return joined.buffers()[2].slice(offsets[0], offsets[-1] - offsets[0]).to_pybytes()


def _bulk_bytes(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command_head(arguments: int) -> bytes:
    return b"*%d\r\n" % arguments + _bulk_bytes(b"HSET")


def write_rows(
    client, layout: ViewLayout, batches: Iterable[pa.RecordBatch], project: str, where: str
) -> int:
    """Write each row of ``batches`` (one row per entity) as Feast would; the rows written.

    One pipeline per batch on one connection of ``client`` (a ``redis.Redis``), and every reply
    is read, so an error in any command fails the write. A batch goes out before the replies of
    the one before it are read: Redis works through it while this process parses and encodes.

    Raises:
        FeatureStoreError: Redis refused a command or went away (names ``where``, never a password).
    """
    import redis

    written = 0
    unread = 0
    connection = client.connection_pool.get_connection()
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            connection.send_packed_command([encode_commands(layout, batch, project)])
            written += _read_replies(connection, unread)
            unread = batch.num_rows
        written += _read_replies(connection, unread)
    except redis.RedisError as exc:
        connection.disconnect()  # replies may be left unread: never reuse this connection
        raise FeatureStoreError(
            f"writing {layout.name} to the online store (redis at {where}) failed after "
            f"{written:,} rows: {scrub(str(exc), [])}"
        ) from None
    finally:
        client.connection_pool.release(connection)
    return written


def _read_replies(connection, count: int) -> int:
    for _ in range(count):
        connection.read_response()  # raises on an error reply
    return count


def latest_rows(
    store: FeatureStore, view: FeatureView, start: datetime, end: datetime, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The newest row per entity with ``start <= ts <= end``, as Feast's materialization reads it."""
    from tasks.features.feast_offline import latest_row_batches, partition_root

    source = view.batch_source
    root = partition_root(source)
    layout = ViewLayout.of(view)
    if root is None:
        raise FeatureStoreError(
            f"the bulk Redis writer reads partitioned feature tables; {view.name}'s source "
            f"{source.path} is not one"
        )
    yield from latest_row_batches(
        root,
        [layout.join_key],
        [name for name, _ in layout.features],
        layout.timestamp_column,
        start,
        end,
        batch_rows,
    )


def connect(url: str, timeout_s: float):
    """A ``redis.Redis`` client for ``url`` that fails within ``timeout_s`` instead of hanging.

    One immediate retry: a pooled connection that Redis closed (a restart) is reopened once,
    at once; a Redis that is down still fails within the timeout (redis-py's default would back
    off and retry for seconds).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )


def materialize_views(
    store: FeatureStore,
    views: list[FeatureView],
    start: datetime,
    end: datetime,
    url: str,
    *,
    batch_rows: int,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Load each view's newest row per entity in ``[start, end]`` into Redis, then record the
    interval in the registry as ``FeatureStore.materialize`` does; the rows written per view.

    Raises:
        FeatureStoreError: a view this writer cannot encode, or Redis failed.
    """
    from tasks.core.probe import describe

    if store.config.entity_key_serialization_version != KEY_SERIALIZATION_VERSION:
        raise FeatureStoreError(
            "the bulk Redis writer writes entity keys of serialization version "
            f"{KEY_SERIALIZATION_VERSION}; feature_store.yaml says "
            f"{store.config.entity_key_serialization_version}"
        )
    if getattr(store.config.registry, "enable_online_feature_view_versioning", False):
        raise FeatureStoreError("the bulk Redis writer does not write versioned feature views")
    where = describe(url).removeprefix("redis at ")
    client = connect(url, timeout_s)
    written = {}
    try:
        for view in views:
            layout = ViewLayout.of(view)
            batches = latest_rows(store, view, start, end, batch_rows)
            written[view.name] = write_rows(client, layout, batches, store.project, where)
            store.registry.apply_materialization(view, store.project, start, end)
            logger.info("materialized %s rows of %s into redis at %s", written[view.name],
                        view.name, where)  # fmt: skip
    finally:
        client.close()
    return written
