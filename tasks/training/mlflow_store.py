"""The MLflow store of churn-ops: where it is, its names, and one way in for every registry call.

The store is a SQLite database under ``$CHURN_HOME/mlflow`` unless ``CHURN_MLFLOW_BACKEND_URI``
(a database, e.g. PostgreSQL, registry included) or ``CHURN_MLFLOW_TRACKING_URI`` (what clients
use: a tracking server or a database) names another; artifacts of the ``telecom_churn``
experiment live in ``CHURN_MLFLOW_ARTIFACTS`` (a shared folder or ``s3://…``), by default under
``$CHURN_HOME/mlflow/artifacts``, unless the store is a tracking server (which keeps its own).
A store URI may carry a password: messages and the marker file hold it redacted.
:func:`init_store` creates the experiment once (a marker file says so); :func:`connect` points
MLflow's process-wide tracking and registry URI at this store (``log_model`` and
``models:/<model_id>`` only use the global one) and returns a client. :func:`store_errors` is the
tuple of MLflow's exceptions that callers turn into :class:`RegistryError`. mlflow is imported
inside the functions (after telemetry is switched off), so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.errors import ChurnError
from tasks.core.files import file_lock
from tasks.core.probe import BackendUnreachable, probe
from tasks.core.settings import Settings
from tasks.core.telemetry import disable_telemetry
from tasks.core.urls import redact_url, scheme, scrub

if TYPE_CHECKING:
    from mlflow import MlflowClient

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
MAX_TAG_VALUE = 8000  # MLflow run tag limit
MAX_PARAM_VALUE = 6000  # MLflow param limit


class RegistryError(ChurnError):
    """The MLflow store is unreachable or unusable, or an alias move was refused."""


class ModelNotFound(RegistryError):
    """No registered version for that alias or number."""


class ModelLoadError(RegistryError):
    """A registered version exists but its model or model spec cannot be loaded."""


# --- store ---------------------------------------------------------------------------------


PROBE_TIMEOUT_S = 10.0
"""Longest a command waits for a database store to answer before it fails (issue 14: ≤ 15 s)."""


_PROBED = frozenset({"postgresql", "mysql", "mssql", "http", "https"})


def backend_store_uri(settings: Settings) -> str:
    """The database behind tracking and registry: ``CHURN_MLFLOW_BACKEND_URI``, else a database
    ``CHURN_MLFLOW_TRACKING_URI`` names, else SQLite at ``$CHURN_HOME/mlflow/mlflow.db``."""
    if settings.mlflow_backend_uri is not None:
        return settings.mlflow_backend_uri.get_secret_value()
    if settings.mlflow_tracking_uri and not _is_server(settings.mlflow_tracking_uri):
        return settings.mlflow_tracking_uri
    return default_store_uri(settings)


def default_store_uri(settings: Settings) -> str:
    return f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}"


def tracking_uri(settings: Settings) -> str:
    """What clients use: ``CHURN_MLFLOW_TRACKING_URI`` (a server, say), else the backend store."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return backend_store_uri(settings)


def artifact_root(settings: Settings) -> str:
    """Where the ``telecom_churn`` experiment keeps artifacts when the store is a database: a
    folder (absolute path) or a URI such as ``s3://bucket/prefix``."""
    if settings.mlflow_artifacts:
        if "://" in settings.mlflow_artifacts:
            return settings.mlflow_artifacts
        return str(Path(settings.mlflow_artifacts).expanduser().resolve())
    return str(settings.mlflow_dir / "artifacts")


def check_store(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast when a database or server store does not answer (SQLite always does).

    MLflow itself retries a dead database for minutes; this answers within ``timeout_s``.

    Raises:
        RegistryError: one line naming the store's host, never its password.
    """
    uri = tracking_uri(settings)
    if scheme(uri) not in _PROBED:
        return  # SQLite answers by construction; other stores (databricks) are MLflow's to check
    try:
        probe("MLflow store", uri, timeout_s)
    except BackendUnreachable as exc:
        raise RegistryError(str(exc)) from None


def init_store(settings: Settings) -> str:
    """Create the store, run MLflow's migrations and create the experiment, once; return the URI.

    Parallel first-time migrations of one SQLite file collide, so the first caller does them
    under an exclusive lock (``$CHURN_HOME/mlflow/.init.lock``) and leaves a marker; later calls,
    from any thread or process, see the marker and return at once. Idempotent.

    Raises:
        RegistryError: the store cannot be reached, created or migrated.
    """
    uri = tracking_uri(settings)
    check_store(settings)
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
        except store_errors() as exc:
            raise _unusable(uri, exc) from exc
        # The marker names the store without its password: it is a file anyone may read.
        marker = {
            "uri": redact_url(uri),
            "experiment_id": experiment_id,
            "at": utc_now().isoformat(),
        }
        _write_atomic(marker_path(settings), json.dumps(marker))
        logger.info("initialised MLflow store %s (experiment %s)", redact_url(uri), experiment_id)
    return uri


def _initialised(settings: Settings, uri: str) -> bool:
    try:
        marker = json.loads(marker_path(settings).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("uri") != redact_url(uri):
        return False
    # A deleted database with its marker left behind must be initialised again.
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def marker_path(settings: Settings) -> Path:
    return settings.mlflow_dir / ".initialized.json"


def _ensure_experiment(client: MlflowClient, settings: Settings, uri: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        # A tracking server keeps its own artifact root; with a database store they stay under
        # CHURN_HOME (MLflow's default would be ./mlruns in whatever directory we run from).
        root = artifact_root(settings)
        location = None if _is_server(uri) else root if "://" in root else Path(root).as_uri()
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "databricks"))


def connect(settings: Settings) -> MlflowClient:
    """A client on the initialised store; MLflow's process-wide URIs point at it too.

    Raises:
        RegistryError: the store is unreachable or unusable.
    """
    uri = init_store(settings)
    try:
        return _client(uri)
    except store_errors() as exc:
        raise _unusable(uri, exc) from exc


def _unusable(uri: str, exc: BaseException) -> RegistryError:
    return RegistryError(
        f"MLflow store {redact_url(uri)} is unreachable or unusable: {scrub(str(exc), [uri])}"
    )


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


def store_errors() -> tuple[type[BaseException], ...]:
    """What a broken, missing or unreachable store raises through MLflow."""
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    return (MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError)


def is_not_found(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


# --- small helpers -------------------------------------------------------------------------


def utc_now() -> datetime:
    return datetime.now(UTC)


def clip(value: str, limit: int) -> str:
    marker = "… [truncated]"
    return value if len(value) <= limit else value[: limit - len(marker)] + marker


def _write_atomic(path: Path, text: str) -> None:
    from tasks.core.files import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)
