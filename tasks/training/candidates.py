"""A candidate of retraining as an MLflow run: params, metrics, gate results, decision, model, spec.

Every candidate is one run of the ``telecom_churn`` experiment (:func:`log_candidate`), whether
the gates passed or not: a refused candidate stays a run with its reasons. Each gate is a
``gate.<name>`` tag (passed, failed or skipped) with ``gate.<name>.<key>`` detail tags
(:func:`flatten_gates`), the decision is the ``decision`` tag, and the LightGBM model is logged
with the pinned requirements of this environment.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.core.settings import Settings
from tasks.core.urls import redact_url, scrub
from tasks.training.mlflow_store import (
    DECISION_TAG,
    EXPERIMENT,
    FAILED,
    FAILED_GATES_TAG,
    GATE_PREFIX,
    MAX_PARAM_VALUE,
    MAX_TAG_VALUE,
    MODEL_ARTIFACT,
    MODEL_ID_TAG,
    MODEL_SPEC_ARTIFACT,
    PASSED,
    SKIPPED,
    RegistryError,
    clip,
    connect,
    marker_path,
    store_errors,
)

if TYPE_CHECKING:
    import lightgbm as lgb

logger = logging.getLogger(__name__)
REQUIREMENT_PACKAGES = ("lightgbm", "pandas", "numpy", "scikit-learn")

_RESERVED_TAGS = {DECISION_TAG, FAILED_GATES_TAG, MODEL_ID_TAG}


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
    run_tags = {str(k): clip(str(v), MAX_TAG_VALUE) for k, v in tags.items()}
    run_tags |= gate_tags
    run_tags[DECISION_TAG] = FAILED if failed else PASSED
    run_tags[FAILED_GATES_TAG] = ",".join(failed) or "none"

    client = connect(settings)
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
                f"experiment {EXPERIMENT!r} is missing or deleted in "
                f"{redact_url(client.tracking_uri)}; "
                f"remove {marker_path(settings)} to let init_store create it again"
            )
        with mlflow.start_run(
            experiment_id=experiment.experiment_id, run_name=run_name, tags=run_tags
        ) as run:
            mlflow.log_params({str(k): clip(str(v), MAX_PARAM_VALUE) for k, v in params.items()})
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
    except store_errors() as exc:
        raise RegistryError(
            f"logging candidate {run_name!r} to {redact_url(client.tracking_uri)} failed: "
            + scrub(str(exc), [client.tracking_uri])
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
            f"{GATE_PREFIX}{name}.{k}": clip(str(v), MAX_TAG_VALUE) for k, v in details.items()
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
