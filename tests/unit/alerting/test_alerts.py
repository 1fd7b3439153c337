"""Alerts: rendering within Slack's limits, stable ids, no repeats, the outbox, no leaked secrets.

Delivery logic runs against a recording transport here; the real slack-sdk clients against a
local HTTP receiver are in ``tests/integration/test_slack.py``.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from tasks.alerting import delivery, render, slack
from tasks.alerting.alerts import Alert, failure_alert, flow_run_url, gate_alert
from tasks.alerting.delivery import flush_outbox, send_alert
from tasks.alerting.render import render_blocks, render_text
from tasks.core.settings import Settings

FAKE_WEBHOOK_PATH = "/services/TFAKE0000/BFAKE0000/s3cr3tW3bh00kV4lue"
FAKE_TOKEN = "xoxb-0000-fake-s3cr3t-t0ken"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings with every Slack value explicit, so the environment cannot leak in."""
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "slack_webhook_url": None,
        "slack_bot_token": None,
        "slack_channel": None,
        "prefect_ui_url": None,
        "alert_max_attempts": 3,
        "alert_backoff_seconds": 0.0,
    }
    values.update(overrides)
    return Settings(**values)


def drift_alert(**overrides: Any) -> Alert:
    values: dict[str, Any] = {
        "kind": "drift",
        "severity": "retrain",
        "title": "Drift on 2 features",
        "summary": "2 features alert against the reference of version 3",
        "fields": [
            ("tenure_days", "PSI 0.31 · KS 0.22 · alert"),
            ("data_gb_30d", "PSI 0.27 · KS 0.12 · alert"),
        ],
        "model_version": "3",
        "score_date": date(2026, 5, 1),
        "next_step": "retraining triggered",
        "run_url": "http://127.0.0.1:4200/runs/flow-run/1234",
    }
    values.update(overrides)
    return Alert(**values)


class RecordingTransport:
    """Stands in for Slack: returns the scripted outcomes in order, then success."""

    name = "webhook"

    def __init__(self, *outcomes: slack.Attempt):
        self.outcomes = list(outcomes)
        self.posts: list[tuple[str, list[dict[str, Any]]]] = []
        self.threads: list[str | None] = []

    def post(
        self, text: str, blocks: list[dict[str, Any]], thread_ts: str | None = None
    ) -> slack.Attempt:
        self.posts.append((text, blocks))
        self.threads.append(thread_ts)
        return self.outcomes.pop(0) if self.outcomes else slack.Attempt(ok=True)


SERVER_ERROR = slack.Attempt(ok=False, retryable=True, reason="HTTP 500: boom")
BAD_REQUEST = slack.Attempt(ok=False, retryable=False, reason="HTTP 400: invalid_blocks")


@pytest.fixture
def transport(monkeypatch: pytest.MonkeyPatch) -> RecordingTransport:
    recording = RecordingTransport()
    monkeypatch.setattr(delivery, "open_transport", lambda settings, api_url: recording)
    return recording


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr(slack, "_sleep", waited.append)
    return waited


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def outbox_records(settings: Settings) -> dict[str, dict[str, Any]]:
    folder = settings.alerts_dir / "outbox"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def sent_lines(settings: Settings) -> list[dict[str, Any]]:
    path = settings.alerts_dir / "sent.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---------------------------------------------------------------------------------- rendering


def test_blocks_and_fallback_carry_the_same_content() -> None:
    alert = drift_alert()
    blocks = render_blocks(alert)
    types = [b["type"] for b in blocks]
    assert types == ["header", "section", "section", "section", "context", "actions"]
    assert blocks[0]["text"]["text"] == ":arrows_counterclockwise: Drift on 2 features"
    assert blocks[1]["text"]["text"] == alert.summary
    assert [f["text"] for f in blocks[2]["fields"]] == [
        "*tenure_days*\nPSI 0.31 · KS 0.22 · alert",
        "*data_gb_30d*\nPSI 0.27 · KS 0.12 · alert",
    ]
    assert blocks[3]["text"]["text"] == "*Next:* retraining triggered"
    context = " ".join(e["text"] for e in blocks[4]["elements"])
    assert "model version 3" in context and "score date 2026-05-01" in context
    assert alert.alert_id in context
    assert blocks[5]["elements"][0]["url"] == "http://127.0.0.1:4200/runs/flow-run/1234"

    text = render_text(alert)
    for expected in (
        "[RETRAIN] drift: Drift on 2 features",
        alert.summary,
        "tenure_days: PSI 0.31 · KS 0.22 · alert",
        "Next: retraining triggered",
        "model version 3",
        "score date 2026-05-01",
        "Flow run: http://127.0.0.1:4200/runs/flow-run/1234",
    ):
        assert expected in text


def test_optional_parts_are_left_out_when_unknown() -> None:
    alert = Alert(kind="performance", severity="info", title="Realized AUC", summary="AUC 0.81")
    types = [b["type"] for b in render_blocks(alert)]
    assert types == ["header", "section", "context"]  # no fields, next step or run button
    assert "Flow run" not in render_text(alert)


def test_every_text_stays_within_slack_limits() -> None:
    alert = drift_alert(
        title="T" * 500,
        summary="a & b < c " * 1000,
        fields=[(f"feature_{i:02d} " + "x" * 300, "v & " * 2000) for i in range(75)],
        next_step="n" * 5000,
        model_version="9" * 4000,
    )
    blocks = render_blocks(alert)
    assert len(blocks) <= render.MAX_BLOCKS
    header = blocks[0]["text"]["text"]
    assert len(header) == render.HEADER_MAX and header.endswith("…")
    for block in blocks:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= render.SECTION_TEXT_MAX
        if block["type"] == "section" and "fields" in block:
            assert len(block["fields"]) <= render.FIELDS_PER_SECTION
            assert all(len(f["text"]) <= render.FIELD_TEXT_MAX for f in block["fields"])
        if block["type"] == "context":
            assert len(block["elements"]) <= 10
            assert all(len(e["text"]) <= render.CONTEXT_TEXT_MAX for e in block["elements"])
    shown = sum(len(b.get("fields", ())) for b in blocks)
    assert shown == render.MAX_FIELDS
    # The cut is said, not silent: 35 fields beyond the 40 shown.
    assert any("35 more field(s)" in json.dumps(b) for b in blocks)

    text = render_text(alert)
    assert len(text) <= render.TEXT_MAX and text.endswith("…")
    # No escaped entity cut in half anywhere (Slack would show a stray "&am").
    everything = json.dumps(blocks, ensure_ascii=False) + text
    assert not re.search(r"&(?!amp;|lt;|gt;)", everything)


def test_mrkdwn_specials_are_escaped() -> None:
    alert = drift_alert(summary="<!channel> PSI > 0.25 & KS < 0.2", fields=[("a<b", "x&y")])
    blocks = render_blocks(alert)
    assert blocks[1]["text"]["text"] == "&lt;!channel&gt; PSI &gt; 0.25 &amp; KS &lt; 0.2"
    assert blocks[2]["fields"][0]["text"] == "*a&lt;b*\nx&amp;y"
    assert "<!channel>" not in render_text(alert)


@pytest.mark.parametrize(
    "label",
    ["subscriber_id", "Subscriber ID", "subscriber-id", "msisdn", "email", "phone number"],
)
def test_a_field_naming_a_subscriber_is_refused(label: str) -> None:
    with pytest.raises(ValueError, match="aggregates only"):
        drift_alert(fields=[(label, "40213")])


def test_rendered_alerts_hold_only_the_given_aggregates(tmp_path: Path) -> None:
    # Each builder's output, rendered both ways: no subscriber-level key anywhere.
    settings = make_settings(tmp_path, prefect_ui_url="http://127.0.0.1:4200")
    built = [
        drift_alert(),
        gate_alert("telecom_churn_model", None, "keep_champion", {"min_auc": "0.61 < 0.65"}, {}),
        failure_alert("score-nightly", "run-1", RuntimeError("shard 3 failed"), settings),
    ]
    for alert in built:
        payload = json.dumps(render_blocks(alert)) + render_text(alert)
        assert "subscriber" not in payload.lower()
    blocks = render_blocks(built[0])
    assert [f["text"].split("\n")[0] for f in blocks[2]["fields"]] == [
        "*tenure_days*",
        "*data_gb_30d*",
    ]


# ---------------------------------------------------------------------------------- identity


def test_alert_id_is_stable_and_covers_identity_only() -> None:
    alert = drift_alert()
    # Pinned: a change here re-posts every alert already sent; make it only on purpose.
    assert alert.alert_id == drift_alert().alert_id == "72e344a4a0d329f9946d57a4"
    # Wording, severity, next step and the run link do not make a new alert (a rerun of the day).
    assert drift_alert(summary="other words", severity="alert").alert_id == alert.alert_id
    assert drift_alert(next_step="x", run_url="http://h/runs/flow-run/2").alert_id == alert.alert_id
    # What was found, for which day and model, does.
    for changed in (
        {"kind": "performance"},
        {"title": "Drift on 3 features"},
        {"score_date": date(2026, 5, 2)},
        {"model_version": "4"},
        {"model_version": None},
        {"fields": [("tenure_days", "PSI 0.31 · KS 0.22 · alert")]},
        {"fields": list(reversed(alert.fields))},
    ):
        assert drift_alert(**changed).alert_id != alert.alert_id, changed


def test_a_given_alert_id_is_kept_and_checked() -> None:
    assert drift_alert(alert_id="drift-2026-05-01").alert_id == "drift-2026-05-01"
    with pytest.raises(ValueError, match="alert_id"):
        drift_alert(alert_id="../../etc/passwd")


def test_alert_round_trips_through_its_dict() -> None:
    alert = drift_alert()
    assert Alert.from_dict(json.loads(json.dumps(alert.to_dict()))) == alert


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"severity": "critical"}, "severity"),
        ({"title": "  "}, "title is empty"),
        ({"summary": ""}, "summary is empty"),
        ({"run_url": "javascript:alert(1)"}, "run_url"),
        ({"fields": [("only a label",)]}, "pairs"),
    ],
)
def test_malformed_alerts_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        drift_alert(**overrides)


# ---------------------------------------------------------------------------------- builders


def test_flow_run_url(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, prefect_ui_url="http://127.0.0.1:4200/")
    assert flow_run_url(settings, "abc") == "http://127.0.0.1:4200/runs/flow-run/abc"
    assert flow_run_url(settings, None) is None
    assert flow_run_url(make_settings(tmp_path), "abc") is None


def test_failure_alert_names_the_error_without_traceback(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, prefect_ui_url="http://127.0.0.1:4200")
    try:
        raise ValueError("shard 3 has no rows\nTraceback-ish second line\n  detail")
    except ValueError as exc:
        alert = failure_alert("score-nightly", "9f1c", exc, settings)
    assert alert.kind == "failure" and alert.severity == "error"
    assert alert.title == "Flow score-nightly failed"
    assert alert.summary == "ValueError: shard 3 has no rows"
    assert alert.run_url == "http://127.0.0.1:4200/runs/flow-run/9f1c"
    assert ("Flow run", "9f1c") in alert.fields
    assert "second line" not in render_text(alert)
    assert failure_alert("f", None, "disk full", settings).summary == "Error: disk full"


def test_gate_alert_from_plain_values() -> None:
    alert = gate_alert(
        "telecom_churn_model",
        None,
        "keep_champion",
        [("beats_champion_auc", "0.801 < 0.812 + 0.002"), ("fairness", "gender dp 0.55 < 0.6")],
        {"roc_auc": 0.80123, "calibration_error": float("nan"), "rows": 12000},
        as_of=date(2026, 5, 1),
    )
    assert alert.kind == "gate" and alert.severity == "warn"
    assert alert.model_version is None and alert.score_date == date(2026, 5, 1)
    assert "2 gate(s) failed (beats_champion_auc, fairness)" in alert.summary
    assert alert.fields == (
        ("Verdict", "keep_champion"),
        ("✗ beats_champion_auc", "0.801 < 0.812 + 0.002"),
        ("✗ fairness", "gender dp 0.55 < 0.6"),
        ("roc_auc", "0.8012"),
        ("calibration_error", "n/a"),
        ("rows", "12,000"),
    )
    assert "champion keeps scoring" in (alert.next_step or "")

    promoted = gate_alert("telecom_churn_model", 7, "promote", {}, {"roc_auc": 0.83})
    assert promoted.severity == "info" and promoted.model_version == "7"
    assert "version 7 passed every gate" in promoted.summary
    with pytest.raises(ValueError, match="verdict"):
        gate_alert("m", None, "maybe", {}, {})


# ---------------------------------------------------------------------------------- delivery


def test_no_slack_configured_logs_and_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    caplog.set_level(logging.INFO, logger="tasks.alerting.delivery")
    delivery = send_alert(settings, drift_alert())
    assert (delivery.status, delivery.transport, delivery.attempts) == ("logged", "log", 0)
    assert "Drift on 2 features" in caplog.text and "tenure_days" in caplog.text
    record = outbox_records(settings)[delivery.alert_id]
    assert record["state"] == "logged" and "CHURN_SLACK_WEBHOOK_URL" in record["reason"]
    assert Alert.from_dict(record["alert"]) == drift_alert()
    assert sent_lines(settings) == []
    # A record, not a queue: flushing leaves it alone.
    assert flush_outbox(settings) == []
    assert delivery.outbox_path is not None and delivery.outbox_path.exists()


def test_a_bot_token_without_a_channel_only_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, slack_bot_token=FAKE_TOKEN)
    delivery = send_alert(settings, drift_alert())
    assert delivery.status == "logged"
    assert "CHURN_SLACK_CHANNEL" in caplog.text


def test_an_alert_is_posted_once(tmp_path: Path, transport: RecordingTransport) -> None:
    settings = make_settings(tmp_path)
    first = send_alert(settings, drift_alert())
    again = send_alert(settings, drift_alert(summary="same finding, reworded"))
    assert (first.status, first.attempts) == ("sent", 1)
    assert (again.status, again.transport) == ("duplicate", None)
    assert len(transport.posts) == 1
    text, blocks = transport.posts[0]
    assert text == render_text(drift_alert()) and blocks == render_blocks(drift_alert())
    [line] = sent_lines(settings)
    assert line["alert_id"] == first.alert_id and line["transport"] == "webhook"
    # Another process sees the same record (nothing is kept in memory).
    assert send_alert(make_settings(tmp_path), drift_alert()).status == "duplicate"
    assert not (settings.alerts_dir / "outbox").exists()


def test_a_torn_line_in_the_sent_record_is_skipped(
    tmp_path: Path, transport: RecordingTransport
) -> None:
    settings = make_settings(tmp_path)
    settings.alerts_dir.mkdir(parents=True)
    (settings.alerts_dir / "sent.jsonl").write_text('{"alert_id": "ab')  # crash mid-append
    send_alert(settings, drift_alert())
    lines = (settings.alerts_dir / "sent.jsonl").read_text().splitlines()
    assert lines[0] == '{"alert_id": "ab' and json.loads(lines[1])["alert_id"]
    assert send_alert(settings, drift_alert()).status == "duplicate"


def test_retries_back_off_then_queue_and_a_flush_delivers_once(
    tmp_path: Path, transport: RecordingTransport, sleeps: list[float]
) -> None:
    settings = make_settings(tmp_path, alert_max_attempts=4, alert_backoff_seconds=0.5)
    transport.outcomes = [SERVER_ERROR] * 4
    delivery = send_alert(settings, drift_alert())
    assert (delivery.status, delivery.attempts) == ("queued", 4)
    assert delivery.reason == "HTTP 500: boom"
    assert sleeps == [0.5, 1.0, 2.0]  # doubling; no wait after the last attempt
    record = outbox_records(settings)[delivery.alert_id]
    assert (record["state"], record["attempts"], record["transport"]) == ("queued", 4, "webhook")
    assert Alert.from_dict(record["alert"]) == drift_alert()

    [flushed] = flush_outbox(settings)
    assert (flushed.status, flushed.attempts) == ("sent", 1)
    assert outbox_records(settings) == {}
    assert len(transport.posts) == 5 and len(sent_lines(settings)) == 1
    assert sent_lines(settings)[0]["attempts"] == 5  # every attempt, across runs
    assert flush_outbox(settings) == []
    assert send_alert(settings, drift_alert()).status == "duplicate"


def test_retry_after_is_honoured(
    tmp_path: Path, transport: RecordingTransport, sleeps: list[float]
) -> None:
    settings = make_settings(tmp_path, alert_backoff_seconds=0.1)
    limited = slack.Attempt(ok=False, retryable=True, retry_after=3.0, reason="HTTP 429")
    transport.outcomes = [limited]
    assert send_alert(settings, drift_alert()).status == "sent"
    assert sleeps == [3.0]


def test_a_long_retry_after_is_left_to_the_outbox(
    tmp_path: Path, transport: RecordingTransport, sleeps: list[float]
) -> None:
    settings = make_settings(tmp_path, alert_max_attempts=5)
    wait = slack.MAX_RETRY_AFTER_SECONDS + 1
    transport.outcomes = [slack.Attempt(ok=False, retryable=True, retry_after=wait)]
    delivery = send_alert(settings, drift_alert())
    assert (delivery.status, delivery.attempts, sleeps) == ("queued", 1, [])


def test_a_refusal_is_not_retried(
    tmp_path: Path, transport: RecordingTransport, sleeps: list[float]
) -> None:
    settings = make_settings(tmp_path, alert_max_attempts=4)
    transport.outcomes = [BAD_REQUEST]
    delivery = send_alert(settings, drift_alert())
    assert (delivery.status, delivery.attempts, sleeps) == ("failed", 1, [])
    record = outbox_records(settings)[delivery.alert_id]
    assert (record["state"], record["reason"]) == ("failed", "HTTP 400: invalid_blocks")
    # Not retried by a flush; only on request, after the cause is fixed.
    assert flush_outbox(settings) == [] and len(transport.posts) == 1
    [retried] = flush_outbox(settings, retry_failed=True)
    assert retried.status == "sent" and outbox_records(settings) == {}


def test_a_flush_drops_what_another_process_already_sent(
    tmp_path: Path, transport: RecordingTransport
) -> None:
    settings = make_settings(tmp_path)
    transport.outcomes = [SERVER_ERROR] * 3
    queued = send_alert(settings, drift_alert())
    delivery._record_sent(settings, drift_alert(), "webhook", 1)  # the other process
    [flushed] = flush_outbox(settings)
    assert flushed.status == "duplicate" and outbox_records(settings) == {}
    assert len(transport.posts) == 3 and queued.status == "queued"


def test_flush_with_nothing_configured_keeps_the_queue(
    tmp_path: Path, transport: RecordingTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    transport.outcomes = [SERVER_ERROR] * 3
    send_alert(settings, drift_alert())
    monkeypatch.setattr(delivery, "open_transport", lambda settings, api_url: None)
    assert flush_outbox(settings) == []
    assert [r["state"] for r in outbox_records(settings).values()] == ["queued"]


def test_flush_skips_a_corrupt_outbox_file(tmp_path: Path, transport: RecordingTransport) -> None:
    settings = make_settings(tmp_path)
    outbox = settings.alerts_dir / "outbox"
    outbox.mkdir(parents=True)
    (outbox / "broken.json").write_text("{not json")
    assert flush_outbox(settings) == [] and (outbox / "broken.json").exists()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": ["7"]}, 7.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_header(headers: dict[str, Any], expected: float | None) -> None:
    assert slack._retry_after(headers) == expected


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (slack._retry_after({"Retry-After": when}) or 0) <= 31


# ---------------------------------------------------------------------------------- secrets


def everything_written(settings: Settings) -> str:
    return "\n".join(
        p.read_text() for p in settings.alerts_dir.rglob("*") if p.is_file() and p.name != ".lock"
    )


def test_secrets_stay_out_of_logs_results_and_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = closed_port()  # connection refused: the real clients, failing fast
    webhook = f"http://127.0.0.1:{port}{FAKE_WEBHOOK_PATH}"
    by_webhook = make_settings(tmp_path, slack_webhook_url=webhook, alert_max_attempts=2)
    by_bot = make_settings(
        tmp_path, slack_bot_token=FAKE_TOKEN, slack_channel="#churn", alert_max_attempts=2
    )
    deliveries = [
        send_alert(by_webhook, drift_alert()),
        send_alert(by_bot, drift_alert(title="bot"), slack_api_url=f"http://127.0.0.1:{port}/api/"),
    ]
    assert [d.status for d in deliveries] == ["queued", "queued"]
    assert deliveries[0].reason and "URLError" in deliveries[0].reason
    deliveries += flush_outbox(by_webhook)

    seen = caplog.text + repr(deliveries) + everything_written(by_webhook)
    for secret in (FAKE_WEBHOOK_PATH, "s3cr3tW3bh00kV4lue", FAKE_TOKEN, "s3cr3t-t0ken"):
        assert secret not in seen


def test_a_client_error_naming_the_url_is_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # slack-sdk refuses a non-http URL with "Invalid URL detected: <the URL>", and logs it.
    caplog.set_level(logging.DEBUG)
    settings = make_settings(tmp_path, slack_webhook_url=f"ftp://hooks.example{FAKE_WEBHOOK_PATH}")
    delivery = send_alert(settings, drift_alert())
    assert delivery.status == "failed" and delivery.attempts == 1
    assert delivery.reason == "SlackRequestError: Invalid URL detected: [redacted]"
    assert "Invalid URL detected: [redacted]" in caplog.text  # slack-sdk's own line, redacted
    seen = caplog.text + repr(delivery) + everything_written(settings)
    assert "s3cr3tW3bh00kV4lue" not in seen and "hooks.example" not in seen


def test_failure_alert_scrubs_secrets_from_the_error(tmp_path: Path) -> None:
    webhook = f"https://hooks.slack.com{FAKE_WEBHOOK_PATH}"
    settings = make_settings(tmp_path, slack_webhook_url=webhook, slack_bot_token=FAKE_TOKEN)
    error = ConnectionError(
        f"POST {webhook} with {FAKE_TOKEN} and xoxp-other-token via https://u:pw@proxy:3128 failed"
    )
    alert = failure_alert("monitor", "r1", error, settings)
    assert alert.summary == (
        "ConnectionError: POST [redacted] with [redacted] and [redacted] "
        "via https://[redacted]@proxy:3128 failed"
    )


def test_a_secret_inside_an_alert_never_reaches_slack(
    tmp_path: Path, transport: RecordingTransport
) -> None:
    settings = make_settings(tmp_path, slack_bot_token=FAKE_TOKEN, slack_channel="#c")
    send_alert(settings, drift_alert(fields=[("note", f"token {FAKE_TOKEN}")]))
    text, blocks = transport.posts[0]
    assert FAKE_TOKEN not in text + json.dumps(blocks)
    assert "[redacted]" in text
