"""What a prediction-log file holds: its columns, roles and tiers, and the checks every batch passes.

:data:`PREDICTION_LOG_BASE_SCHEMA` is the shape of every file (DESIGN §5), with ``features`` a
struct whose fields depend on the feature service; :func:`prediction_log_schema` gives a file's
own schema. :func:`checked_columns` refuses a batch with a missing, extra, duplicate or mistyped
column, and returns the rows that break a rule (nulls, probabilities, tiers) for its caller to
refuse, naming the column, the rule and the count; :func:`check_identity` checks the date, model name,
version and feature service a file is written for.
"""

from __future__ import annotations

import re
from datetime import date, datetime

import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.errors import ChurnError, ContractViolation, DataContractError

CHAMPION, SHADOW = "champion", "shadow"
ROLES = (CHAMPION, SHADOW)
ONLINE = "online"
RISK_TIERS = ("low", "medium", "high")

ROW_GROUP_ROWS = 1_048_576

PREDICTION_LOG_BASE_SCHEMA = pa.schema(
    [
        pa.field("prediction_id", pa.string(), nullable=False),
        pa.field("score_date", pa.date32(), nullable=False),
        pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("subscriber_id", pa.int64(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int32(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("probability", pa.float64(), nullable=False),
        pa.field("risk_tier", pa.string(), nullable=False),
        # Parquet names a list's item "element"; naming it so here keeps a read-back schema equal.
        pa.field("reasons", pa.list_(pa.field("element", pa.string())), nullable=True),
        # A placeholder: a file's schema has the struct of its feature service here.
        pa.field("features", pa.struct([]), nullable=False),
        pa.field("feature_service", pa.string(), nullable=False),
        pa.field("flow_run_id", pa.string(), nullable=True),
    ]
)

EMPTY_FILE_SCHEMA = pa.schema(
    [
        pa.field("features", pa.null(), nullable=True) if f.name == "features" else f
        for f in PREDICTION_LOG_BASE_SCHEMA
    ]
)


def prediction_log_schema(features_type: pa.StructType) -> pa.Schema:
    """The schema of one log file whose ``features`` are of ``features_type``.

    Every field of the struct is made nullable (a feature value may be missing, and two batches
    then differ only in what matters: field names, order and types).

    Raises:
        PredictionLogError: ``features_type`` is not a struct, or has no field.
    """
    if not pa.types.is_struct(features_type) or features_type.num_fields == 0:
        raise PredictionLogError(
            f"features must be a struct of at least one field, not {features_type}"
        )
    return PREDICTION_LOG_BASE_SCHEMA.set(
        PREDICTION_LOG_BASE_SCHEMA.get_field_index("features"),
        pa.field("features", _nullable_fields(features_type), nullable=False),
    )


def _nullable_fields(struct: pa.StructType) -> pa.StructType:
    """``struct`` with every field nullable: a frame's columns may or may not say not-null."""
    return pa.struct([struct.field(i).with_nullable(True) for i in range(struct.num_fields)])


BATCH_COLUMNS = ("subscriber_id", "probability", "risk_tier", "reasons", "features")

ONLINE_BATCH_COLUMNS = (
    "prediction_id",
    "scored_at",
    "subscriber_id",
    "probability",
    "risk_tier",
    "reasons",
    "features",
)

REQUIRED = ("subscriber_id", "probability", "risk_tier", "features")
ONLINE_REQUIRED = ("prediction_id", "scored_at", *REQUIRED)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PredictionLogError(ChurnError):
    """The prediction log was misused, or its ledger cannot be read or written."""


class PredictionBatchError(DataContractError, PredictionLogError):
    """A batch broke the log's contract; nothing of that file is published."""


def check_identity(
    score_date: date, model_name: str, model_version: int, feature_service: str
) -> None:
    """What names a file of the log must be valid: a date, a safe name, a positive version."""
    if isinstance(score_date, datetime) or not isinstance(score_date, date):
        raise PredictionLogError(f"score_date must be a date, not {score_date!r}")
    if not _NAME_RE.match(model_name):
        raise PredictionLogError(
            f"model name {model_name!r} cannot name a log file (letters, digits, _ . - only)"
        )
    if isinstance(model_version, bool) or not isinstance(model_version, int) or model_version < 1:
        raise PredictionLogError(f"model_version must be a positive int, not {model_version!r}")
    if not feature_service:
        raise PredictionLogError("feature_service must name the feature service used")


def checked_columns(
    batch: pa.Table,
    expected: tuple[str, ...],
    required: tuple[str, ...],
    table: str,
    features_type: pa.StructType | None = None,
) -> tuple[dict[str, pa.ChunkedArray], list[ContractViolation]]:
    """The batch's columns cast to the log's types, and the broken row rules found so far.

    ``features`` must be a struct of at least one field, and of ``features_type`` where given
    (the file's struct, up to the nullability of its fields); it is never cast to another.

    Raises at once (PredictionBatchError) on missing, extra or duplicated columns and on columns
    of the wrong type; returns violations of the row rules (nulls in ``required``, probability
    outside [0, 1], unknown tiers) for the caller to add its own and raise them together.
    """
    where = "batch"
    rows = batch.num_rows
    present = set(batch.column_names)
    violations = [
        ContractViolation(where, name, "column present", rows, "missing from the batch")
        for name in expected
        if name not in present
    ]
    violations += [
        ContractViolation(
            where,
            name,
            "no extra column",
            rows,
            f"a batch has exactly {', '.join(expected)}",
        )
        for name in batch.column_names
        if name not in expected
    ]
    if len(batch.column_names) != len(present):
        violations.append(
            ContractViolation(where, "(columns)", "unique names", rows, str(batch.column_names))
        )
    if violations:
        raise PredictionBatchError(table, violations)

    columns: dict[str, pa.ChunkedArray] = {}
    for name in expected:
        column = batch.column(name)
        if name == "features":
            checked, violation = _checked_features(column, features_type, where, rows)
            if violation is not None:
                violations.append(violation)
            else:
                columns[name] = checked
            continue
        target = PREDICTION_LOG_BASE_SCHEMA.field(name).type
        try:
            columns[name] = column if column.type == target else column.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            violations.append(
                ContractViolation(where, name, f"type {target}", rows, f"{column.type}: {exc}")
            )
    if violations:
        raise PredictionBatchError(table, violations)

    for name in required:
        nulls = columns[name].null_count
        if nulls:
            violations.append(ContractViolation(where, name, "not null", nulls))
    probability = columns["probability"]
    outside = pc.sum(
        pc.or_kleene(
            pc.or_kleene(pc.less(probability, 0.0), pc.greater(probability, 1.0)),
            pc.is_nan(probability),
        ).cast(pa.int64())
    ).as_py()
    if outside:
        violations.append(ContractViolation(where, "probability", "in [0, 1]", outside))
    tiers = columns["risk_tier"]
    unknown = pc.filter(tiers, pc.invert(pc.is_in(tiers, pa.array(RISK_TIERS))))
    unknown = pc.drop_null(unknown)
    if len(unknown):
        examples = ", ".join(repr(v) for v in pc.unique(unknown)[:3].to_pylist())
        violations.append(
            ContractViolation(
                where,
                "risk_tier",
                f"one of {', '.join(RISK_TIERS)}",
                len(unknown),
                f"e.g. {examples}",
            )
        )
    return columns, violations


def _checked_features(
    column: pa.ChunkedArray, features_type: pa.StructType | None, where: str, rows: int
) -> tuple[pa.ChunkedArray, ContractViolation | None]:
    """``features`` with nullable fields, or the rule it breaks: a struct, the file's struct."""
    if not pa.types.is_struct(column.type) or column.type.num_fields == 0:
        rule = "a struct of the feature values (at least one field)"
        return column, ContractViolation(where, "features", rule, rows, f"got {column.type}")
    target = _nullable_fields(column.type)
    if features_type is not None and target != features_type:
        rule = "the same struct in every batch of a file"
        return column, ContractViolation(
            where, "features", rule, rows, _struct_change(features_type, target)
        )
    return (column if column.type == target else column.cast(target)), None


def _struct_change(before: pa.StructType, after: pa.StructType) -> str:
    """What differs between two structs, for a person: fields gone, added, retyped, reordered."""
    old = {before.field(i).name: before.field(i).type for i in range(before.num_fields)}
    new = {after.field(i).name: after.field(i).type for i in range(after.num_fields)}
    changes = [f"{name} missing" for name in old if name not in new]
    changes += [f"{name} added" for name in new if name not in old]
    changes += [
        f"{name} {old[name]} -> {new[name]}"
        for name in old
        if name in new and old[name] != new[name]
    ]
    if not changes:
        changes.append(f"fields reordered: {', '.join(new)}")
    shown = "; ".join(changes[:5])
    more = f"; {len(changes) - 5} more" if len(changes) > 5 else ""
    return f"{shown}{more} (the file's struct has {before.num_fields} fields)"


_UNIQUE_PER_ROW = ("prediction_id", "subscriber_id")


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The leaf columns worth Parquet's dictionary encoding: all but floats and the per-row ids.

    Probabilities and float features are nearly all distinct, prediction and subscriber ids all
    are: trying a dictionary for them costs time and then bytes (measured on a 500k-row nightly
    batch: 0.49 s and 46 MiB with every column dictionary-encoded, 0.26 s and 37 MiB without).
    """
    leaves: list[str] = []

    def walk(column: pa.Field, path: str) -> None:
        if pa.types.is_struct(column.type):
            for child in column.type:
                walk(child, f"{path}.{child.name}")
        elif not pa.types.is_floating(column.type) and path not in _UNIQUE_PER_ROW:
            leaves.append(path)

    for column in schema:
        walk(column, column.name)
    return leaves
