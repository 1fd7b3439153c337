"""Switch off every component's usage reporting before it is imported.

There is no network here but package registries, and an operator's data never leaves the
machine: whylogs, Prefect, MLflow and Feast all phone home unless told not to.
"""

from __future__ import annotations

import os

TELEMETRY_OFF = {
    "WHYLOGS_NO_ANALYTICS": "True",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "SCARF_NO_ANALYTICS": "true",
}


def disable_telemetry() -> None:
    """Set the opt-out variables, keeping any value the operator set explicitly."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)
