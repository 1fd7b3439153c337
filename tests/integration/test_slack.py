"""The real slack-sdk clients (webhook and bot token) against a local receiver on 127.0.0.1.

The receiver records every request and answers from a script (status, headers, body, or a
dropped connection), then with Slack's success answer. Backoff is 10 ms; only the
``Retry-After: 1`` cases wait a real second, to show the header is obeyed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import pytest

from tasks.alerting.alerts import Alert
from tasks.alerting.delivery import flush_outbox, send_alert
from tasks.alerting.render import render_blocks, render_text
from tasks.core.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

WEBHOOK_PATH = "/services/TFAKE0000/BFAKE0000/s3cr3tW3bh00kV4lue"
TOKEN = "xoxb-0000-fake-s3cr3t-t0ken"
CHANNEL = "#churn-alerts"
DROP = "drop"
"""Scripted answer: close the connection without a response (a connection error)."""


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class Receiver:
    """A stand-in for Slack: records requests, answers from a script, then with success."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: deque[tuple[int, dict[str, str], str] | str] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.receiver = self  # type: ignore[attr-defined]
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def reply(self, *answers: tuple[int, dict[str, str], str] | str) -> None:
        self.script.extend(answers)

    def record(self, path: str, headers: dict[str, str], raw: bytes) -> tuple | str:
        with self._lock:
            self.requests.append(Request(path, headers, json.loads(raw), time.monotonic()))
            if self.script:
                return self.script.popleft()
        if path.endswith("/chat.postMessage"):
            body = {"ok": True, "channel": "C0FAKE", "ts": "1700000000.000100"}
            return 200, {"Content-Type": "application/json"}, json.dumps(body)
        return 200, {"Content-Type": "text/plain"}, "ok"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = self.server.receiver.record(self.path, dict(self.headers), raw)  # type: ignore[attr-defined]
        if answer == DROP:
            self.close_connection = True
            return
        status, headers, body = answer
        data = body.encode("utf-8")
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test reads ``requests``


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # straight to 127.0.0.1
    with Receiver() as running:
        yield running


def webhook_settings(tmp_path: Path, receiver: Receiver, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "slack_webhook_url": receiver.base_url + WEBHOOK_PATH,
        "slack_bot_token": None,
        "slack_channel": None,
        "prefect_ui_url": "http://127.0.0.1:4200",
        "alert_max_attempts": 3,
        "alert_backoff_seconds": 0.01,
    }
    values.update(overrides)
    return Settings(**values)


def bot_settings(tmp_path: Path, receiver: Receiver, **overrides: Any) -> Settings:
    values = {"slack_webhook_url": None, "slack_bot_token": TOKEN, "slack_channel": CHANNEL}
    return webhook_settings(tmp_path, receiver, **{**values, **overrides})


def api_url(receiver: Receiver) -> str:
    return receiver.base_url + "/api/"


def drift_alert(**overrides: Any) -> Alert:
    values: dict[str, Any] = {
        "kind": "drift",
        "severity": "retrain",
        "title": "Drift on 2 features",
        "summary": "2 features alert against the reference of version 3",
        "fields": [("tenure_days", "PSI 0.31 · KS 0.22"), ("data_gb_30d", "PSI 0.27 · KS 0.12")],
        "model_version": "3",
        "score_date": "2026-05-01",
        "next_step": "retraining triggered",
        "run_url": "http://127.0.0.1:4200/runs/flow-run/1234",
    }
    values.update(overrides)
    return Alert(**values)


def outbox(settings: Settings) -> dict[str, dict[str, Any]]:
    folder = settings.alerts_dir / "outbox"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}


def test_webhook_posts_blocks_and_fallback(tmp_path: Path, receiver: Receiver) -> None:
    alert = drift_alert()
    delivery = send_alert(webhook_settings(tmp_path, receiver), alert)
    assert (delivery.status, delivery.transport, delivery.attempts) == ("sent", "webhook", 1)
    [request] = receiver.requests
    assert request.path == WEBHOOK_PATH
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.body == {"text": render_text(alert), "blocks": render_blocks(alert)}
    assert request.body["blocks"][0]["type"] == "header"


def test_bot_token_posts_to_chat_post_message(tmp_path: Path, receiver: Receiver) -> None:
    alert = drift_alert()
    delivery = send_alert(bot_settings(tmp_path, receiver), alert, slack_api_url=api_url(receiver))
    assert (delivery.status, delivery.transport) == ("sent", "bot")
    [request] = receiver.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"  # only Slack sees the token
    assert request.body == {
        "channel": CHANNEL,
        "text": render_text(alert),
        "blocks": render_blocks(alert),
    }


@pytest.mark.parametrize("path", ["webhook", "bot"])
def test_server_errors_and_dropped_connections_are_retried(
    tmp_path: Path, receiver: Receiver, path: str
) -> None:
    settings = (webhook_settings if path == "webhook" else bot_settings)(
        tmp_path, receiver, alert_max_attempts=4
    )
    receiver.reply((500, {}, "boom"), DROP, (503, {}, "unavailable"))
    delivery = send_alert(settings, drift_alert(), slack_api_url=api_url(receiver))
    assert (delivery.status, delivery.attempts) == ("sent", 4)
    assert len(receiver.requests) == 4
    assert len({json.dumps(r.body, sort_keys=True) for r in receiver.requests}) == 1
    assert outbox(settings) == {}


def test_a_temporary_api_error_is_retried(tmp_path: Path, receiver: Receiver) -> None:
    # chat.postMessage can answer 200 with ok=false and a temporary error code.
    settings = bot_settings(tmp_path, receiver)
    answer = '{"ok":false,"error":"internal_error"}'
    receiver.reply((200, {"Content-Type": "application/json"}, answer))
    delivery = send_alert(settings, drift_alert(), slack_api_url=api_url(receiver))
    assert (delivery.status, delivery.attempts) == ("sent", 2)


@pytest.mark.parametrize("path", ["webhook", "bot"])
def test_rate_limit_waits_for_retry_after(tmp_path: Path, receiver: Receiver, path: str) -> None:
    settings = (webhook_settings if path == "webhook" else bot_settings)(tmp_path, receiver)
    limited = json.dumps({"ok": False, "error": "ratelimited"})
    receiver.reply((429, {"Retry-After": "1", "Content-Type": "application/json"}, limited))
    delivery = send_alert(settings, drift_alert(), slack_api_url=api_url(receiver))
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    first, second = receiver.requests
    assert second.at - first.at >= 0.95  # Retry-After, not the 10 ms backoff


def test_persistent_failure_is_queued_then_flushed_exactly_once(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = webhook_settings(tmp_path, receiver)
    receiver.reply(*[(500, {}, f"internal error at {WEBHOOK_PATH}")] * 3)
    queued = send_alert(settings, drift_alert())
    assert (queued.status, queued.attempts) == ("queued", 3)
    assert len(receiver.requests) == 3
    record = outbox(settings)[queued.alert_id]
    assert record["state"] == "queued" and record["reason"].startswith("HTTP 500")

    delivered = flush_outbox(settings)
    assert [(d.status, d.alert_id) for d in delivered] == [("sent", queued.alert_id)]
    assert outbox(settings) == {} and len(receiver.requests) == 4
    assert flush_outbox(settings) == []
    assert send_alert(settings, drift_alert()).status == "duplicate"
    assert len(receiver.requests) == 4  # delivered once and only once

    # The webhook path (the secret part of its URL) appeared in an error body: nowhere here.
    written = "".join(p.read_text() for p in settings.alerts_dir.rglob("*") if p.is_file())
    seen = caplog.text + repr(queued) + repr(delivered) + written
    assert "s3cr3tW3bh00kV4lue" not in seen and "[redacted]" in record["reason"]


@pytest.mark.parametrize(
    ("path", "answer", "reason"),
    [
        ("webhook", (400, {}, "invalid_blocks"), "HTTP 400: invalid_blocks"),
        ("webhook", (404, {}, "no_service"), "HTTP 404: no_service"),
        (
            "bot",
            (200, {"Content-Type": "application/json"}, '{"ok":false,"error":"channel_not_found"}'),
            "Slack API error: channel_not_found",
        ),
        (
            "bot",
            (401, {"Content-Type": "application/json"}, '{"ok":false,"error":"invalid_auth"}'),
            "HTTP 401: invalid_auth",
        ),
    ],
)
def test_a_refusal_is_not_retried(
    tmp_path: Path, receiver: Receiver, path: str, answer: tuple, reason: str
) -> None:
    settings = (webhook_settings if path == "webhook" else bot_settings)(
        tmp_path, receiver, alert_max_attempts=4
    )
    receiver.reply(answer)
    delivery = send_alert(settings, drift_alert(), slack_api_url=api_url(receiver))
    assert (delivery.status, delivery.attempts, delivery.reason) == ("failed", 1, reason)
    assert len(receiver.requests) == 1
    assert outbox(settings)[delivery.alert_id]["state"] == "failed"
    assert flush_outbox(settings, slack_api_url=api_url(receiver)) == []
    assert len(receiver.requests) == 1


def test_concurrent_senders_post_once(tmp_path: Path, receiver: Receiver) -> None:
    settings = webhook_settings(tmp_path, receiver)
    results: list[str] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        results.append(send_alert(settings, drift_alert()).status)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(results) == ["duplicate", "duplicate", "duplicate", "sent"]
    assert len(receiver.requests) == 1


def test_another_process_does_not_post_it_again(tmp_path: Path, receiver: Receiver) -> None:
    settings = webhook_settings(tmp_path, receiver)
    assert send_alert(settings, drift_alert()).status == "sent"
    script = (
        "from tasks.alerting.delivery import send_alert\n"
        "from tasks.core.settings import get_settings\n"
        "from tests.integration.test_slack import drift_alert\n"
        "print(send_alert(get_settings(), drift_alert()).status)\n"
    )
    env = {
        **os.environ,
        "CHURN_HOME": str(settings.home),
        "CHURN_SLACK_WEBHOOK_URL": receiver.base_url + WEBHOOK_PATH,
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "duplicate"
    assert len(receiver.requests) == 1
