"""deploy/compose.yaml, validated without Docker (issue 14): every service's image or build,
ports, health check and volumes, secrets only from the git-ignored env file, and every variable
it passes a setting that exists (ours, Prefect's, MLflow's, or the images' documented ones)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tasks.core.settings import PROJECT_ROOT, Settings
from tasks.ops.backends import backends

DEPLOY = PROJECT_ROOT / "deploy"
CHURN_SERVICES = {"prefect-server", "mlflow", "worker", "serve"}
PUBLISHED = {"prefect-server": 4200, "mlflow": 5000, "serve": 8000}
# Variables the third-party images document (postgres, redis); nothing else may pass.
IMAGE_VARIABLES = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "redis": {"REDIS_PASSWORD", "REDISCLI_AUTH"},
}
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def interpolate(value: str, env: dict[str, str]) -> str:
    """What compose makes of ``${NAME}``, ``${NAME:-default}``, ``${NAME:?error}`` given ``env``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in env:
            return env[name]
        default = re.match(r"\$\{[A-Z0-9_]+:?-(.*)\}", match.group(0))
        assert default, f"${{{name}}} is neither in deploy/.env.example nor has a default"
        return default.group(1)

    return INTERPOLATION.sub(one, value.replace("$$", "$"))


def churn_setting_names() -> set[str]:
    return {f"CHURN_{name.upper()}" for name in Settings.model_fields}


def prefect_setting_names() -> set[str]:
    from prefect.settings import Settings as PrefectSettings
    from prefect.settings.legacy import _get_valid_setting_names

    return set(_get_valid_setting_names(PrefectSettings))


def mlflow_setting_names() -> set[str]:
    """Environment variables of `mlflow server`'s options."""
    import warnings

    with warnings.catch_warnings():
        # MLflow's SQL store trips a SQLAlchemy deprecation on import; not ours to fix.
        warnings.simplefilter("ignore")
        from mlflow.cli import server

    return {p.envvar for p in server.params if isinstance(getattr(p, "envvar", None), str)}


def test_the_stack_has_every_part_each_with_a_health_check(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", *CHURN_SERVICES}
    for name, service in services.items():
        check = service.get("healthcheck", {}).get("test")
        assert check and check[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name


def test_churn_parts_run_the_image_built_from_the_projects_dockerfile(compose: dict) -> None:
    for name in CHURN_SERVICES:
        service = compose["services"][name]
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == PROJECT_ROOT, name
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
            PROJECT_ROOT / "Dockerfile"
        )
        assert service["image"] == "churn-ops:local", name
    for name in ("postgres", "redis"):
        image = compose["services"][name]["image"]
        assert re.fullmatch(r"[a-z]+:\d+(\.\d+)?", image), f"{name}: pin a version, not {image}"


def test_ports_are_published_on_this_machine_only_and_databases_not_at_all(compose) -> None:
    for name, service in compose["services"].items():
        ports = service.get("ports", [])
        if name in PUBLISHED:
            port = PUBLISHED[name]
            assert ports == [f"127.0.0.1:{port}:{port}"], name
            assert str(port) in " ".join(service["healthcheck"]["test"]), name
        else:
            assert ports == [], f"{name} must not be published"


def test_state_lives_in_named_volumes(compose: dict) -> None:
    declared = set(compose["volumes"])
    mounts = {
        name: {v.split(":")[0]: v.split(":")[1] for v in service.get("volumes", [])}
        for name, service in compose["services"].items()
    }
    assert mounts["postgres"]["postgres-data"] == "/var/lib/postgresql/data"
    assert mounts["redis"]["redis-data"] == "/data"
    for name in ("worker", "serve", "mlflow"):
        assert mounts[name]["churn-data"] == "/data", name  # one data root, one Feast registry
    used = {source for m in mounts.values() for source in m if not source.startswith(".")}
    assert used == declared
    init = DEPLOY / "postgres-init.sql"
    assert "CREATE DATABASE mlflow" in init.read_text()
    assert mounts["postgres"]["./postgres-init.sql"].startswith("/docker-entrypoint-initdb.d/")


def test_every_variable_passed_is_a_setting_that_exists(compose: dict) -> None:
    churn, prefect, mlflow = churn_setting_names(), prefect_setting_names(), mlflow_setting_names()
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("CHURN_"):
                assert variable in churn, f"{name}: {variable} is not a churn-ops setting"
            elif variable.startswith("PREFECT_"):
                assert variable in prefect, f"{name}: {variable} is not a Prefect setting"
            elif variable.startswith("MLFLOW_"):
                assert variable in mlflow, f"{name}: {variable} is not an `mlflow server` option"
            else:
                assert variable in IMAGE_VARIABLES.get(name, set()), f"{name}: {variable}?"


def test_the_settings_passed_parse_and_name_the_compose_backends(compose, env_example) -> None:
    environment = compose["services"]["worker"]["environment"]
    serve = compose["services"]["serve"]["environment"]
    assert {k: v for k, v in serve.items() if k != "CHURN_API_KEY"} == environment
    values = {k: interpolate(str(v), env_example) for k, v in environment.items()}
    settings = Settings.model_validate(
        {k.removeprefix("CHURN_").lower(): v for k, v in values.items() if k.startswith("CHURN_")}
    )
    assert [b.line() for b in backends(settings)] == [
        "Prefect database: sqlite (embedded) at /data/prefect/prefect.db",  # the worker's own
        "MLflow store: postgresql at postgres:5432/mlflow",
        "MLflow artifacts: folder at /data/mlflow-artifacts",
        "Feast online store: redis at redis:6379/0",
    ]
    server = compose["services"]["prefect-server"]["environment"]
    url = interpolate(server["PREFECT_SERVER_DATABASE_CONNECTION_URL"], env_example)
    assert url.startswith("postgresql+asyncpg://churn:") and url.endswith("@postgres:5432/prefect")
    mlflow = compose["services"]["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow == environment["CHURN_MLFLOW_BACKEND_URI"]  # the UI shows the workers' store
    assert serve["CHURN_API_KEY"].startswith("${")


def test_secrets_come_only_from_the_git_ignored_env_file(compose, env_example) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    for match in re.finditer(r"://[^/\s:@]*:([^@\s]+)@", text):
        assert match.group(1).startswith("${"), f"a literal password in compose.yaml: {match[0]}"
    referenced = set(INTERPOLATION.findall(text))
    assert referenced <= set(env_example), referenced - set(env_example)
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "CHURN_API_KEY"} <= referenced
    ignored = (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/.env" in ignored
    assert not Path(DEPLOY / ".env").is_file() or "deploy/.env" in ignored


def test_churn_parts_start_after_what_they_need_is_healthy(compose: dict) -> None:
    needs = {
        "prefect-server": {"postgres"},
        "mlflow": {"postgres"},
        # MLflow's server migrates the store: the processes that open it directly come after.
        "worker": {"prefect-server", "mlflow", "redis"},
        "serve": {"mlflow", "redis"},
    }
    for name, wanted in needs.items():
        depends = compose["services"][name]["depends_on"]
        assert set(depends) == wanted, name
        assert all(d["condition"] == "service_healthy" for d in depends.values()), name
