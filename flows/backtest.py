"""``churn backtest``: replay a simulated world night by night through the flows, once per
retraining policy, and measure what the retention team would have got (issue 13).

The world is simulated and its features built once (``<out>/world``). Each policy then runs in
a child process of its own with ``CHURN_HOME=<out>/<scenario>/<policy>`` (linked to the world's
source, truth, features and Feast registry; its own MLflow store, prediction log, monitoring
state and alert outbox): the first champion is trained the day before the first night, then
every night is scored with ``score-nightly``, monitored with ``monitor`` (monitoring policies,
which run their drift retraining and follow-ups in-process) and retrained when the policy's
schedule says so, with ``retrain`` and its gates. A child per policy keeps the settings,
caches and Prefect state of one policy out of the next, and measures its CPU seconds (its own
process; the temporary Prefect API server it starts is not counted).

Afterwards the realized precision@K and ROC-AUC of each policy's champion on every night are
read from its prediction log joined to the matured outcomes (``evaluate_day``, the same numbers
``churn performance`` reports). The plain parts (calendar, policies, summary, chart) are
:mod:`tasks.ops.backtest`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from tasks.core.files import atomic_path
from tasks.ops.backtest import (
    FOLLOWS_UP,
    MONITORED,
    POLICIES,
    BacktestError,
    Calendar,
    PolicyRun,
    link_world,
    scheduled_retraining,
    summarize,
    write_results,
)

logger = logging.getLogger(__name__)

EPHEMERAL_STARTUP_TIMEOUT_S = 180


@dataclass(frozen=True)
class BacktestResult:
    scenario: str
    calendar: Calendar
    summary: pd.DataFrame
    realized: pd.DataFrame
    runs: list[PolicyRun]
    files: dict[str, Path]
    world_seconds: float


def _use_home(home: Path, **env: str) -> None:
    """Point this process's settings (and Prefect's local state) at ``home``."""
    from tasks.core.settings import reset_settings

    os.environ["CHURN_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    reset_settings()


def prepare_world(
    world_home: Path, scenario: str, subscribers: int, seed: int, calendar: Calendar
) -> None:
    """Simulate the world and build its features once (no online store: nothing serves)."""
    from flows.features import build_features_flow
    from tasks.core.settings import get_settings
    from tasks.data.sim_population import WorldSpec
    from tasks.data.simulate import simulate_world

    _use_home(world_home)
    settings = get_settings()
    simulate_world(
        WorldSpec(
            subscribers=subscribers,
            days=calendar.world_days,
            start=calendar.world_start,
            seed=seed,
            scenario=scenario,
            scenario_start=None if scenario == "baseline" else calendar.shift,
        ),
        settings.source_dir,
        settings.truth_dir,
        chunk_days=settings.sim_chunk_days,
    )
    build_features_flow(start=None, end=None, materialize_online_store=False)


def run_policy(world_home: str, policy_home: str, policy: str, calendar: Calendar) -> dict:
    """One policy over every night, in this (child) process; what it did, as a dict."""
    from flows.monitor import monitor_flow
    from flows.retrain import retrain_flow
    from flows.score import score_nightly_flow

    home = Path(policy_home)
    link_world(Path(world_home), home)
    _use_home(home, CHURN_DRIFT_FOLLOW_UP="true" if policy in FOLLOWS_UP else "false")
    began = time.perf_counter()
    first = retrain_flow(as_of=calendar.first_training, reason="backtest: first champion")
    if not first.promoted:
        raise BacktestError(
            f"{policy}: the first training at {calendar.first_training} gave no champion "
            f"({first.decision.summary()}); nothing to replay"
        )
    for night in calendar.nights:
        score_nightly_flow(score_date=night)
        if policy in MONITORED:
            monitor_flow(score_date=night, retrain_on_drift=True)
        reason = scheduled_retraining(policy, night)
        if reason is not None:
            retrain_flow(as_of=night, reason=reason)
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = _decisions(policy)
    run.cpu_seconds = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    run.wall_seconds = time.perf_counter() - began
    run.slack_messages = _messages(home)
    return run.to_dict()


def _decisions(policy: str) -> PolicyRun:
    """Retrainings after the first champion, promotions and refusals by gate, from MLflow."""
    from tasks.core.settings import get_settings
    from tasks.training.mlflow_store import EXPERIMENT, FAILED_GATES_TAG, connect

    settings = get_settings()
    client = connect(settings)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    result = PolicyRun(policy=policy)
    for r in runs[1:]:  # the first is the shared first champion
        verdict = r.data.tags.get("verdict", "")
        # The tag says "none" when every gate passed.
        failed = [g for g in r.data.tags.get(FAILED_GATES_TAG, "").split(",") if g and g != "none"]
        result.retrainings += 1
        result.promotions += verdict == "promote"
        for gate in failed:
            result.refusals[gate] = result.refusals.get(gate, 0) + 1
        result.retrain_log.append(
            {
                "as_of": r.data.params.get("as_of"),
                "reason": r.data.tags.get("reason", ""),
                "verdict": verdict,
                "failed": failed,
                "roc_auc": r.data.metrics.get("roc_auc"),
            }
        )
    return result


def _messages(home: Path) -> int:
    """Alerts raised (no Slack is configured in a backtest: each waits in the outbox)."""
    outbox = home / "alerts" / "outbox"
    sent = home / "alerts" / "sent.jsonl"
    count = len(list(outbox.glob("*.json"))) if outbox.exists() else 0
    if sent.exists():
        count += sum(1 for line in sent.read_text().splitlines() if line.strip())
    return count


def incident_counts(policy_home: Path) -> tuple[int, int]:
    """Drift incidents the policy opened, and the most Slack messages one of them took."""
    from tasks.core.settings import Settings
    from tasks.monitoring.incident import read_incidents

    incidents = read_incidents(Settings(home=policy_home))
    return len(incidents), max((len(i.messages) for i in incidents), default=0)


def realized_by_night(policy_home: Path, nights: Sequence[date]) -> list[dict]:
    """The champion's realized precision@K and ROC-AUC on each night, read from the policy's
    prediction log (plain reads with the policy's settings: no child process needed)."""
    from tasks.core.settings import Settings
    from tasks.monitoring.performance import evaluate_day

    settings = Settings(home=policy_home)
    rows = []
    for night in nights:
        table = evaluate_day(settings, night).to_pylist()
        for row in table:
            if row["role"] == "champion":
                rows.append(
                    {
                        "score_date": night,
                        "model_version": row["model_version"],
                        "precision_at_k": row["precision_at_k"],
                        "roc_auc": row["roc_auc"],
                        "positives": row["positives"],
                        "n": row["n"],
                    }
                )
    return rows


def run_backtest(
    out_dir: Path,
    scenario: str,
    *,
    subscribers: int,
    seed: int,
    calendar: Calendar,
    policies: Sequence[str],
    fresh: bool = False,
    reuse: bool = False,
    progress: Callable[[str], None] = logger.info,
) -> BacktestResult:
    """Simulate (or reuse) the scenario's world, replay every policy, measure, write the files.

    ``fresh`` simulates the world again; ``reuse`` keeps a policy's finished replay of the same
    world (``<policy>/backtest_policy.json``) instead of replaying it, so policies can be added
    one run at a time; the code that replayed it is then the code of that earlier run.
    """
    root = out_dir / scenario
    world = root / "world"
    marker = world / "backtest_world.json"
    wanted = {
        "scenario": scenario,
        "subscribers": subscribers,
        "seed": seed,
        "world_start": calendar.world_start.isoformat(),
        "world_days": calendar.world_days,
        "shift": calendar.shift.isoformat(),
    }
    began = time.perf_counter()
    if fresh or not marker.exists() or json.loads(marker.read_text()) != wanted:
        _may_replace(root, marker, wanted, fresh)
        shutil.rmtree(root, ignore_errors=True)
        progress(f"{scenario}: simulating {subscribers:,} subscribers × {calendar.world_days} days")
        _in_child(prepare_world, world, scenario, subscribers, seed, calendar)
        marker.write_text(json.dumps(wanted, indent=2) + "\n")
    world_seconds = time.perf_counter() - began
    runs, realized = [], []
    for policy in policies:
        home = root / policy
        done = home / "backtest_policy.json"
        if reuse and done.exists() and json.loads(done.read_text())["world"] == wanted:
            kept = json.loads(done.read_text())
            progress(f"{scenario}: policy {policy}: reusing the replay in {done}")
        else:
            shutil.rmtree(home, ignore_errors=True)
            progress(f"{scenario}: policy {policy}, {len(calendar.nights)} nights")
            kept = {
                "world": wanted,
                "run": _in_child(run_policy, str(world), str(home), policy, calendar),
                "realized": realized_by_night(home, calendar.nights),
            }
            with atomic_path(done) as tmp:
                tmp.write_text(json.dumps(kept, indent=2, default=str) + "\n")
        run = PolicyRun(**kept["run"])
        run.incidents, run.most_incident_messages = incident_counts(home)
        runs.append(run)
        for row in kept["realized"]:
            realized.append({"policy": policy, **row, "score_date": str(row["score_date"])})
        progress(
            f"{scenario}: {policy}: {run.retrainings} retrainings, {run.promotions} promoted, "
            f"{run.wall_seconds:.0f} s"
        )
    realized_frame = pd.DataFrame(realized)
    summary = summarize(realized_frame, runs, calendar.shift)
    files = write_results(out_dir, scenario, realized_frame, summary, runs, calendar)
    return BacktestResult(scenario, calendar, summary, realized_frame, runs, files, world_seconds)


def _may_replace(root: Path, marker: Path, wanted: dict, fresh: bool) -> None:
    """Refuse to delete a folder that is not a backtest's, or another world's replays unless
    ``fresh`` says so.

    Replays take CPU hours: a rerun with another seed or size into the same folder must not
    silently wipe them. A folder a crash left half-made (no marker yet, only a backtest's own
    entries) is rebuilt.
    """
    if not root.exists():
        return
    own = {"world", *POLICIES}
    strangers = sorted(p.name for p in root.iterdir() if p.name not in own)
    if strangers:
        raise BacktestError(
            f"{root} is not a backtest's folder (it holds {', '.join(strangers[:3])}): choose "
            "another output folder"
        )
    if fresh or not marker.exists():
        return
    found = json.loads(marker.read_text())
    changed = ", ".join(
        f"{key} {found.get(key)} → {value}"
        for key, value in wanted.items()
        if found.get(key) != value
    )
    raise BacktestError(
        f"{root} holds the replays of another world ({changed}): pass --fresh to replace them, "
        "or choose another output folder"
    )


def _in_child(function: Callable, *args):
    """``function(*args)`` in a fresh Python process; its return value, or its error raised here.

    A process of its own, not a multiprocessing worker: it exits like any command, so its exit
    hooks run and the temporary Prefect server it started stops with it (a pool worker is
    terminated without them and leaves the server running, holding the caller's pipes open).
    """
    with tempfile.TemporaryDirectory(prefix="churn-backtest-") as folder:
        call, answer = Path(folder) / "call.pickle", Path(folder) / "answer.pickle"
        call.write_bytes(pickle.dumps((function.__module__, function.__name__, args)))
        # Each replay starts a temporary Prefect server; on a machine busy with other replays its
        # start can pass Prefect's 20 s default, which would end hours of replay for nothing.
        # Set before the child imports Prefect: its settings are read once, at import.
        env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(EPHEMERAL_STARTUP_TIMEOUT_S)}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(call), str(answer)],
            env={**env, **os.environ},
            check=False,
        )
        if not answer.exists():
            raise BacktestError(
                f"{function.__name__} ended with exit code {done.returncode} and no answer "
                "(its output is above)"
            )
        outcome = pickle.loads(answer.read_bytes())
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


_CHILD = "import sys; from flows.backtest import child_main; child_main(sys.argv[1], sys.argv[2])"


def child_main(call: str, answer: str) -> None:
    """The child's side of :func:`_in_child`: run the call, write what it returned or raised."""
    import importlib

    module, name, args = pickle.loads(Path(call).read_bytes())
    try:
        outcome = getattr(importlib.import_module(module), name)(*args)
    except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
        outcome = exc
    try:
        payload = pickle.dumps(outcome)
    except Exception:  # noqa: BLE001 - an error that cannot travel is told by its text
        payload = pickle.dumps(BacktestError(f"{type(outcome).__name__}: {outcome}"))
    Path(answer).write_bytes(payload)
