"""The local stack and the deployments against the real thing: `churn up` starts a Prefect server,
a process worker and the MLflow UI; deployments come from prefect.yaml; the scoring deployment
runs through the worker; a drift event starts the retrain deployment; `churn down` stops it all.

The production backends (issue 14) where their servers are installed (`.ci/run` installs them):
PostgreSQL behind Prefect (``CHURN_PREFECT_DATABASE_URL``) and MLflow (``CHURN_MLFLOW_BACKEND_URI``),
Redis behind Feast's online store, each started by the tests (tests/integration/servers.py);
elsewhere the embedded defaults, and the test that needs PostgreSQL says why it skips.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tasks.core.settings import get_settings, reset_settings
from tasks.training.retrain import retrain

from .conftest import RETRAIN_WORLD_DAYS, SMALL_WORLD_GATES, WORLD_START

pytestmark = pytest.mark.integration

DAY = WORLD_START + timedelta(days=RETRAIN_WORLD_DAYS - 1)
GATES = {
    **SMALL_WORLD_GATES,
    # Any candidate the gates let through is a "promote": the drift retrain needs a margin it can meet.
    "CHURN_GATE_AUC_MARGIN": "-1",
}
DEPLOYMENTS = {
    "build-features/build-features": ("30 1 * * *", "Europe/Paris"),
    "score-nightly/score-nightly": ("0 2 * * *", "Europe/Paris"),
    "monitor/monitor-nightly": ("45 2 * * *", "Europe/Paris"),
    "evaluate-performance/performance-daily": ("0 6 * * *", "Europe/Paris"),
    "retrain/retrain-weekly": ("0 4 * * 0", "Europe/Paris"),
    "retrain/retrain-on-drift": (None, None),
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _api(url: str, path: str, body: dict | None = None) -> object:
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait_for_run(api: str, deployment_id: str, timeout_s: float = 300) -> dict:
    """The newest run of a deployment, once it reached a final state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = _api(
            api,
            "/flow_runs/filter",
            {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_DESC"},
        )
        final = [
            r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        ]
        if final:
            return final[0]
        time.sleep(2)
    raise AssertionError(f"no run of deployment {deployment_id} finished within {timeout_s} s")


def _server_or_none(request: pytest.FixtureRequest, name: str):
    """The session's server fixture ``name``, or None where it skips (binaries not installed)."""
    try:
        return request.getfixturevalue(name)
    except pytest.skip.Exception:
        return None


@pytest.fixture(scope="module")
def backends(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Settings of the stack's backends: PostgreSQL and Redis where installed, else embedded."""
    postgres = _server_or_none(request, "postgres_server")
    redis = _server_or_none(request, "redis_server")
    settings: dict[str, str] = {}
    secrets: list[str] = []
    if postgres is not None:
        # Fresh databases per module: the session's server is shared with other tests.
        settings["CHURN_PREFECT_DATABASE_URL"] = postgres.create_database("stack_prefect")
        settings["CHURN_MLFLOW_BACKEND_URI"] = postgres.create_database("stack_mlflow")
        secrets.append(postgres.password)
    else:
        mlflow_dir = tmp_path_factory.mktemp("stack_mlflow")
        settings["CHURN_MLFLOW_TRACKING_URI"] = f"sqlite:///{mlflow_dir}/mlflow.db"
    if redis is not None:
        settings["CHURN_ONLINE_STORE"] = "redis"
        settings["CHURN_REDIS_URL"] = redis.url
        secrets.append(redis.password)
    return {
        "env": settings,
        "postgres": postgres is not None,
        "postgres_server": postgres,
        "secrets": secrets,
    }


@pytest.fixture(scope="module")
def stack(retrain_world_home: Path, backends: dict):
    """`churn up` over the shared world with a champion in its own MLflow store; `churn down` after."""
    env = {
        **os.environ,
        "CHURN_HOME": str(retrain_world_home),
        "CHURN_MODEL_NAME": "telecom_churn_model",
        "CHURN_TIMEZONE": "Europe/Paris",
        "COLUMNS": "200",
        **GATES,
        **backends["env"],
    }
    env.pop("PREFECT_API_URL", None)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("CHURN_HOME", "CHURN_MODEL_NAME", *GATES, *backends["env"]):
            patch.setenv(name, env[name])
        reset_settings()
        first = retrain(get_settings(), DAY - timedelta(days=14), "test: a champion for the stack")
        assert first.promoted
    reset_settings()
    prefect_port, mlflow_port = _free_port(), _free_port()
    churn = [sys.executable, "-m", "flows"]
    up = subprocess.run(
        [*churn, "up", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield {
            "env": env,
            "api": f"http://127.0.0.1:{prefect_port}/api",
            "mlflow": f"http://127.0.0.1:{mlflow_port}",
            "up": up.stdout,
            "home": retrain_world_home,
            "backends": backends,
        }
    finally:
        down = subprocess.run(
            [*churn, "down"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert down.returncode == 0, down.stderr
        state = retrain_world_home / "stack" / "stack.json"
        assert not state.exists()


def test_up_starts_every_part_and_deploys_prefect_yaml(stack) -> None:
    assert stack["api"].removesuffix("/api") in stack["up"] and stack["mlflow"] in stack["up"]
    status = subprocess.run(
        [sys.executable, "-m", "flows", "status"],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stdout
    for part in ("prefect-server", "prefect-worker", "mlflow-ui"):
        assert part in status.stdout
    if stack["backends"]["postgres"]:
        assert "Prefect database" in status.stdout and "postgresql at 127.0.0.1:" in status.stdout
    for secret in stack["backends"]["secrets"]:
        assert secret not in status.stdout + stack["up"]
    with urllib.request.urlopen(f"{stack['mlflow']}/health", timeout=5) as response:
        assert response.status == 200

    deployments = _api(stack["api"], "/deployments/filter", {})
    by_name = {}
    flows = {f["id"]: f["name"] for f in _api(stack["api"], "/flows/filter", {})}
    for d in deployments:
        by_name[f"{flows[d['flow_id']]}/{d['name']}"] = d
    assert set(DEPLOYMENTS) <= set(by_name)
    for name, (cron, timezone) in DEPLOYMENTS.items():
        deployment = by_name[name]
        assert deployment["work_pool_name"] == "churn-process"
        assert deployment["description"]
        assert deployment["global_concurrency_limit"]["limit"] == 1
        schedules = [s["schedule"] for s in deployment["schedules"]]
        if cron is None:
            assert schedules == []
        else:
            assert schedules == [{"cron": cron, "timezone": timezone, "day_or": True}] or [
                (s["cron"], s["timezone"]) for s in schedules
            ] == [(cron, timezone)]
    limits = {
        gcl["name"]: gcl["limit"] for gcl in _api(stack["api"], "/v2/concurrency_limits/filter", {})
    }
    assert limits.get("churn-retrain") == 1 and limits.get("churn-score") == 1


def test_the_scoring_deployment_runs_through_the_worker(stack) -> None:
    deployments = _api(
        stack["api"], "/deployments/filter", {"deployments": {"name": {"any_": ["score-nightly"]}}}
    )
    deployment_id = deployments[0]["id"]
    _api(
        stack["api"],
        f"/deployments/{deployment_id}/create_flow_run",
        {"parameters": {"score_date": DAY.isoformat()}},
    )
    run = _wait_for_run(stack["api"], deployment_id)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["name"] == f"score-{DAY.isoformat()}"
    assert (stack["home"] / "retention" / f"high_risk_{DAY}.csv").is_file()


def test_a_drift_event_triggers_the_retrain_deployment(stack) -> None:
    deployments = _api(
        stack["api"],
        "/deployments/filter",
        {"deployments": {"name": {"any_": ["retrain-on-drift"]}}},
    )
    deployment_id = deployments[0]["id"]
    emitted = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "from prefect.events import emit_event\n"
                "emit_event(event='churn.drift.detected',"
                " resource={'prefect.resource.id': 'churn.model.telecom_churn_model'},"
                f" payload={{'score_date': '{DAY}', 'severity': 'retrain',"
                " 'features': 'charge_to_list_ratio, monthly_charge', 'model_version': 1,"
                " 'label_maturity': '0 of 13 training snapshots postdate the shift',"
                " 'follow_up': 'drift follow-up of the day due later'})\n"
            ),
        ],
        env={**stack["env"], "PREFECT_API_URL": stack["api"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert emitted.returncode == 0, emitted.stderr
    run = _wait_for_run(stack["api"], deployment_id, timeout_s=420)
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["parameters"]["as_of"] == DAY.isoformat()
    assert run["parameters"]["reason"].startswith(f"drift on {DAY} (retrain): charge_to_list_ratio")
    assert run["parameters"]["reason"].endswith(
        "; 0 of 13 training snapshots postdate the shift; drift follow-up of the day due later"
    )


def test_a_drift_follow_up_is_a_scheduled_run_of_the_retrain_deployment(stack) -> None:
    """Planned once per incident, scheduled in Prefect under its name, listed by `churn status`."""
    shift = date.today() + timedelta(days=30)  # in the future: the worker must not start it
    script = (
        "from datetime import date\n"
        "from flows.follow_up import schedule_follow_up\n"
        "from tasks.core.settings import get_settings\n"
        "from tasks.monitoring.follow_up import plan_follow_up\n"
        f"follow_up, planned = plan_follow_up(get_settings(), date.fromisoformat('{shift}'))\n"
        "assert planned\n"
        "print(schedule_follow_up(get_settings(), follow_up))\n"
    )
    env = {**stack["env"], "PREFECT_API_URL": stack["api"]}
    scheduled = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert scheduled.returncode == 0, scheduled.stderr
    run_id = scheduled.stdout.strip().splitlines()[-1]
    try:
        run = _api(stack["api"], f"/flow_runs/{run_id}")
        assert run["name"] == f"drift follow-up of {shift}"
        assert run["state_type"] == "SCHEDULED"
        due = shift + timedelta(days=51)
        assert run["parameters"] == {
            "as_of": due.isoformat(),
            "reason": f"drift follow-up of {shift}",
            "follow_up_of": shift.isoformat(),
        }
        # The morning after its day, 04:00 in the business time zone (Europe/Paris here).
        morning = datetime.combine(
            due + timedelta(days=1), time_of_day(4, 0), tzinfo=ZoneInfo("Europe/Paris")
        )
        assert datetime.fromisoformat(run["expected_start_time"]) == morning
        deployment = _api(stack["api"], f"/deployments/{run['deployment_id']}")
        assert deployment["name"] == "retrain-on-drift"

        # Drift asking again during the same incident schedules nothing new.
        again = subprocess.run(
            [sys.executable, "-c", script.replace("assert planned", "assert not planned")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        runs = _api(
            stack["api"],
            "/flow_runs/filter",
            {"flow_runs": {"name": {"any_": [f"drift follow-up of {shift}"]}}},
        )
        assert [r["id"] for r in runs] == [run_id]

        status = subprocess.run(
            [sys.executable, "-m", "flows", "status"],
            env=stack["env"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert f"drift follow-up of {shift}" in status.stdout
        assert run_id in status.stdout and "scheduled" in status.stdout
    finally:
        request = urllib.request.Request(f"{stack['api']}/flow_runs/{run_id}", method="DELETE")
        urllib.request.urlopen(request, timeout=10).close()
        (stack["home"] / "monitoring" / "follow_ups.json").unlink(missing_ok=True)


def test_the_prefect_ui_shows_the_deployments_and_their_schedules(stack, tmp_path) -> None:
    """A real browser (headless Chromium) renders the UI's deployments page.

    Runs where Chromium is installed (`.ci/run` installs Debian's `chromium`); the screenshot is
    written to $CHURN_UI_SCREENSHOT, or next to the test's temporary files.
    """
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        # The deployments and schedules are asserted through the API in
        # test_up_starts_every_part_and_deploys_prefect_yaml; this adds what a browser renders.
        pytest.skip(
            "headless Chromium is not installed here (`.ci/run` installs Debian's chromium; "
            "elsewhere: apt-get install chromium)"
        )
    url = stack["api"].removesuffix("/api") + "/deployments"
    flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1600,1000",
        "--virtual-time-budget=20000",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    for name in (
        "score-nightly",
        "monitor-nightly",
        "retrain-weekly",
        "retrain-on-drift",
        "performance-daily",
    ):
        assert name in dom, f"{name} is not on the deployments page"
    for schedule in (
        "At 02:00 AM every day",
        "At 02:45 AM every day",
        "At 04:00 AM, only on Sunday",
        "At 06:00 AM every day",
    ):
        assert schedule in dom
    screenshot = Path(os.environ.get("CHURN_UI_SCREENSHOT", tmp_path / "deployments.png"))
    subprocess.run(
        [browser, *flags, f"--screenshot={screenshot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot of the deployments page: {screenshot}")


def test_two_scoring_runs_at_once_never_overlap(stack) -> None:
    """The deployment's concurrency limit (1, ENQUEUE): the second run waits for the first."""
    from datetime import datetime

    deployments = _api(
        stack["api"], "/deployments/filter", {"deployments": {"name": {"any_": ["score-nightly"]}}}
    )
    deployment_id = deployments[0]["id"]
    created = [
        _api(
            stack["api"],
            f"/deployments/{deployment_id}/create_flow_run",
            {"parameters": {"score_date": day.isoformat()}},
        )["id"]
        for day in (DAY - timedelta(days=1), DAY - timedelta(days=2))
    ]
    deadline = time.monotonic() + 420
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = [_api(stack["api"], f"/flow_runs/{run_id}") for run_id in created]
        if all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") for r in runs):
            break
        time.sleep(2)
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"], [r["state"] for r in runs]
    spans = sorted(
        (datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"]))
        for r in runs
    )
    assert spans[0][1] <= spans[1][0], f"the two scoring runs overlapped: {spans}"


def test_four_flow_runs_at_once_on_postgresql_complete(stack) -> None:
    """Two scorings of different days, a monitoring and a retraining, created at once: all
    complete, and neither database logs a lock or a migration error (issue 14)."""
    if not stack["backends"]["postgres"]:
        pytest.skip(
            "PostgreSQL is not installed here (`.ci/run` installs Debian's postgresql): the "
            "stack ran on its embedded SQLite databases"
        )
    by_name = {
        d["name"]: d["id"]
        for d in _api(
            stack["api"],
            "/deployments/filter",
            {
                "deployments": {
                    "name": {"any_": ["score-nightly", "monitor-nightly", "retrain-weekly"]}
                }
            },
        )
    }

    def create(deployment: str, parameters: dict, job_env: dict | None = None) -> str:
        body: dict = {"parameters": parameters}
        if job_env:
            body["job_variables"] = {"env": job_env}
        return _api(stack["api"], f"/deployments/{by_name[deployment]}/create_flow_run", body)["id"]

    monitored = DAY - timedelta(days=3)
    first = create("score-nightly", {"score_date": monitored.isoformat()})
    assert _wait_for_ids(stack["api"], [first]) == ["COMPLETED"]
    created = [
        create("score-nightly", {"score_date": (DAY - timedelta(days=4)).isoformat()}),
        create("score-nightly", {"score_date": (DAY - timedelta(days=5)).isoformat()}),
        create("monitor-nightly", {"score_date": monitored.isoformat()}),
        # Shadow: the candidate stays challenger, so the monitoring run's champion (whose
        # predictions of that day it reads) cannot move under it.
        create(
            "retrain-weekly",
            {"as_of": DAY.isoformat(), "reason": "test: four runs at once"},
            {"CHURN_PROMOTION_MODE": "shadow"},
        ),
    ]
    states = _wait_for_ids(stack["api"], created, timeout_s=600)
    assert states == ["COMPLETED"] * 4, [
        _api(stack["api"], f"/flow_runs/{run_id}")["state"] for run_id in created
    ]
    logs = "\n".join(p.read_text(errors="replace") for p in (stack["home"] / "stack").glob("*.log"))
    for problem in ("database is locked", "deadlock detected", "DuplicateTable", "UniqueViolation"):
        assert problem not in logs


def _deployment_ids(api: str, names: list[str]) -> dict[str, str]:
    found = _api(api, "/deployments/filter", {"deployments": {"name": {"any_": names}}})
    return {d["name"]: d["id"] for d in found}


def _run_deployment(api: str, deployment_id: str, parameters: dict, timeout_s: float = 420) -> dict:
    """Create a flow run of the deployment and wait for its final state."""
    run_id = _api(api, f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters})[
        "id"
    ]
    _wait_for_ids(api, [run_id], timeout_s=timeout_s)
    return _api(api, f"/flow_runs/{run_id}")


def _high_risk_top(home: Path, day: date) -> dict[str, str]:
    with (home / "retention" / f"high_risk_{day}.csv").open(encoding="utf-8-sig") as handle:
        return next(csv.DictReader(handle))


def _champion_log_rows(env: dict, day: date, version: int) -> tuple[int, int]:
    """(rows, distinct subscribers) of the day's predictions by champion ``version``, read as an
    auditor would (earlier champions' predictions of the same day stay in the log: each model's
    own)."""
    query = (
        "SELECT count(*) AS n, count(DISTINCT subscriber_id) AS s FROM predictions "
        f"WHERE score_date = DATE '{day}' AND role = 'champion' AND model_version = {version}"
    )
    out = subprocess.run(
        [sys.executable, "-m", "flows", "audit", "sql", query, "--format", "csv"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    row = next(csv.DictReader(out.stdout.splitlines()))
    return int(row["n"]), int(row["s"])


def test_the_whole_night_runs_on_the_configured_backends(stack, tmp_path) -> None:
    """Features (and the online store), a retraining, the scoring and the monitoring, each through
    its deployment, then one online request that answers what the night's scoring said (issue 14:
    with PostgreSQL behind Prefect and MLflow and Redis behind Feast where they are installed)."""
    ids = _deployment_ids(
        stack["api"], ["build-features", "retrain-weekly", "score-nightly", "monitor-nightly"]
    )
    night = [
        ("build-features", {"start": DAY.isoformat(), "end": DAY.isoformat()}),
        ("retrain-weekly", {"as_of": DAY.isoformat(), "reason": "test: the whole night"}),
        ("score-nightly", {"score_date": DAY.isoformat()}),
        ("monitor-nightly", {"score_date": DAY.isoformat()}),
    ]
    for name, parameters in night:
        run = _run_deployment(stack["api"], ids[name], parameters)
        assert run["state_type"] == "COMPLETED", (name, run["state"])
    top = _high_risk_top(stack["home"], DAY)

    port = _free_port()
    env = {**stack["env"], "CHURN_ONLINE_FLUSH_SECONDS": "3600"}
    server = subprocess.Popen(
        [sys.executable, "-m", "flows", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"churn serve did not start: {server.stdout.read()}")
                time.sleep(0.5)
        request = urllib.request.Request(
            f"{base}/predict",
            data=json.dumps({"subscriber_id": int(top["subscriber_id"])}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output
    expected_store = "redis" if "CHURN_REDIS_URL" in stack["env"] else "sqlite"
    assert re.search(rf"online store\W+{expected_store} ", output), output
    for secret in stack["backends"]["secrets"]:
        assert secret not in output
    assert answer["model_version"] == int(top["model_version"])
    # The high-risk file rounds to 4 decimals; the online path scores the same features exactly.
    assert abs(answer["probability"] - float(top["probability"])) <= 5e-5, (answer, top)


def test_postgresql_restarted_during_a_scoring_run_then_a_rerun_gives_the_same_files(stack) -> None:
    """PostgreSQL (Prefect's and MLflow's database) stops and starts again while a scoring run is
    in flight: the run completes or ends in a failed state, never hangs; a rerun completes and
    leaves the same high-risk file and exactly one champion prediction per subscriber in the log.
    Last in the module: it restarts the session's database server."""
    postgres = stack["backends"]["postgres_server"]
    if postgres is None:
        pytest.skip(
            "PostgreSQL is not installed here (`.ci/run` installs Debian's postgresql): the "
            "stack ran on its embedded SQLite databases"
        )
    day = DAY
    csv_file = stack["home"] / "retention" / f"high_risk_{day}.csv"
    before = csv_file.read_bytes()
    version = int(_high_risk_top(stack["home"], day)["model_version"])
    rows_before = _champion_log_rows(stack["env"], day, version)
    assert rows_before[0] == rows_before[1] > 0

    deployment_id = _deployment_ids(stack["api"], ["score-nightly"])["score-nightly"]
    run_id = _api(
        stack["api"],
        f"/deployments/{deployment_id}/create_flow_run",
        {"parameters": {"score_date": day.isoformat()}},
    )["id"]
    deadline = time.monotonic() + 300
    while _api(stack["api"], f"/flow_runs/{run_id}")["state_type"] in ("SCHEDULED", "PENDING"):
        assert time.monotonic() < deadline, "the scoring run never started"
        time.sleep(0.5)
    postgres.stop()
    time.sleep(3)
    postgres.start()
    disturbed = _wait_for_ids(stack["api"], [run_id], timeout_s=420)[0]
    assert disturbed in ("COMPLETED", "FAILED", "CRASHED"), disturbed
    if disturbed != "COMPLETED":
        rerun = _run_deployment(stack["api"], deployment_id, {"score_date": day.isoformat()})
        assert rerun["state_type"] == "COMPLETED", rerun["state"]

    assert csv_file.read_bytes() == before
    assert _champion_log_rows(stack["env"], day, version) == rows_before
    verify = subprocess.run(
        [sys.executable, "-m", "flows", "audit", "verify"],
        env=stack["env"], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _wait_for_ids(api: str, run_ids: list[str], timeout_s: float = 300) -> list[str]:
    """The final state types of the runs, once all of them reached one."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [_api(api, f"/flow_runs/{run_id}") for run_id in run_ids]
        if all(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs):
            return [r["state_type"] for r in runs]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"runs still going after {timeout_s} s: {[r['state_type'] for r in runs]}"
            )
        time.sleep(2)
