"""Which backend each part of the stack uses, and whether each answers: before `churn up` starts
anything, and in `churn status`.

Four parts, each embedded under ``$CHURN_HOME`` unless a setting names a server (issue 14): the
Prefect server's database (``CHURN_PREFECT_DATABASE_URL``), the MLflow store
(``CHURN_MLFLOW_BACKEND_URI`` / ``CHURN_MLFLOW_TRACKING_URI``), MLflow's artifacts
(``CHURN_MLFLOW_ARTIFACTS``) and Feast's online store (``CHURN_ONLINE_STORE``, ``CHURN_REDIS_URL``).
:func:`backends` describes them without passwords; :func:`check_backends` probes them all at
once within :data:`PROBE_TIMEOUT_S` and raises the first failure as one line.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tasks.core.probe import BackendUnreachable, describe, probe
from tasks.core.settings import Settings
from tasks.core.urls import location, scheme

PROBE_TIMEOUT_S = 10.0
"""Each part's probe; they run side by side, so a command fails within ~11 s (issue 14: ≤ 15 s)."""

PREFECT_DRIVERS = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}
"""Prefect's server runs on async drivers only; users write the plain scheme."""


@dataclass(frozen=True)
class Backend:
    """One part of the stack and the backend it uses (``url`` is secret: never shown)."""

    part: str
    description: str
    url: str = field(repr=False)
    embedded: bool
    probed: bool = True
    """False where no probe exists here (s3://: credentials and boto3 are the user's)."""

    def line(self) -> str:
        return f"{self.part}: {self.description}"


def prefect_database_url(settings: Settings) -> str:
    """The Prefect server's database URL with Prefect's async driver; embedded: SQLite under
    ``$CHURN_HOME/prefect`` (where Prefect puts it when ``PREFECT_HOME`` is there).

    Raises:
        BackendUnreachable: a URL Prefect cannot use (named by kind and host, never password).
    """
    if settings.prefect_database_url is None:
        return f"sqlite+aiosqlite:///{settings.home / 'prefect' / 'prefect.db'}"
    url = settings.prefect_database_url.get_secret_value()
    base = "postgresql" if scheme(url) == "postgres" else scheme(url)
    if base not in PREFECT_DRIVERS or "://" not in url:
        raise BackendUnreachable(
            f"Prefect database: CHURN_PREFECT_DATABASE_URL must be postgresql://… or sqlite:///…, "
            f"not a {base or 'schemeless'} URL for {location(url)}"
        )
    return PREFECT_DRIVERS[base] + url[url.index("://") :]


def backends(settings: Settings) -> list[Backend]:
    """The four parts, in the order `churn up` starts what needs them.

    Raises:
        BackendUnreachable: a setting holds a URL of a kind its part cannot use.
        FeatureStoreError: ``CHURN_ONLINE_STORE=redis`` without a usable ``CHURN_REDIS_URL``.
    """
    from tasks.features.store import online_store_config
    from tasks.training.mlflow_store import artifact_root, default_store_uri, tracking_uri

    prefect = prefect_database_url(settings)
    embedded_prefect = settings.prefect_database_url is None
    mlflow = tracking_uri(settings)
    embedded_mlflow = mlflow == default_store_uri(settings)
    artifacts = artifact_root(settings)
    embedded_artifacts = settings.mlflow_artifacts is None
    if online_store_config(settings) is None:
        online = f"sqlite:///{settings.feast_dir / 'online_store.db'}"
        embedded_online = True
    else:
        assert settings.redis_url is not None  # online_store_config checked it
        online = settings.redis_url.get_secret_value()
        embedded_online = False
    s3 = scheme(artifacts) == "s3"
    return [
        Backend("Prefect database", describe(prefect, embedded=embedded_prefect), prefect,
                embedded_prefect),
        Backend("MLflow store", describe(mlflow, embedded=embedded_mlflow), mlflow,
                embedded_mlflow),
        Backend("MLflow artifacts",
                f"s3 at {artifacts.removeprefix('s3://')} (not probed)" if s3
                else f"folder{' (embedded)' if embedded_artifacts else ''} at {artifacts}",
                artifacts, embedded_artifacts, probed=not s3),
        Backend("Feast online store", describe(online, embedded=embedded_online), online,
                embedded_online),
    ]  # fmt: skip


def probe_backends(
    found: list[Backend], timeout_s: float = PROBE_TIMEOUT_S
) -> list[tuple[Backend, BackendUnreachable | None]]:
    """Each backend with None (it answers) or why it does not; probed side by side."""

    def attempt(backend: Backend) -> BackendUnreachable | None:
        if not backend.probed:
            return None
        try:
            probe(backend.part, backend.url, timeout_s)
        except BackendUnreachable as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=len(found) or 1, thread_name_prefix="probe") as pool:
        return list(zip(found, pool.map(attempt, found), strict=True))


def check_backends(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> list[Backend]:
    """Every part's backend, once each answers; write nothing.

    Raises:
        BackendUnreachable: the first part (in start order) that does not answer, as one line
            naming the part, its kind and host, never a password.
    """
    found = backends(settings)
    for _, problem in probe_backends(found, timeout_s):
        if problem is not None:
            raise problem
    return found
