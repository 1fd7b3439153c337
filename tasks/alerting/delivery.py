"""The one notifier of churn-ops: Slack alerts with a plain-text fallback, an outbox, no repeats.

An :class:`Alert` carries aggregates only (feature/PSI/KS rows, gate results, metrics as text:
never a subscriber). :func:`send_alert` renders it once as Block Kit plus a plain-text fallback
and posts it through slack-sdk: the incoming webhook when ``CHURN_SLACK_WEBHOOK_URL`` is set,
else ``chat.postMessage`` with ``CHURN_SLACK_BOT_TOKEN`` and ``CHURN_SLACK_CHANNEL``, else it only
logs the alert. State under ``$CHURN_HOME/alerts/``:

``sent.jsonl``
    append-only, one JSON line per alert delivered: ``alert_id``, ``sent_at``, ``transport``,
    ``attempts``, ``kind``, ``severity``, ``title``; with a bot token also Slack's ``ts`` of the
    message and, for a reply, the ``thread_ts`` it answered. An id found here is never posted
    again, by any process: the check, the post and the append happen under an exclusive file lock.
    An alert with ``reply_to`` is posted in the thread of that alert's ``ts`` recorded here
    (delivered by bot token); when the alert it answers still waits in the outbox, that one is
    delivered first, so the two arrive in order and in one thread.
``outbox/<alert_id>.json``
    written atomically: ``state`` (``queued``: to retry; ``failed``: refused by Slack, kept with
    its ``reason`` but not retried; ``logged``: no Slack configured, kept for the record),
    ``reason``, ``attempts``, ``transport``, ``queued_at``, ``updated_at`` and the ``alert``.
    :func:`flush_outbox` retries the queued ones and removes each file once delivered.

The webhook URL and the bot token are read from their ``SecretStr`` only where a client is
built; every reason, log line and file this module writes goes through a redactor first.

The parts: :class:`~tasks.alerting.alerts.Alert` and its builders in :mod:`tasks.alerting.alerts`,
Block Kit and the plain text in :mod:`tasks.alerting.render`, the webhook and bot transports
(where the ``SecretStr`` is read) in :mod:`tasks.alerting.slack`, the redactor in
:mod:`tasks.alerting.redact`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tasks.alerting.alerts import Alert
from tasks.alerting.redact import Redactor
from tasks.alerting.render import render_blocks, render_text
from tasks.alerting.slack import SLACK_API_URL, open_transport, post_with_retries
from tasks.core.files import atomic_path
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)

DeliveryStatus = Literal["sent", "duplicate", "queued", "failed", "logged"]
_LOG_LEVEL = {
    "info": logging.INFO,
    "warn": logging.WARNING,
    "alert": logging.WARNING,
    "retrain": logging.WARNING,
    "error": logging.ERROR,
}


# --------------------------------------------------------------------------------------------
# Delivery, the sent record and the outbox


@dataclass(frozen=True)
class Delivery:
    """What became of one alert.

    ``status``: ``sent`` (posted now), ``duplicate`` (posted before: not again), ``queued`` (kept
    in the outbox to retry), ``failed`` (refused by Slack, e.g. a 4xx: kept in the outbox with
    the reason, not retried), ``logged`` (no Slack configured: logged and recorded only).
    ``transport`` is ``webhook``, ``bot``, ``log`` or None (duplicate). ``reason`` never holds a
    secret. ``ts`` is Slack's id of the posted message (bot token only; for ``duplicate``, the
    one recorded when it was first sent).
    """

    alert_id: str
    status: DeliveryStatus
    transport: str | None = None
    attempts: int = 0
    reason: str | None = None
    outbox_path: Path | None = field(default=None, compare=False)
    ts: str | None = None


def send_alert(settings: Settings, alert: Alert, *, slack_api_url: str = SLACK_API_URL) -> Delivery:
    """Deliver ``alert`` once: post it to Slack (with retries), or keep it in the outbox.

    Holds ``$CHURN_HOME/alerts/.lock`` from the duplicate check to the ``sent.jsonl`` append,
    so concurrent processes never post the same alert twice.

    Args:
        settings: Slack destination, retry policy and data root.
        alert: what to say.
        slack_api_url: base URL of the Slack Web API for the bot-token path (tests).
    """
    with _alerts_lock(settings):
        return _deliver_locked(settings, alert, slack_api_url)


def flush_outbox(
    settings: Settings, *, retry_failed: bool = False, slack_api_url: str = SLACK_API_URL
) -> list[Delivery]:
    """Retry every queued alert, oldest first, removing each file once delivered.

    Called at the start of each monitoring run. ``failed`` entries (refused by Slack) are only
    retried with ``retry_failed=True`` (after fixing the cause); ``logged`` ones never: they were
    raised while no Slack was configured and are kept for the record. With no Slack configured
    nothing is attempted and the outbox stays as it is.

    Returns:
        One :class:`Delivery` per entry attempted.
    """
    outbox = _outbox_dir(settings)
    if not outbox.is_dir():
        return []
    wanted = {"queued", "failed"} if retry_failed else {"queued"}
    pending: list[tuple[str, Path]] = []
    for path in outbox.glob("*.json"):
        record = _read_outbox(path)
        if record is not None and record.get("state") in wanted:
            pending.append((str(record.get("queued_at", "")), path))
    if not pending:
        return []
    if open_transport(settings, slack_api_url) is None:
        logger.warning(
            "no Slack destination configured: %d alert(s) stay in the outbox", len(pending)
        )
        return []
    deliveries = []
    for _, path in sorted(pending):
        with _alerts_lock(settings):
            record = _read_outbox(path)  # again, under the lock: another process may have sent it
            if record is None or record.get("state") not in wanted:
                continue
            try:
                alert = Alert.from_dict(record["alert"])
            except (KeyError, TypeError, ValueError) as exc:
                logger.error(
                    "outbox file %s is not a valid alert (%s); left as it is", path.name, exc
                )
                continue
            deliveries.append(_deliver_locked(settings, alert, slack_api_url, previous=record))
    return deliveries


def _deliver_locked(
    settings: Settings,
    alert: Alert,
    slack_api_url: str,
    previous: Mapping[str, Any] | None = None,
) -> Delivery:
    redact = Redactor(settings)
    sent = _sent_records(settings)
    if alert.alert_id in sent:
        _outbox_path(settings, alert.alert_id).unlink(missing_ok=True)
        logger.info("alert %s was already sent: not posting it again", alert.alert_id)
        return Delivery(alert.alert_id, "duplicate", ts=sent[alert.alert_id].get("ts"))
    # Alerts are built from our own text; redacting the payload too keeps a secret that slipped
    # into a field (an error message) out of Slack as well.
    text = redact(render_text(alert))
    blocks = json.loads(redact(json.dumps(render_blocks(alert), ensure_ascii=False)))
    transport = open_transport(settings, slack_api_url)
    if transport is None:
        logger.log(_LOG_LEVEL[alert.severity], "alert (no Slack configured):\n%s", text)
        reason = (
            "no Slack destination configured (set CHURN_SLACK_WEBHOOK_URL, or "
            "CHURN_SLACK_BOT_TOKEN with CHURN_SLACK_CHANNEL)"
        )
        path = _write_outbox(settings, alert, "logged", reason, 0, "log", previous)
        return Delivery(alert.alert_id, "logged", "log", 0, reason, path)

    thread_ts = _thread_of(settings, alert, sent, slack_api_url)
    outcome, attempts = post_with_retries(
        transport, text, blocks, settings, alert.alert_id, thread_ts=thread_ts
    )
    total = attempts + int((previous or {}).get("attempts", 0))
    if outcome.ok:
        _record_sent(settings, alert, transport.name, total, outcome.ts, thread_ts)
        _outbox_path(settings, alert.alert_id).unlink(missing_ok=True)
        logger.info(
            "alert %s sent to Slack (%s, attempt %d): %s",
            alert.alert_id,
            transport.name,
            attempts,
            alert.title,
        )
        return Delivery(alert.alert_id, "sent", transport.name, attempts, ts=outcome.ts)
    state: DeliveryStatus = "queued" if outcome.retryable else "failed"
    path = _write_outbox(settings, alert, state, outcome.reason, total, transport.name, previous)
    if state == "queued":
        logger.warning(
            "alert %s not delivered after %d attempt(s) (%s); queued in the outbox",
            alert.alert_id,
            attempts,
            outcome.reason,
        )
    else:
        logger.error(
            "alert %s refused by Slack (%s); kept in the outbox as failed, not retried",
            alert.alert_id,
            outcome.reason,
        )
    return Delivery(alert.alert_id, state, transport.name, attempts, outcome.reason, path)


def _thread_of(
    settings: Settings, reply: Alert, sent: Mapping[str, Mapping[str, Any]], slack_api_url: str
) -> str | None:
    """The ``ts`` of the message ``reply`` answers: the thread it joins (bot token only).

    A message still queued in the outbox is delivered first, so the two arrive in order and the
    reply can join its thread; one never delivered (or posted by webhook: no ts) leaves the
    reply to stand on its own.
    """
    if reply.reply_to is None:
        return None
    if reply.reply_to in sent:
        return sent[reply.reply_to].get("ts")
    record = _read_outbox(_outbox_path(settings, reply.reply_to))
    if record is None or record.get("state") != "queued":
        return None
    try:
        parent = Alert.from_dict(record["alert"])
    except (KeyError, TypeError, ValueError):
        return None
    return _deliver_locked(settings, parent, slack_api_url, previous=record).ts


@contextmanager
def _alerts_lock(settings: Settings) -> Iterator[None]:
    """An exclusive lock on ``alerts/.lock`` (flock: across processes and threads alike)."""
    settings.alerts_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.alerts_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sent_path(settings: Settings) -> Path:
    return settings.alerts_dir / "sent.jsonl"


def _outbox_dir(settings: Settings) -> Path:
    return settings.alerts_dir / "outbox"


def _outbox_path(settings: Settings, alert_id: str) -> Path:
    return _outbox_dir(settings) / f"{alert_id}.json"


def _sent_records(settings: Settings) -> dict[str, dict[str, Any]]:
    """``sent.jsonl`` by alert id (the first record of an id)."""
    try:
        lines = _sent_path(settings).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    records: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
            records.setdefault(str(record["alert_id"]), record)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash mid-append: it was never confirmed
    return records


def _record_sent(
    settings: Settings,
    alert: Alert,
    transport: str,
    attempts: int,
    ts: str | None = None,
    thread_ts: str | None = None,
) -> None:
    record: dict[str, Any] = {
        "alert_id": alert.alert_id,
        "sent_at": _now(),
        "transport": transport,
        "attempts": attempts,
        "kind": alert.kind,
        "severity": alert.severity,
        "title": alert.title,
    }
    if ts:
        record["ts"] = ts
    if thread_ts:
        record["thread_ts"] = thread_ts
    path = _sent_path(settings)
    with path.open("a+", encoding="utf-8") as handle:
        # After a torn line (a crash mid-append), start a fresh line rather than extend it.
        if handle.tell() > 0:
            handle.seek(handle.tell() - 1)
            needs_newline = handle.read(1) != "\n"
            handle.seek(0, os.SEEK_END)
            if needs_newline:
                handle.write("\n")
        handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write_outbox(
    settings: Settings,
    alert: Alert,
    state: str,
    reason: str,
    attempts: int,
    transport: str,
    previous: Mapping[str, Any] | None,
) -> Path:
    path = _outbox_path(settings, alert.alert_id)
    earlier = previous or _read_outbox(path) or {}
    now = _now()
    record = {
        "alert_id": alert.alert_id,
        "state": state,
        "reason": reason,
        "attempts": attempts,
        "transport": transport,
        "queued_at": earlier.get("queued_at", now),
        "updated_at": now,
        "alert": alert.to_dict(),
    }
    text = Redactor(settings)(json.dumps(record, ensure_ascii=False, indent=2, sort_keys=True))
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


def _read_outbox(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None  # delivered meanwhile by another process
    except ValueError as exc:
        logger.error("outbox file %s is not JSON (%s); left as it is", path.name, exc)
        return None
    return record if isinstance(record, dict) else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
