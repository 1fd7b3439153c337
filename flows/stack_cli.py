"""`churn up`, `churn down`, `churn status`, `churn deploy`: the local stack and the deployments."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tasks.core.settings import PROJECT_ROOT, get_settings

console = Console()

PrefectPort = Annotated[int, typer.Option(help="Port of the Prefect server and UI.")]
MlflowPort = Annotated[int, typer.Option(help="Port of the MLflow UI.")]


def up(
    prefect_port: PrefectPort = 4200,
    mlflow_port: MlflowPort = 5000,
    deploy: Annotated[
        bool, typer.Option(help="Deploy everything in prefect.yaml once the server is up.")
    ] = True,
) -> None:
    """Start the Prefect server, a process worker and the MLflow UI on 127.0.0.1 (state under CHURN_HOME).

    Every configured backend (databases, Redis) must answer first; one that does not fails the
    command within seconds, naming it and its host, before anything is started or written.
    """
    from tasks.ops.backends import backends
    from tasks.ops.stack import deploy_all, stack_environment, start_stack

    settings = get_settings()
    with console.status(
        "checking the backends, starting the Prefect server, a worker and the MLflow UI"
    ):
        components = start_stack(settings, prefect_port=prefect_port, mlflow_port=mlflow_port)
    if deploy:
        with console.status("deploying prefect.yaml"):
            deploy_all(stack_environment(settings, prefect_port), PROJECT_ROOT)
    table = Table(title="churn-ops local stack", title_justify="left")
    for column in ("part", "pid", "url"):
        table.add_column(column)
    for c in components:
        table.add_row(c.name, str(c.pid), c.url)
    console.print(table)
    _print_backends([(b, None) for b in backends(settings)])
    console.print(
        f"Prefect UI: http://127.0.0.1:{prefect_port}   MLflow UI: http://127.0.0.1:{mlflow_port}\n"
        f"Use it from this shell: export PREFECT_API_URL=http://127.0.0.1:{prefect_port}/api "
        f"CHURN_HOME={settings.home}\nStop it: churn down"
    )


def down() -> None:
    """Stop exactly what `churn up` started; history stays under CHURN_HOME."""
    from tasks.ops.stack import stop_stack

    stopped = stop_stack(get_settings())
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def status() -> None:
    """What the local stack runs, which backend each part uses, and whether each answers."""
    from tasks.ops.backends import backends, probe_backends
    from tasks.ops.stack import stack_status

    settings = get_settings()
    _print_follow_ups(settings)
    probed = probe_backends(backends(settings))
    _print_backends(probed)
    backends_ok = all(problem is None for _, problem in probed)
    rows = stack_status(settings)
    if not rows:
        console.print("the local stack is not running (start it with `churn up`)")
        if not backends_ok:
            raise typer.Exit(1)
        return
    table = Table(title="churn-ops local stack", title_justify="left")
    for column in ("part", "pid", "running", "healthy", "url"):
        table.add_column(column)
    for s in rows:
        table.add_row(s.name, str(s.pid), _yes(s.running), _yes(s.healthy), s.url)
    console.print(table)
    if not backends_ok or not all(s.healthy for s in rows):
        raise typer.Exit(1)


def _print_backends(probed) -> None:
    """Which backend each part uses (never a password), and why one does not answer."""
    table = Table(title="backends", title_justify="left")
    for column in ("part", "backend", "answers"):
        table.add_column(column)
    for backend, problem in probed:
        if problem is None:
            answers = "yes" if backend.probed else "not checked"
        else:
            answers = f"no: {problem.reason}"  # the part and host are in the row already
        table.add_row(backend.part, backend.description, answers)
    console.print(table)


def _print_follow_ups(settings) -> None:
    """Drift follow-up retrainings: planned, scheduled in Prefect, or ran (and what they gave)."""
    from tasks.monitoring.follow_up import follow_ups_path, read_follow_ups

    follow_ups = read_follow_ups(settings)
    if not follow_ups:
        return
    table = Table(title=f"drift follow-ups ({follow_ups_path(settings)})", title_justify="left")
    for column in ("follow-up", "as of", "status", "flow run", "outcome"):
        table.add_column(column)
    for f in follow_ups:
        outcome = "—"
        if f.verdict is not None:
            outcome = f.verdict + (f" (version {f.version})" if f.version is not None else "")
        table.add_row(f.reason, str(f.due), f.status, f.flow_run_id or "—", outcome)
    console.print(table)


def deploy() -> None:
    """Create the work pool if missing and deploy every flow in prefect.yaml (updates in place)."""
    from tasks.ops.stack import StackError, deploy_all, read_state, stack_environment

    settings = get_settings()
    server = next((c for c in read_state(settings) if c.name == "prefect-server"), None)
    if server is not None:
        port = int(server.url.rsplit(":", 1)[1])
        env = stack_environment(settings, port)
    elif os.environ.get("PREFECT_API_URL"):
        env = {**os.environ, "CHURN_HOME": str(settings.home), "CHURN_TIMEZONE": settings.timezone}
    else:
        raise StackError(
            "no Prefect server to deploy to: start one with `churn up` or set PREFECT_API_URL"
        )
    output = deploy_all(env, PROJECT_ROOT)
    console.print(output.strip().splitlines()[-1] if output.strip() else "deployed")


def worker(
    healthcheck: Annotated[
        bool,
        typer.Option(help="Serve /health on PREFECT_WORKER_WEBSERVER_PORT (8080) for containers."),
    ] = True,
) -> None:
    """Run a process worker for the churn-process pool in the foreground (the container's default)."""
    import sys

    from tasks.core.telemetry import TELEMETRY_OFF
    from tasks.ops.stack import WORK_POOL

    if not os.environ.get("PREFECT_API_URL"):
        from tasks.ops.stack import StackError

        raise StackError(
            "PREFECT_API_URL is not set: the worker needs the Prefect server's API URL"
        )
    os.environ.update(TELEMETRY_OFF)
    command = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        WORK_POOL,
        "--type",
        "process",
    ]
    if healthcheck:
        command.append("--with-healthcheck")
    os.execv(sys.executable, command)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(deploy)
    app.command()(worker)
