"""The local stack: a Prefect server, a process worker and the MLflow UI on 127.0.0.1.

``start_stack`` first checks that every configured backend answers (:mod:`tasks.ops.backends`:
Prefect's database, MLflow's store and artifacts, Feast's online store) and initialises the
MLflow store once, then starts each part as its own process group with its state under
``$CHURN_HOME`` (by default Prefect's SQLite database in ``prefect/``, MLflow's in ``mlflow/``;
``CHURN_PREFECT_DATABASE_URL`` and ``CHURN_MLFLOW_BACKEND_URI`` swap in database servers),
waits until each answers its health check, and records what it started in
``$CHURN_HOME/stack/stack.json`` (PID, command line, URL, log file). ``stop_stack`` stops exactly
those processes — a recorded PID whose command line no longer matches (the OS reused it) is left
alone — and ``stack_status`` says what runs. Restarting keeps all history: nothing is deleted,
the databases stay where they are. Database URLs reach the processes through their environment,
never their command lines (which ``stack.json`` records and ``ps`` shows).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from tasks.core.errors import ChurnError
from tasks.core.files import atomic_path
from tasks.core.settings import Settings
from tasks.core.telemetry import TELEMETRY_OFF

logger = logging.getLogger(__name__)

WORK_POOL = "churn-process"
HOST = "127.0.0.1"


class StackError(ChurnError):
    """A part of the local stack did not start, or the stack is in a state we cannot act on."""


@dataclass(frozen=True)
class Component:
    """One started process of the stack."""

    name: str
    pid: int
    command: list[str]
    url: str
    health_url: str
    log: str
    started: int | None = None
    """Start time of the process (see ``_start_ticks``)."""


def stack_dir(settings: Settings) -> Path:
    return settings.home / "stack"


def _state_path(settings: Settings) -> Path:
    return stack_dir(settings) / "stack.json"


def read_state(settings: Settings) -> list[Component]:
    """What ``start_stack`` recorded (empty when nothing was started)."""
    try:
        records = json.loads(_state_path(settings).read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise StackError(f"{_state_path(settings)} is not valid JSON: {exc}") from exc
    return [Component(**r) for r in records]


def _write_state(settings: Settings, components: list[Component]) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps([asdict(c) for c in components], indent=2))


def prefect_api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def stack_environment(settings: Settings, prefect_port: int) -> dict[str, str]:
    """Environment of every stack process and of the flows the worker runs."""
    return {
        **os.environ,
        **TELEMETRY_OFF,
        "CHURN_HOME": str(settings.home),
        "PREFECT_HOME": str(settings.home / "prefect"),
        "PREFECT_API_URL": prefect_api_url(prefect_port),
        "PREFECT_UI_URL": f"http://{HOST}:{prefect_port}",
        "CHURN_PREFECT_UI_URL": f"http://{HOST}:{prefect_port}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # prefect.yaml's schedules read it; always set so the template always resolves.
        "CHURN_TIMEZONE": settings.timezone,
    }


def _commands(
    settings: Settings, prefect_port: int, mlflow_port: int
) -> list[tuple[str, list[str], str, str, dict[str, str]]]:
    """(name, command, url, health url, its own environment) of each part, in start order.

    The Prefect server migrates its database before it answers its health check (Prefect's
    ``migrate_on_start``, in its one process), and the worker starts only after that answer: one
    migration, before any worker. MLflow's store is initialised by ``start_stack`` beforehand.
    """
    from tasks.ops.backends import prefect_database_url
    from tasks.training.mlflow_store import artifact_root, backend_store_uri

    prefect_env = {}
    if settings.prefect_database_url is not None:
        prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_database_url(settings)

    python = sys.executable
    prefect_url = f"http://{HOST}:{prefect_port}"
    mlflow_url = f"http://{HOST}:{mlflow_port}"
    return [
        (
            "prefect-server",
            [python, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(prefect_port)],
            prefect_url,
            f"{prefect_url}/api/health",
            prefect_env,
        ),
        (
            "prefect-worker",
            [python, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process",
             "--name", f"churn-worker-{prefect_port}"],
            prefect_url,
            "",  # the worker answers through the server: checked by its heartbeat
            {},
        ),
        (
            "mlflow-ui",
            [python, "-m", "mlflow", "server",
             "--default-artifact-root", artifact_root(settings), "--host", HOST,
             "--port", str(mlflow_port), "--workers", "1"],
            mlflow_url,
            f"{mlflow_url}/health",
            # mlflow server reads --backend-store-uri from here: no password on its command line.
            {"MLFLOW_BACKEND_STORE_URI": backend_store_uri(settings)},
        ),
    ]  # fmt: skip


def _start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None if it is gone or a zombie.

    Together with the PID this names one process for good: a reused PID has another start time.
    (The command line is no proof: Prefect's CLI re-launches itself under the same PID range and
    may rewrite it.)
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; the rest follows the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(component: Component) -> bool:
    """The recorded process still runs and is still the one we started (not a reused PID)."""
    return component.started is not None and _start_ticks(component.pid) == component.started


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_healthy(component: Component, check, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not _alive(component):
            raise StackError(
                f"{component.name} exited while starting; its log {component.log} ends with:\n"
                + _tail(Path(component.log))
            )
        if check():
            return
        time.sleep(0.5)
    raise StackError(
        f"{component.name} did not answer {component.health_url or 'its health check'} within "
        f"{deadline_s:.0f} s; its log {component.log} ends with:\n" + _tail(Path(component.log))
    )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _worker_online(api_url: str, worker_name: str) -> bool:
    """The server has seen a heartbeat from the worker."""
    request = urllib.request.Request(
        f"{api_url}/work_pools/{WORK_POOL}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            workers = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(w.get("name") == worker_name and w.get("status") == "ONLINE" for w in workers)


def ensure_work_pool(env: Mapping[str, str]) -> None:
    """Create the process work pool (``--overwrite``: re-running updates it in place)."""
    _run_prefect(
        ["work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"],
        env,
        "create the work pool",
    )


GLOBAL_LIMITS = {"churn-retrain": 1, "churn-score": 1}
"""Global concurrency limits: one retraining at a time across the weekly and the drift
deployment (and the CLI when it talks to the server), one scoring at a time."""


def ensure_global_limits(env: Mapping[str, str]) -> None:
    for name, limit in GLOBAL_LIMITS.items():
        try:
            _run_prefect(["gcl", "create", name, "--limit", str(limit)], env, f"create {name}")
        except StackError as exc:
            if "already exists" not in str(exc):
                raise


def deploy_all(env: Mapping[str, str], project_root: Path) -> str:
    """Work pool and global limits (created or updated), then ``prefect deploy --all --no-prompt``."""
    ensure_work_pool(env)
    ensure_global_limits(env)
    return _run_prefect(["deploy", "--all", "--no-prompt"], env, "deploy", cwd=project_root)


def _run_prefect(
    args: list[str], env: Mapping[str, str], what: str, cwd: Path | None = None
) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise StackError(
            f"prefect could not {what} (exit {result.returncode}):\n"
            + "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        )
    return result.stdout


def start_stack(
    settings: Settings, *, prefect_port: int = 4200, mlflow_port: int = 5000, timeout_s: float = 180
) -> list[Component]:
    """Start what is not running yet, wait for every health check, record it; the running parts.

    Raises:
        StackError: a part exited or did not answer in time (its log's tail is in the message);
            the parts started by this call are stopped again.
    """
    from tasks.ops.backends import check_backends
    from tasks.training.mlflow_store import init_store

    # Before anything is written or started: a dead or wrong backend fails here, in one line.
    check_backends(settings)
    running = {c.name: c for c in read_state(settings) if _alive(c)}
    env = stack_environment(settings, prefect_port)
    logs = stack_dir(settings)
    logs.mkdir(parents=True, exist_ok=True)
    (settings.home / "prefect").mkdir(parents=True, exist_ok=True)
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    # MLflow's migrations once, here, before any worker or the UI opens the store.
    init_store(settings)
    started: list[Component] = []
    try:
        for name, command, url, health, own_env in _commands(settings, prefect_port, mlflow_port):
            if name in running:
                continue
            log = logs / f"{name}.log"
            with log.open("a") as out:
                process = subprocess.Popen(
                    command,
                    env={**env, **own_env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own process group: stopped as a whole
                )
            component = Component(
                name, process.pid, command, url, health, str(log), _start_ticks(process.pid)
            )
            started.append(component)
            running[name] = component
            _write_state(settings, list(running.values()))
            if name == "prefect-worker":
                worker_name = command[command.index("--name") + 1]
                _wait_healthy(
                    component,
                    lambda w=worker_name: _worker_online(prefect_api_url(prefect_port), w),
                    timeout_s,
                )
            else:
                _wait_healthy(component, lambda h=health: _healthy(h), timeout_s)
            if name == "prefect-server":
                ensure_work_pool(env)
            logger.info("%s is up at %s (pid %d)", name, url, process.pid)
    except BaseException:
        for component in reversed(started):
            _stop(component)
        _write_state(settings, [c for c in running.values() if c not in started])
        raise
    return list(running.values())


def _stop(component: Component, grace_s: float = 15) -> bool:
    if not _alive(component):
        return False
    try:
        os.killpg(component.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(component):
        time.sleep(0.2)
    if _alive(component):
        os.killpg(component.pid, signal.SIGKILL)
    return True


def stop_stack(settings: Settings) -> list[str]:
    """Stop exactly what ``start_stack`` recorded; the names of the parts that were running."""
    stopped = []
    for component in reversed(read_state(settings)):
        if _stop(component):
            stopped.append(component.name)
    _state_path(settings).unlink(missing_ok=True)
    return stopped


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int
    url: str
    running: bool
    healthy: bool


def stack_status(settings: Settings) -> list[ComponentStatus]:
    """Each recorded part: does its process run, does it answer its health check."""
    statuses = []
    for c in read_state(settings):
        alive = _alive(c)
        healthy = alive and (_healthy(c.health_url) if c.health_url else alive)
        statuses.append(ComponentStatus(c.name, c.pid, c.url, alive, healthy))
    return statuses
