"""The MLflow side of retraining: candidate runs, registered versions, aliases and their history.

Plain functions over ``MlflowClient`` (DESIGN §5, §6). The store is a SQLite database under
``$CHURN_HOME/mlflow`` unless ``CHURN_MLFLOW_TRACKING_URI`` names another; artifacts of the
``telecom_churn`` experiment live under ``$CHURN_HOME/mlflow/artifacts``.

* Every candidate is one run (:func:`log_candidate`) with its params, metrics, gate results
  (``gate.<name>`` tags), ``decision`` tag, the LightGBM model and ``model_spec.json``.
* Only a run whose ``decision`` is ``passed`` becomes a version (:func:`register_version`), with
  the lineage tags and alias ``challenger``. :func:`promote` moves ``champion``;
  :func:`rollback` moves it back to the champion before the current one.
* MLflow keeps no alias history (mlflow#2169): every alias move is appended to
  ``$CHURN_HOME/mlflow/promotions.jsonl`` (:func:`promotion_history`). An alias moves first and
  the line is appended after; if the append fails the alias is put back, so a failed move leaves
  both exactly as they were. Alias moves are serialised by a file lock beside the history. A
  process killed between the two steps can still leave a move without its line.

Every function that talks to MLflow points MLflow's process-wide tracking and registry URI at
this store first: ``log_model`` and the registry's ``models:/<model_id>`` lookup only use the
global one. mlflow is imported inside the functions (after telemetry is switched off), so
importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.core.errors import ChurnError
from tasks.core.files import file_lock
from tasks.core.settings import Settings
from tasks.core.telemetry import disable_telemetry

if TYPE_CHECKING:
    import lightgbm as lgb
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)

EXPERIMENT = "telecom_churn"
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
MODEL_SPEC_ARTIFACT = "model_spec.json"
DECISION_TAG = "decision"
FAILED_GATES_TAG = "decision.failed_gates"
MODEL_ID_TAG = "mlflow_model_id"
GATE_PREFIX = "gate."
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
REQUIREMENT_PACKAGES = ("lightgbm", "pandas", "numpy", "scikit-learn")
"""Pinned as the model's pip requirements (MLflow adds itself); never inferred."""

_RESERVED_TAGS = {DECISION_TAG, FAILED_GATES_TAG, MODEL_ID_TAG}
_MAX_TAG_VALUE = 8000  # MLflow run tag limit
_MAX_PARAM_VALUE = 6000  # MLflow param limit


class RegistryError(ChurnError):
    """The MLflow store is unreachable or unusable, or an alias move was refused."""


class ModelNotFound(RegistryError):
    """No registered version for that alias or number."""


class ModelLoadError(RegistryError):
    """A registered version exists but its model or model spec cannot be loaded."""


@dataclass(frozen=True)
class Promotion:
    """One alias move: ``alias`` went from ``from_version`` to ``to_version`` (``None``: unset).

    ``action`` is ``register`` (new challenger), ``promote``, ``approve`` (promoted by a person's
    approval), ``reject`` (a person refused the challenger) or ``rollback``.
    """

    at: datetime
    model: str
    alias: str
    from_version: int | None
    to_version: int | None
    by: str
    reason: str
    run_id: str | None
    action: str

    def to_json(self) -> str:
        record = asdict(self)
        record["at"] = self.at.isoformat()
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Promotion:
        record = json.loads(line)
        record["at"] = datetime.fromisoformat(record["at"])
        return cls(**record)


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered version as people see it in ``churn model list``.

    ``metrics`` are its run's (``roc_auc``, ``pr_auc``, ``calibration_error`` …), ``gates`` the
    run's gate results without the ``gate.`` prefix, ``tags`` the version's lineage tags.
    """

    version: int
    aliases: tuple[str, ...]
    run_id: str | None
    created: datetime
    status: str
    decision: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    gates: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


# --- store ---------------------------------------------------------------------------------


def tracking_uri(settings: Settings) -> str:
    """``settings.mlflow_tracking_uri``, or the SQLite store ``$CHURN_HOME/mlflow/mlflow.db``."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}"


def artifact_root(settings: Settings) -> Path:
    """Where the ``telecom_churn`` experiment keeps artifacts when the store is local."""
    return settings.mlflow_dir / "artifacts"


def history_path(settings: Settings) -> Path:
    """The append-only promotion history of the configured MLflow store, one JSON object per line.

    ``$CHURN_HOME/mlflow/promotions.jsonl`` for the default store; another tracking URI (a
    server, another SQLite file) keeps its own file beside it, named by a hash of the URI, so
    two registries sharing a data root never mix their alias moves.
    """
    if not settings.mlflow_tracking_uri or settings.mlflow_tracking_uri == tracking_uri(
        settings.model_copy(update={"mlflow_tracking_uri": None})
    ):
        return settings.mlflow_dir / "promotions.jsonl"
    digest = hashlib.sha256(settings.mlflow_tracking_uri.encode()).hexdigest()[:12]
    return settings.mlflow_dir / f"promotions-{digest}.jsonl"


def init_store(settings: Settings) -> str:
    """Create the store, run MLflow's migrations and create the experiment, once; return the URI.

    Parallel first-time migrations of one SQLite file collide, so the first caller does them
    under an exclusive lock (``$CHURN_HOME/mlflow/.init.lock``) and leaves a marker; later calls,
    from any thread or process, see the marker and return at once. Idempotent.

    Raises:
        RegistryError: the store cannot be reached, created or migrated.
    """
    uri = tracking_uri(settings)
    try:
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(
            f"cannot create the MLflow directory {settings.mlflow_dir}: {exc}"
        ) from exc
    if _initialised(settings, uri):
        return uri
    with file_lock(settings.mlflow_dir / ".init.lock"):
        if _initialised(settings, uri):
            return uri
        try:
            # The first touch of each store builds the tables and runs every migration.
            client = _client(uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
            experiment_id = _ensure_experiment(client, settings, uri)
        except _store_errors() as exc:
            raise RegistryError(f"MLflow store {uri} is unreachable or unusable: {exc}") from exc
        marker = {"uri": uri, "experiment_id": experiment_id, "at": _now().isoformat()}
        _write_atomic(_marker_path(settings), json.dumps(marker))
        logger.info("initialised MLflow store %s (experiment %s)", uri, experiment_id)
    return uri


def _initialised(settings: Settings, uri: str) -> bool:
    try:
        marker = json.loads(_marker_path(settings).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("uri") != uri:
        return False
    # A deleted database with its marker left behind must be initialised again.
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def _marker_path(settings: Settings) -> Path:
    return settings.mlflow_dir / ".initialized.json"


def _ensure_experiment(client: MlflowClient, settings: Settings, uri: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        # A tracking server keeps its own artifact root; with a database store they stay under
        # CHURN_HOME (MLflow's default would be ./mlruns in whatever directory we run from).
        location = None if _is_server(uri) else artifact_root(settings).as_uri()
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def _connect(settings: Settings) -> MlflowClient:
    """A client on the initialised store; MLflow's process-wide URIs point at it too.

    Raises:
        RegistryError: the store is unreachable or unusable.
    """
    uri = init_store(settings)
    try:
        return _client(uri)
    except _store_errors() as exc:
        raise RegistryError(f"MLflow store {uri} is unreachable or unusable: {exc}") from exc


def _client(uri: str) -> MlflowClient:
    disable_telemetry()
    # Progress bars of artifact downloads are noise in flow logs; an operator may turn them on.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    with warnings.catch_warnings():
        # MLflow's SQL store trips a SQLAlchemy deprecation when it is first imported; not ours to fix.
        warnings.filterwarnings("ignore", message=r".*``noload`` loader strategy is deprecated")
        import mlflow.store.tracking.sqlalchemy_store

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a broken, missing or unreachable store raises through MLflow."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    return (MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError)


def _is_not_found(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


# --- candidates ----------------------------------------------------------------------------


def log_candidate(
    settings: Settings,
    *,
    booster: lgb.Booster,
    model_spec: dict[str, Any],
    input_example: pd.DataFrame,
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    gate_results: Mapping[str, bool | str | Mapping[str, Any]],
    tags: Mapping[str, Any],
    artifacts: Mapping[str, Path] | None,
    run_name: str,
) -> str:
    """Log one candidate as a run of the ``telecom_churn`` experiment and return its run id.

    The run holds ``params``, ``metrics`` (``None`` values skipped), ``tags``, the gate results
    as ``gate.<name>`` = ``passed|failed|skipped`` (plus ``gate.<name>.<key>`` for a mapping's
    other entries: value, threshold, detail), ``decision`` = ``passed`` when no gate failed else
    ``failed``, ``decision.failed_gates``; the booster as the ``model`` artifact with a signature
    inferred from ``input_example`` and its predictions, the example itself and pinned pip
    requirements; ``model_spec.json``; and each of ``artifacts``, logged at its key (a relative
    path in the run, e.g. ``model_card.md`` or ``plots/roc.png``; a directory is logged whole).

    Args:
        gate_results: per gate, a bool (passed), ``"passed"|"failed"|"skipped"``, or a mapping
            with a bool ``passed`` entry (e.g. ``GateResult.to_dict()``).
        input_example: a few rows of model inputs, dtypes as the booster was trained on.

    Raises:
        ValueError: no gate results, a gate result of unknown shape, a reserved tag in ``tags``,
            a ``model_spec`` that is not JSON, a missing artifact file or an artifact key
            outside the run. Nothing is logged then.
        RegistryError: the store failed while logging (the run is then marked FAILED).
    """
    gate_tags, failed = flatten_gates(gate_results)
    reserved = sorted(k for k in tags if k in _RESERVED_TAGS or k.startswith(GATE_PREFIX))
    if reserved:
        raise ValueError(f"tags {reserved} are set by log_candidate itself; pass gate_results")
    extra = _check_artifacts(artifacts or {})
    try:
        spec_text = json.dumps(model_spec, indent=2, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"model_spec must be JSON-serialisable: {exc}") from exc
    run_tags = {str(k): _fit(str(v), _MAX_TAG_VALUE) for k, v in tags.items()}
    run_tags |= gate_tags
    run_tags[DECISION_TAG] = FAILED if failed else PASSED
    run_tags[FAILED_GATES_TAG] = ",".join(failed) or "none"

    client = _connect(settings)
    import mlflow
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values under pyfunc schema
        # enforcement; scoring uses the native booster and model_spec.json, not pyfunc.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(input_example, booster.predict(input_example))
    try:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None or experiment.lifecycle_stage != "active":
            raise RegistryError(
                f"experiment {EXPERIMENT!r} is missing or deleted in {client.tracking_uri}; "
                f"remove {_marker_path(settings)} to let init_store create it again"
            )
        with mlflow.start_run(
            experiment_id=experiment.experiment_id, run_name=run_name, tags=run_tags
        ) as run:
            mlflow.log_params({str(k): _fit(str(v), _MAX_PARAM_VALUE) for k, v in params.items()})
            mlflow.log_metrics({str(k): float(v) for k, v in metrics.items() if v is not None})
            mlflow.log_text(spec_text, MODEL_SPEC_ARTIFACT)
            info = mlflow.lightgbm.log_model(
                booster,
                name=MODEL_ARTIFACT,
                signature=signature,
                input_example=input_example,
                pip_requirements=pip_requirements(),
                # The JSON round trip of the example loses pandas categories, so this check
                # would only warn; scoring rebuilds the categories from model_spec.json.
                validate_serving_input=False,
            )
            mlflow.set_tag(MODEL_ID_TAG, info.model_id)
            if extra:
                _log_extra_artifacts(mlflow, extra)
    except _store_errors() as exc:
        raise RegistryError(
            f"logging candidate {run_name!r} to {client.tracking_uri} failed: {exc}"
        ) from exc
    logger.info(
        "logged candidate run %s (%s, decision %s)",
        run.info.run_id,
        run_name,
        run_tags[DECISION_TAG],
    )
    return run.info.run_id


def flatten_gates(
    gate_results: Mapping[str, bool | str | Mapping[str, Any]],
) -> tuple[dict[str, str], list[str]]:
    """``gate.<name>`` tags (and ``gate.<name>.<key>`` details) and the names of failed gates."""
    if not gate_results:
        raise ValueError("no gate results: a candidate is judged by its gates before logging")
    tags: dict[str, str] = {}
    failed: list[str] = []
    for name, result in gate_results.items():
        details: Mapping[str, Any] = {}
        if isinstance(result, bool):
            status = PASSED if result else FAILED
        elif isinstance(result, str) and result in (PASSED, FAILED, SKIPPED):
            status = result
        elif isinstance(result, Mapping) and isinstance(result.get("passed"), bool):
            status = PASSED if result["passed"] else FAILED
            details = {
                k: v for k, v in result.items() if k not in ("passed", "name") and v is not None
            }
        else:
            raise ValueError(
                f"gate {name!r}: expected a bool, 'passed'/'failed'/'skipped' or a mapping with "
                f"a bool 'passed', got {result!r}"
            )
        tags[f"{GATE_PREFIX}{name}"] = status
        tags |= {
            f"{GATE_PREFIX}{name}.{k}": _fit(str(v), _MAX_TAG_VALUE) for k, v in details.items()
        }
        if status == FAILED:
            failed.append(name)
    return tags, failed


def pip_requirements() -> list[str]:
    """The model's pip requirements, pinned to what is installed (never inferred by MLflow)."""
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENT_PACKAGES]


def _check_artifacts(artifacts: Mapping[str, Path]) -> dict[str, Path]:
    checked = {}
    for key, source in artifacts.items():
        dest = PurePosixPath(key)
        if dest.is_absolute() or ".." in dest.parts or not dest.parts:
            raise ValueError(f"artifact key {key!r} must be a relative path inside the run")
        source = Path(source)
        if not source.exists():
            raise ValueError(f"artifact {key!r}: {source} does not exist")
        checked[str(dest)] = source
    return checked


def _log_extra_artifacts(mlflow: Any, artifacts: Mapping[str, Path]) -> None:
    """Stage every artifact under its run path in a temp dir, then log the tree in one call."""
    with tempfile.TemporaryDirectory(prefix="churn-artifacts-") as tmp:
        for key, source in artifacts.items():
            target = Path(tmp, key)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        mlflow.log_artifacts(tmp)


# --- versions and aliases ------------------------------------------------------------------


def register_version(settings: Settings, run_id: str, lineage_tags: Mapping[str, str]) -> int:
    """Register the run's ``model`` as a new version with alias ``challenger``; return its number.

    Call it only for a run whose gates all passed: a run whose ``decision`` tag is not
    ``passed`` is refused here too, so a refused candidate stays a run, never a version. The
    version carries ``lineage_tags`` plus the run's ``gate.*`` and ``decision`` tags. The
    ``challenger`` move is appended to the promotion history. If anything fails after the
    version was created, the alias goes back to where it was and the version is deleted.

    Raises:
        RegistryError: the run is unknown, was refused by its gates, has no model, or the store
            failed.
    """
    client = _connect(settings)
    name = settings.model_name
    try:
        run = client.get_run(run_id)
    except _store_errors() as exc:
        raise RegistryError(f"cannot register run {run_id}: {exc}") from exc
    run_tags = run.data.tags
    if run.info.status != "FINISHED":
        raise RegistryError(f"run {run_id} is {run.info.status}, not FINISHED: not registered")
    if run_tags.get(DECISION_TAG) != PASSED:
        raise RegistryError(
            f"run {run_id} has decision {run_tags.get(DECISION_TAG)!r} (failed gates: "
            f"{run_tags.get(FAILED_GATES_TAG, 'unknown')}): only a candidate that passed every "
            "gate is registered"
        )
    model_id = run_tags.get(MODEL_ID_TAG)
    if not model_id:
        raise RegistryError(f"run {run_id} has no logged model (tag {MODEL_ID_TAG} missing)")
    version_tags = {str(k): _fit(str(v), _MAX_TAG_VALUE) for k, v in lineage_tags.items()}
    version_tags |= {
        k: v
        for k, v in run_tags.items()
        if k.startswith(GATE_PREFIX) or k in (DECISION_TAG, FAILED_GATES_TAG)
    }
    with _history_lock(settings):
        try:
            _ensure_registered_model(client, name)
            previous = _alias_version(client, name, CHALLENGER)
            # The version from the run's logged model, as mlflow.register_model("runs:/<run>/model").
            created = client.create_model_version(
                name,
                source=f"models:/{model_id}",
                run_id=run_id,
                tags=version_tags,
                model_id=model_id,
            )
        except _store_errors() as exc:
            raise RegistryError(f"registering run {run_id} as {name} failed: {exc}") from exc
        version = int(created.version)
        move = Promotion(
            at=_now(),
            model=name,
            alias=CHALLENGER,
            from_version=previous,
            to_version=version,
            by="register_version",
            reason=str(lineage_tags.get("reason", "")),
            run_id=run_id,
            action="register",
        )
        try:
            _move_aliases(client, settings, [move])
        except RegistryError:
            _delete_version(client, name, version)
            raise
    logger.info("registered run %s as %s version %s (%s)", run_id, name, version, CHALLENGER)
    return version


def promote(
    settings: Settings, version: int, *, by: str, reason: str, action: str = "promote"
) -> Promotion:
    """Point ``champion`` at ``version`` (dropping ``challenger`` if it pointed there); record it.

    ``action`` is recorded in the history: ``promote``, or ``approve`` when a person approved a
    waiting challenger.

    Raises:
        ModelNotFound: no such version.
        RegistryError: ``version`` is already champion, ``by``/``reason`` is empty, or the store
            or the history failed (alias and history are then as they were).
    """
    _require_who_and_why(by, reason)
    version = int(version)
    client = _connect(settings)
    name = settings.model_name
    with _history_lock(settings):
        target = _get_version(client, name, version)
        current = _alias_version(client, name, CHAMPION)
        if current == version:
            raise RegistryError(f"{name} version {version} is already {CHAMPION}")
        moves = _champion_moves(client, name, target, current, by, reason, action)
        _move_aliases(client, settings, moves)
    logger.info("promoted %s version %s to %s (was %s)", name, version, CHAMPION, current)
    return moves[0]


def reject_challenger(settings: Settings, version: int, *, by: str, reason: str) -> Promotion:
    """Take ``challenger`` off ``version`` after a person said no; the version stays, unaliased.

    Raises:
        RegistryError: ``version`` is not the current challenger, ``by``/``reason`` is empty, or
            the store or the history failed (alias and history are then as they were).
    """
    _require_who_and_why(by, reason)
    version = int(version)
    client = _connect(settings)
    name = settings.model_name
    with _history_lock(settings):
        target = _get_version(client, name, version)
        current = _alias_version(client, name, CHALLENGER)
        if current != version:
            raise RegistryError(
                f"{name} version {version} is not the {CHALLENGER} "
                f"(the {CHALLENGER} is {current if current is not None else 'unset'})"
            )
        move = Promotion(
            _now(), name, CHALLENGER, version, None, by, reason, target.run_id, "reject"
        )
        _move_aliases(client, settings, [move])
    logger.info("rejected %s version %s: %s unset", name, version, CHALLENGER)
    return move


def tag_version(settings: Settings, version: int, tags: Mapping[str, str]) -> None:
    """Set tags on a registered version (e.g. who approved it and why).

    Raises:
        ModelNotFound: no such version.
        RegistryError: the store failed.
    """
    client = _connect(settings)
    name = settings.model_name
    _get_version(client, name, version)
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, _fit(str(value), _MAX_TAG_VALUE))
    except _store_errors() as exc:
        raise RegistryError(f"cannot tag {name} version {version}: {exc}") from exc


def rollback(settings: Settings, *, by: str, reason: str) -> Promotion:
    """Give ``champion`` back to the champion before the current one, by the promotion history.

    Promotions stack and rollbacks unstack: after promoting 1, 2, 3, rollbacks go to 2, then 1,
    then fail.

    Raises:
        RegistryError: no champion, no earlier champion, the alias was moved outside churn-ops
            (it disagrees with the history), or the store or the history failed.
    """
    _require_who_and_why(by, reason)
    client = _connect(settings)
    name = settings.model_name
    with _history_lock(settings):
        current = _alias_version(client, name, CHAMPION)
        if current is None:
            raise RegistryError(f"{name} has no {CHAMPION}: nothing to roll back")
        stack = champion_stack(promotion_history(settings), name)
        if not stack or stack[-1] != current:
            raise RegistryError(
                f"{name}@{CHAMPION} is version {current} but the promotion history says "
                f"{stack[-1] if stack else 'none'}: it was moved outside churn-ops; "
                "promote a version explicitly instead"
            )
        if len(stack) < 2:
            raise RegistryError(
                f"{name} version {current} is the first {CHAMPION} on record: "
                "there is no previous champion to roll back to"
            )
        target = _get_version(client, name, stack[-2])
        moves = _champion_moves(client, name, target, current, by, reason, "rollback")
        _move_aliases(client, settings, moves)
    logger.info("rolled %s %s back from version %s to %s", name, CHAMPION, current, stack[-2])
    return moves[0]


def champion_stack(history: list[Promotion], model: str) -> list[int]:
    """Champion versions still on the stack: each promotion pushes, each rollback pops."""
    stack: list[int] = []
    for move in history:
        if move.model != model or move.alias != CHAMPION or move.to_version is None:
            continue
        if move.action == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(move.to_version)
    return stack


def _champion_moves(
    client: MlflowClient,
    name: str,
    target: ModelVersion,
    current: int | None,
    by: str,
    reason: str,
    action: str,
) -> list[Promotion]:
    version = int(target.version)
    at = _now()
    moves = [Promotion(at, name, CHAMPION, current, version, by, reason, target.run_id, action)]
    if _alias_version(client, name, CHALLENGER) == version:
        moves.append(
            Promotion(at, name, CHALLENGER, version, None, by, reason, target.run_id, action)
        )
    return moves


def _move_aliases(client: MlflowClient, settings: Settings, moves: list[Promotion]) -> None:
    """Apply alias moves, then append them to the history; on any failure undo the moves."""
    applied: list[Promotion] = []
    try:
        for move in moves:
            _set_alias(client, move.model, move.alias, move.to_version)
            applied.append(move)
        _append_history(settings, moves)
    except _store_errors() as exc:
        for move in reversed(applied):
            try:
                _set_alias(client, move.model, move.alias, move.from_version)
            except _store_errors() as undo_exc:
                logger.error(
                    "could not restore %s@%s to version %s: %s",
                    move.model,
                    move.alias,
                    move.from_version,
                    undo_exc,
                )
        what = ", ".join(f"{m.alias} {m.from_version}->{m.to_version}" for m in moves)
        raise RegistryError(
            f"moving {what} on {moves[0].model} failed, nothing changed: {exc}"
        ) from exc


def _set_alias(client: MlflowClient, name: str, alias: str, version: int | None) -> None:
    if version is None:
        try:
            client.delete_registered_model_alias(name, alias)
        except _store_errors() as exc:
            if not _is_not_found(exc):
                raise
    else:
        client.set_registered_model_alias(name, alias, str(version))


def _alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    """The version ``alias`` points at; ``None`` when unset or the model is not registered yet."""
    return _alias_map(client, name).get(alias)


def _alias_map(client: MlflowClient, name: str) -> dict[str, int]:
    """Alias → version of the registered model; empty when it is not registered yet."""
    # From the registered model: a missing alias through get_model_version_by_alias is an
    # INVALID_PARAMETER_VALUE, indistinguishable from a real error, and search_model_versions
    # leaves ModelVersion.aliases empty on the SQL store.
    try:
        aliases = client.get_registered_model(name).aliases
    except _store_errors() as exc:
        if _is_not_found(exc):
            return {}
        raise RegistryError(f"cannot read the aliases of {name}: {exc}") from exc
    return {alias: int(version) for alias, version in aliases.items()}


def _get_version(client: MlflowClient, name: str, version: int | str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except _store_errors() as exc:
        if _is_not_found(exc):
            raise ModelNotFound(f"{name} has no version {version}") from exc
        raise RegistryError(f"cannot read {name} version {version}: {exc}") from exc


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except _store_errors() as exc:
        if not _is_not_found(exc):
            raise
        client.create_registered_model(name, description="Telecom churn: P(churn within 30 days).")


def _delete_version(client: MlflowClient, name: str, version: int) -> None:
    """Best effort: a version whose registration failed must not linger as a usable version."""
    try:
        client.delete_model_version(name, str(version))
    except _store_errors() as exc:
        logger.error("could not delete half-registered %s version %s: %s", name, version, exc)


def _require_who_and_why(by: str, reason: str) -> None:
    if not by.strip() or not reason.strip():
        raise RegistryError("an alias move needs who (by) and why (reason), both non-empty")


# --- reading -------------------------------------------------------------------------------


def current_alias(settings: Settings, alias: str) -> ModelVersionInfo | None:
    """The version ``alias`` points at, or ``None`` (also when no model is registered yet)."""
    client = _connect(settings)
    version = _alias_version(client, settings.model_name, alias)
    if version is None:
        return None
    try:
        found = _get_version(client, settings.model_name, version)
        return _info(client, found, {alias: version})
    except _store_errors() as exc:
        raise RegistryError(f"cannot read {settings.model_name}@{alias}: {exc}") from exc


def list_versions(settings: Settings) -> list[ModelVersionInfo]:
    """Every live version of the model, oldest first, with aliases, metrics and gate results."""
    client = _connect(settings)
    name = settings.model_name
    try:
        aliases = _alias_map(client, name)
        found = client.search_model_versions(f"name = '{name}'")
        return sorted((_info(client, mv, aliases) for mv in found), key=lambda info: info.version)
    except _store_errors() as exc:
        raise RegistryError(f"cannot list versions of {name}: {exc}") from exc


def load_model(
    settings: Settings, alias_or_version: str | int
) -> tuple[lgb.Booster, dict[str, Any], int]:
    """The native LightGBM booster, its model spec and version number, by alias or number.

    Raises:
        ModelNotFound: no such alias or version.
        ModelLoadError: the model or its ``model_spec.json`` cannot be downloaded or read.
    """
    import lightgbm as lgb

    client = _connect(settings)
    import mlflow.artifacts
    import mlflow.lightgbm

    name = settings.model_name
    uri = client.tracking_uri
    if isinstance(alias_or_version, int) or str(alias_or_version).isdigit():
        found = _get_version(client, name, alias_or_version)
    else:
        aliased = _alias_version(client, name, str(alias_or_version))
        if aliased is None:
            raise ModelNotFound(f"{name} has no version with alias {alias_or_version!r}")
        found = _get_version(client, name, aliased)
    version = int(found.version)
    with tempfile.TemporaryDirectory(prefix="churn-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}",
                dst_path=str(Path(tmp, "model")),
                tracking_uri=uri,
                registry_uri=uri,
            )
            booster = mlflow.lightgbm.load_model(local)
            spec_file = mlflow.artifacts.download_artifacts(
                run_id=found.run_id,
                artifact_path=MODEL_SPEC_ARTIFACT,
                dst_path=str(Path(tmp, "spec")),
                tracking_uri=uri,
            )
            spec = json.loads(Path(spec_file).read_text())
        except (*_store_errors(), lgb.basic.LightGBMError, ValueError) as exc:
            raise ModelLoadError(
                f"{name} version {version} (run {found.run_id}, {found.source}) failed to load: {exc}"
            ) from exc
    if not isinstance(booster, lgb.Booster):
        raise ModelLoadError(
            f"{name} version {version} is a {type(booster).__name__}, not a Booster"
        )
    return booster, spec, version


def _info(client: MlflowClient, mv: ModelVersion, aliases: Mapping[str, int]) -> ModelVersionInfo:
    """``mv`` with its run's metrics and gate results; ``aliases`` is the model's alias map."""
    metrics: dict[str, float] = {}
    run_tags: dict[str, str] = {}
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            metrics, run_tags = dict(run.data.metrics), dict(run.data.tags)
        except _store_errors() as exc:
            if not _is_not_found(exc):
                raise
    tags = dict(mv.tags or {})
    gates = {
        k.removeprefix(GATE_PREFIX): v
        for k, v in (run_tags or tags).items()
        if k.startswith(GATE_PREFIX) and "." not in k.removeprefix(GATE_PREFIX)
    }
    return ModelVersionInfo(
        version=int(mv.version),
        aliases=tuple(sorted(a for a, v in aliases.items() if v == int(mv.version))),
        run_id=mv.run_id,
        created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
        status=str(mv.status),
        decision=run_tags.get(DECISION_TAG, tags.get(DECISION_TAG)),
        metrics=metrics,
        gates=gates,
        tags=tags,
    )


# --- promotion history ---------------------------------------------------------------------


def promotion_history(settings: Settings, *, all_models: bool = False) -> list[Promotion]:
    """Every recorded alias move of the configured model (of every model with ``all_models``),
    oldest first (empty before the first one).

    Raises:
        RegistryError: a line of the history is not a valid record.
    """
    path = history_path(settings)
    if not path.exists():
        return []
    moves = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            moves.append(Promotion.from_json(line))
        except (ValueError, TypeError, KeyError) as exc:
            raise RegistryError(f"{path} line {number} is not a promotion record: {exc}") from exc
    return moves if all_models else [m for m in moves if m.model == settings.model_name]


def _append_history(settings: Settings, moves: list[Promotion]) -> None:
    """Append the moves as one write, flushed and fsynced; a partial write is cut off again."""
    path = history_path(settings)
    data = "".join(move.to_json() + "\n" for move in moves).encode("utf-8")
    with open(path, "ab") as handle:
        size = handle.seek(0, os.SEEK_END)
        try:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError:
            handle.truncate(size)
            raise


@contextmanager
def _history_lock(settings: Settings) -> Iterator[None]:
    """Serialise alias moves (read alias, move it, append) across threads and processes."""
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(settings.mlflow_dir / ".promotions.lock"):
        yield


# --- small helpers -------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _fit(value: str, limit: int) -> str:
    marker = "… [truncated]"
    return value if len(value) <= limit else value[: limit - len(marker)] + marker


def _write_atomic(path: Path, text: str) -> None:
    from tasks.core.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
