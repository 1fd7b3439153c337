"""Open the Feast feature store of churn-ops and apply its declarations (``feature_repo/``).

The online store is ``feature_store.yaml``'s SQLite file unless ``CHURN_ONLINE_STORE=redis``:
then it is Feast's Redis store at ``CHURN_REDIS_URL`` (:func:`online_store_config`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from feast import FeatureService, FeatureStore, FeatureView
from feast.repo_config import RepoConfig

from tasks.core.errors import FeatureDefinitionError, FeatureStoreError
from tasks.core.probe import BackendUnreachable, probe
from tasks.core.settings import Settings, reset_settings
from tasks.core.urls import location
from tasks.features.definitions import DEFINITIONS_FILE, load_definitions
from tasks.features.sql_outputs import sql_problems

REDIS_TIMEOUT_S = 5
"""Socket timeouts of Feast's Redis client: a dead Redis fails a request, never hangs it."""

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _home_in_environment(settings: Settings) -> Iterator[None]:
    """``CHURN_HOME`` = ``settings.home`` while Feast reads the repo, then as it was.

    feature_store.yaml names its paths through ``${CHURN_HOME}`` (Feast expands environment
    variables) and the repo's data sources read the settings when Feast imports them. The
    feature definitions file goes the same way, absolute: Feast imports the repo from inside
    ``feature_repo/``, where a relative path would name another file.
    """
    pinned = {"CHURN_HOME": str(settings.home)}
    if settings.feature_definitions is not None:
        pinned["CHURN_FEATURE_DEFINITIONS"] = str(settings.feature_definitions)
    saved = {name: os.environ.get(name) for name in pinned}
    os.environ.update(pinned)
    reset_settings()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_settings()


def repo_config(settings: Settings, offline_store_type: str | None = None) -> RepoConfig:
    """``feature_repo/feature_store.yaml`` with ``${CHURN_HOME}`` resolved and batch size from settings."""
    repo = settings.feature_repo_dir
    with _home_in_environment(settings):
        raw = yaml.safe_load(os.path.expandvars((repo / "feature_store.yaml").read_text()))
    raw.setdefault("materialization", {})["online_write_batch_size"] = (
        settings.online_write_batch_size
    )
    if offline_store_type is not None:
        raw["offline_store"] = {"type": offline_store_type}
    online = online_store_config(settings)
    if online is not None:
        raw["online_store"] = online
    config = RepoConfig(**raw)
    config.repo_path = repo
    return config


def online_store_config(settings: Settings) -> dict[str, Any] | None:
    """Feast's ``online_store`` section for ``CHURN_ONLINE_STORE=redis``; None: the YAML's SQLite.

    Raises:
        FeatureStoreError: Redis is asked for without a usable ``CHURN_REDIS_URL`` (the message
            names the host, never the password).
    """
    if settings.online_store == "sqlite":
        return None
    if settings.redis_url is None:
        raise FeatureStoreError(
            "CHURN_ONLINE_STORE=redis needs CHURN_REDIS_URL (redis://host:6379/0)"
        )
    return {
        "type": "redis",
        "redis_type": "redis",
        "connection_string": redis_connection_string(settings.redis_url.get_secret_value()),
        # Last write wins, as in the SQLite store and the bulk writer (tasks/features/redis_online.py).
        "skip_dedup": True,
    }


def check_online_store(settings: Settings, timeout_s: float = 10.0) -> None:
    """Fail fast when the configured Redis does not answer (the SQLite file always does).

    Raises:
        FeatureStoreError: one line naming Redis's host, never its password.
    """
    if online_store_config(settings) is None or settings.redis_url is None:
        return
    try:
        probe("Feast online store", settings.redis_url.get_secret_value(), timeout_s)
    except BackendUnreachable as exc:
        raise FeatureStoreError(str(exc)) from None


def redis_connection_string(url: str) -> str:
    """``redis://[user:pw@]host:port/db`` as Feast's ``host:port,db=0,password=…,ssl=true``.

    Feast splits its connection string on commas and JSON-decodes each value, so the password
    goes in as a JSON string (a password of digits stays a string) and may not hold a comma.

    Raises:
        FeatureStoreError: not a redis:// or rediss:// URL, or a password Feast cannot carry.
    """
    parts = urlsplit(url)
    where = location(url, 6379)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise FeatureStoreError(
            f"CHURN_REDIS_URL must be redis://[:password@]host[:port][/db] or rediss://…; got "
            f"a {parts.scheme or 'schemeless'} URL for {where}"
        )
    try:
        port = parts.port or 6379
    except ValueError:
        raise FeatureStoreError(f"CHURN_REDIS_URL for {where}: the port is not a number") from None
    params: dict[str, object] = {
        "socket_connect_timeout": REDIS_TIMEOUT_S,
        "socket_timeout": REDIS_TIMEOUT_S,
    }
    database = parts.path.strip("/")
    if database:
        if not database.isdigit():
            raise FeatureStoreError(f"CHURN_REDIS_URL for {where}: the database is not a number")
        params["db"] = int(database)
    if parts.username:
        params["username"] = json.dumps(unquote(parts.username))
    if parts.password:
        secret = unquote(parts.password)
        if "," in secret:
            raise FeatureStoreError(
                f"CHURN_REDIS_URL for {where}: Feast's Redis store cannot take a password "
                "with a comma; choose another"
            )
        params["password"] = json.dumps(secret)
    if parts.scheme == "rediss":
        params["ssl"] = "true"
    for key, value in parse_qsl(parts.query):
        params[key] = value  # redis-py options the user set (ssl_cert_reqs=none, …) win
    return ",".join([f"{parts.hostname}:{port}", *(f"{k}={v}" for k, v in params.items())])


def open_store(settings: Settings, *, stock_offline_store: bool = False) -> FeatureStore:
    """The feature store over ``$CHURN_HOME/feast``; its registry must have been applied.

    ``stock_offline_store`` swaps in Feast's own DuckDB offline store: the reference that tests
    and benchmarks hold the partition-pruning store to.
    """
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config = repo_config(settings, "duckdb" if stock_offline_store else None)
    return FeatureStore(repo_path=str(settings.feature_repo_dir), config=config)


def feature_service(store: FeatureStore, name: str) -> FeatureService:
    """A registered feature service, or a clear error saying to apply the repo first."""
    try:
        return store.get_feature_service(name)
    except Exception as exc:  # Feast raises several unrelated types for "not found"/"no registry".
        raise FeatureStoreError(
            f"feature service {name!r} is not in the registry at {store.config.registry.path}: "
            "run `churn features apply` first"
        ) from exc


def service_views(
    store: FeatureStore, service: FeatureService
) -> list[tuple[FeatureView, list[str]]]:
    """The feature views behind a service, each with the feature names it selects, in service order."""
    views = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        views.append((view, [f.name for f in projection.features]))
    return views


def service_columns(store: FeatureStore, service: FeatureService) -> list[str]:
    """The model-input column names of a service, in order."""
    return [name for _, names in service_views(store, service) for name in names]


@dataclass(frozen=True)
class ApplyResult:
    """What ``feast apply`` registered."""

    entities: list[str]
    feature_views: list[str]
    feature_services: list[str]
    registry: str


@contextlib.contextmanager
def _inside_repo(repo: Path) -> Iterator[None]:
    """Import the repo's modules as `feast apply` does: from its directory, freshly."""
    module_names = {p.stem for p in repo.glob("*.py")}
    for name in module_names:
        sys.modules.pop(name, None)  # their paths depend on CHURN_HOME, read at import
    cwd = os.getcwd()
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo))
        for name in module_names:
            sys.modules.pop(name, None)


def check_feature_repo(repo: Path, settings: Settings | None = None) -> None:
    """The feature definitions in use (``CHURN_FEATURE_DEFINITIONS``, else the repo's
    ``features.yaml``) agree with themselves and with the SQL.

    Raises:
        FeatureDefinitionError: every problem, each naming its file and feature, view or service.
    """
    chosen = settings.feature_definitions if settings is not None else None
    problems = sql_problems(
        load_definitions(chosen or repo / DEFINITIONS_FILE),
        source_dir=settings.source_dir if settings is not None else None,
    )
    if problems:
        raise FeatureDefinitionError(problems)


def apply_feature_repo(settings: Settings, repo: Path | None = None) -> ApplyResult:
    """Check the feature definitions, then register every object declared in ``feature_repo/``
    (``feast apply``), removing stale ones. ``repo``: another copy of the repo (tests).

    Raises:
        FeatureDefinitionError: a definition is wrong (:func:`check_feature_repo`); nothing is
            written, the registry stays as it was.
    """
    from feast.repo_operations import apply_total_with_repo_instance, parse_repo

    repo = repo or settings.feature_repo_dir
    check_feature_repo(repo, settings)  # before anything is opened or written
    store = open_store(settings)
    with _home_in_environment(settings), _inside_repo(repo):
        contents = parse_repo(repo)
        out = io.StringIO()
        # Feast reports its plan on stdout; keep it in our log instead of the user's terminal.
        with contextlib.redirect_stdout(out):
            apply_total_with_repo_instance(
                store, store.project, store.registry, contents, skip_source_validation=True
            )
    for line in out.getvalue().splitlines():
        if line.strip():
            logger.info("feast: %s", line.strip())
    return ApplyResult(
        entities=sorted(e.name for e in contents.entities if not e.name.startswith("__")),
        feature_views=sorted(v.name for v in contents.feature_views),
        feature_services=sorted(s.name for s in contents.feature_services),
        registry=str(store.config.registry.path),
    )
