"""``churn serve``: real-time churn scores over HTTP, in the foreground until Ctrl-C.

Apart from ``churn score`` because it is the online path (``flows/serve.py``, ``tasks/serving``):
a long-running server with no Prefect flow behind it. Registered by :mod:`flows.cli`, under the contract stated there.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from flows.cli_common import print_summary
from tasks.core.settings import get_settings


def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
) -> None:
    """Serve real-time churn scores over HTTP: POST /predict, /predict/features; GET /health, /metrics."""
    from flows.serve import open_service, run_server

    settings = get_settings()
    service = open_service(settings)
    model = service.model
    print_summary(
        "Serving churn scores (Ctrl-C to stop)",
        [
            ("url", f"http://{host}:{port}  (docs: /docs)"),
            ("model", f"{model.name} version {model.version} (champion)"),
            ("will-churn threshold", f"{model.threshold:.4f}: {model.threshold_source}"),
            ("feature service", settings.feature_service),
            ("online store", service.reader.description),
            ("API key", "required (X-API-Key)" if settings.api_key else "not required"),
        ],
    )
    run_server(
        service, host=host, port=port, verbose=logging.getLogger().isEnabledFor(logging.INFO)
    )
    print_summary("Stopped", [("online predictions logged", service.log.written)])


def register(app: typer.Typer) -> None:
    app.command()(serve)
