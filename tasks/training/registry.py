"""The MLflow registry of churn-ops: registered versions, their aliases, rollback, loading a model.

Plain functions over ``MlflowClient`` (DESIGN §5, §6). The store is a SQLite database under
``$CHURN_HOME/mlflow`` unless ``CHURN_MLFLOW_TRACKING_URI`` names another; artifacts of the
``telecom_churn`` experiment live under ``$CHURN_HOME/mlflow/artifacts``.

* Every candidate is one run (:func:`~tasks.training.candidates.log_candidate`) with its params, metrics, gate results
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

The store itself (location, names, the process-wide URI) is :mod:`tasks.training.mlflow_store`;
candidate runs are :mod:`tasks.training.candidates`; the alias history and its lock are
:mod:`tasks.training.promotions`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.settings import Settings
from tasks.training.mlflow_store import (
    CHALLENGER,
    CHAMPION,
    DECISION_TAG,
    FAILED_GATES_TAG,
    GATE_PREFIX,
    MAX_TAG_VALUE,
    MODEL_ID_TAG,
    MODEL_SPEC_ARTIFACT,
    PASSED,
    ModelLoadError,
    ModelNotFound,
    RegistryError,
    clip,
    connect,
    is_not_found,
    store_errors,
    utc_now,
)
from tasks.training.promotions import Promotion, append_history, history_lock, promotion_history

if TYPE_CHECKING:
    import lightgbm as lgb
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)


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
    client = connect(settings)
    name = settings.model_name
    try:
        run = client.get_run(run_id)
    except store_errors() as exc:
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
    version_tags = {str(k): clip(str(v), MAX_TAG_VALUE) for k, v in lineage_tags.items()}
    version_tags |= {
        k: v
        for k, v in run_tags.items()
        if k.startswith(GATE_PREFIX) or k in (DECISION_TAG, FAILED_GATES_TAG)
    }
    with history_lock(settings):
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
        except store_errors() as exc:
            raise RegistryError(f"registering run {run_id} as {name} failed: {exc}") from exc
        version = int(created.version)
        move = Promotion(
            at=utc_now(),
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
    client = connect(settings)
    name = settings.model_name
    with history_lock(settings):
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
    client = connect(settings)
    name = settings.model_name
    with history_lock(settings):
        target = _get_version(client, name, version)
        current = _alias_version(client, name, CHALLENGER)
        if current != version:
            raise RegistryError(
                f"{name} version {version} is not the {CHALLENGER} "
                f"(the {CHALLENGER} is {current if current is not None else 'unset'})"
            )
        move = Promotion(
            utc_now(), name, CHALLENGER, version, None, by, reason, target.run_id, "reject"
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
    client = connect(settings)
    name = settings.model_name
    _get_version(client, name, version)
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, clip(str(value), MAX_TAG_VALUE))
    except store_errors() as exc:
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
    client = connect(settings)
    name = settings.model_name
    with history_lock(settings):
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
    at = utc_now()
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
        append_history(settings, moves)
    except store_errors() as exc:
        for move in reversed(applied):
            try:
                _set_alias(client, move.model, move.alias, move.from_version)
            except store_errors() as undo_exc:
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
        except store_errors() as exc:
            if not is_not_found(exc):
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
    except store_errors() as exc:
        if is_not_found(exc):
            return {}
        raise RegistryError(f"cannot read the aliases of {name}: {exc}") from exc
    return {alias: int(version) for alias, version in aliases.items()}


def _get_version(client: MlflowClient, name: str, version: int | str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except store_errors() as exc:
        if is_not_found(exc):
            raise ModelNotFound(f"{name} has no version {version}") from exc
        raise RegistryError(f"cannot read {name} version {version}: {exc}") from exc


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except store_errors() as exc:
        if not is_not_found(exc):
            raise
        client.create_registered_model(name, description="Telecom churn: P(churn within 30 days).")


def _delete_version(client: MlflowClient, name: str, version: int) -> None:
    """Best effort: a version whose registration failed must not linger as a usable version."""
    try:
        client.delete_model_version(name, str(version))
    except store_errors() as exc:
        logger.error("could not delete half-registered %s version %s: %s", name, version, exc)


def _require_who_and_why(by: str, reason: str) -> None:
    if not by.strip() or not reason.strip():
        raise RegistryError("an alias move needs who (by) and why (reason), both non-empty")


# --- reading -------------------------------------------------------------------------------


def current_alias(settings: Settings, alias: str) -> ModelVersionInfo | None:
    """The version ``alias`` points at, or ``None`` (also when no model is registered yet)."""
    client = connect(settings)
    version = _alias_version(client, settings.model_name, alias)
    if version is None:
        return None
    try:
        found = _get_version(client, settings.model_name, version)
        return _info(client, found, {alias: version})
    except store_errors() as exc:
        raise RegistryError(f"cannot read {settings.model_name}@{alias}: {exc}") from exc


def list_versions(settings: Settings) -> list[ModelVersionInfo]:
    """Every live version of the model, oldest first, with aliases, metrics and gate results."""
    client = connect(settings)
    name = settings.model_name
    try:
        aliases = _alias_map(client, name)
        found = client.search_model_versions(f"name = '{name}'")
        return sorted((_info(client, mv, aliases) for mv in found), key=lambda info: info.version)
    except store_errors() as exc:
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

    client = connect(settings)
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
        except (*store_errors(), lgb.basic.LightGBMError, ValueError) as exc:
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
        except store_errors() as exc:
            if not is_not_found(exc):
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
