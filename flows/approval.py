"""Find the retrain flow run paused for a person's approval and resume it with their decision."""

from __future__ import annotations

from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from tasks.training.approval import pause_key


def resume_waiting_run(version: int, decision: dict[str, Any]) -> str | None:
    """Resume the paused retrain run waiting for ``version`` with ``decision``; its id, or None.

    ``decision`` holds the approval form's fields (approve, approver, comment); the resumed flow
    validates them and records the decision itself.
    """
    key = pause_key(version)
    with get_client(sync_client=True) as client:
        paused = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
        )
    waiting = [
        run for run in paused if run.state is not None and run.state.state_details.pause_key == key
    ]
    if not waiting:
        return None
    run = max(waiting, key=lambda r: r.state.timestamp)
    resume_flow_run(run.id, run_input=decision)
    return str(run.id)
