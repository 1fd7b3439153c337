"""The one notifier of churn-ops: Slack alerts with a plain-text fallback, an outbox, no repeats.

An :class:`Alert` carries aggregates only (feature/PSI/KS rows, gate results, metrics as text:
never a subscriber). :func:`send_alert` renders it once as Block Kit plus a plain-text fallback
and posts it through slack-sdk: the incoming webhook when ``CHURN_SLACK_WEBHOOK_URL`` is set,
else ``chat.postMessage`` with ``CHURN_SLACK_BOT_TOKEN`` and ``CHURN_SLACK_CHANNEL``, else it only
logs the alert. State under ``$CHURN_HOME/alerts/``:

``sent.jsonl``
    append-only, one JSON line per alert delivered: ``alert_id``, ``sent_at``, ``transport``,
    ``attempts``, ``kind``, ``severity``, ``title``. An id found here is never posted again, by
    any process: the check, the post and the append happen under an exclusive file lock.
``outbox/<alert_id>.json``
    written atomically: ``state`` (``queued``: to retry; ``failed``: refused by Slack, kept with
    its ``reason`` but not retried; ``logged``: no Slack configured, kept for the record),
    ``reason``, ``attempts``, ``transport``, ``queued_at``, ``updated_at`` and the ``alert``.
    :func:`flush_outbox` retries the queued ones and removes each file once delivered.

The webhook URL and the bot token are read from their ``SecretStr`` only where a client is
built; every reason, log line and file this module writes goes through a redactor first.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

from tasks.core.files import atomic_path
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)

Severity = Literal["info", "warn", "alert", "retrain", "error"]
SEVERITIES: tuple[str, ...] = ("info", "warn", "alert", "retrain", "error")
KINDS: tuple[str, ...] = ("drift", "performance", "gate", "failure")
"""The kinds churn-ops raises itself; any other non-empty text is accepted too."""

DeliveryStatus = Literal["sent", "duplicate", "queued", "failed", "logged"]

SLACK_API_URL = WebClient.BASE_URL
"""Base URL of the Slack Web API; ``send_alert(..., slack_api_url=...)`` overrides it (tests)."""
HTTP_TIMEOUT_SECONDS = 10
MAX_RETRY_AFTER_SECONDS = 60.0
"""A longer ``Retry-After`` is not waited out in-process: the alert goes to the outbox."""

# Slack's documented limits (Block Kit reference), and what we keep below them.
HEADER_MAX = 150
SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
FIELDS_PER_SECTION = 10
CONTEXT_TEXT_MAX = 3000
BUTTON_TEXT_MAX = 75
URL_MAX = 3000
MAX_BLOCKS = 50
MAX_FIELDS = 40
"""Fields shown (four sections of ten); the rest are counted in a note, never silently dropped."""
FIELD_LABEL_MAX = 150
TEXT_MAX = 4000
"""Plain-text fallback: Slack advises at most 4,000 characters for ``text``."""
ELLIPSIS = "…"

_EMOJI = {
    "info": ":information_source:",
    "warn": ":warning:",
    "alert": ":rotating_light:",
    "retrain": ":arrows_counterclockwise:",
    "error": ":x:",
}
_LOG_LEVEL = {
    "info": logging.INFO,
    "warn": logging.WARNING,
    "alert": logging.WARNING,
    "retrain": logging.WARNING,
    "error": logging.ERROR,
}
# Field labels that name a person or a subscriber: alerts carry aggregates only.
_PERSONAL_LABELS = frozenset(
    {
        "subscriber",
        "subscriber_id",
        "subscriber_ids",
        "customer_id",
        "account_id",
        "msisdn",
        "phone",
        "phone_number",
        "email",
        "name",
    }
)
_ALERT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Secrets that look like Slack's even when they are not this deployment's own.
_SECRET_PATTERNS = (
    re.compile(r"https?://hooks\.slack(?:-gov)?\.com/\S+", re.IGNORECASE),
    re.compile(r"\bxox[a-z]-[A-Za-z0-9-]+"),
    re.compile(r"\bxapp-[A-Za-z0-9-]+"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in any URL
)
REDACTED = "[redacted]"
# chat.postMessage errors that Slack documents as temporary (the rest are the caller's fault).
_TRANSIENT_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

_sleep = time.sleep  # the retry loop's clock; unit tests replace it


# --------------------------------------------------------------------------------------------
# The alert


@dataclass(frozen=True)
class Alert:
    """One message for people: what happened, the numbers, what happens next.

    ``fields`` are ordered ``(label, value)`` pairs of aggregate text (a feature's PSI and KS, a
    gate and its shortfall, a metric); a label naming a subscriber or person is refused.
    ``alert_id`` defaults to a hash of kind, title, score date, model version and fields, so the
    same finding raised twice (a rerun of the same day) is recognised and posted once.

    Raises:
        ValueError: an unknown severity, an empty kind, title or summary, a personal field
            label, a malformed ``alert_id`` or a ``run_url`` that is not http(s).
    """

    kind: str
    severity: Severity
    title: str
    summary: str
    fields: Sequence[tuple[str, str]] = ()
    model_version: str | None = None
    score_date: date | None = None
    next_step: str | None = None
    run_url: str | None = None
    alert_id: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert severity {self.severity!r} is not one of {SEVERITIES}")
        for name in ("kind", "title", "summary"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"alert {name} is empty")
        # Normalise once so that equal alerts hash, render and serialise the same way.
        set_ = object.__setattr__
        set_(self, "kind", str(self.kind).strip())
        set_(self, "title", " ".join(str(self.title).split()))
        set_(self, "summary", " ".join(str(self.summary).split()))
        set_(self, "fields", _normalise_fields(self.fields))
        if self.model_version is not None:
            set_(self, "model_version", str(self.model_version))
        if isinstance(self.score_date, datetime):
            set_(self, "score_date", self.score_date.date())
        elif isinstance(self.score_date, str):
            set_(self, "score_date", date.fromisoformat(self.score_date))
        if self.next_step is not None:
            set_(self, "next_step", " ".join(str(self.next_step).split()) or None)
        if self.run_url is not None and not re.match(r"^https?://\S+$", self.run_url):
            raise ValueError(f"alert run_url must be an http(s) URL, got {self.run_url!r}")
        if not self.alert_id:
            set_(self, "alert_id", _default_alert_id(self))
        elif not _ALERT_ID.match(self.alert_id):
            raise ValueError(
                f"alert_id {self.alert_id!r} must be 1-128 letters, digits, '.', '_' or '-'"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the outbox keeps alerts in this shape)."""
        return {
            "alert_id": self.alert_id,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "summary": self.summary,
            "fields": [list(pair) for pair in self.fields],
            "model_version": self.model_version,
            "score_date": self.score_date.isoformat() if self.score_date else None,
            "next_step": self.next_step,
            "run_url": self.run_url,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        """The inverse of :meth:`to_dict`."""
        return cls(
            kind=data["kind"],
            severity=data["severity"],
            title=data["title"],
            summary=data["summary"],
            fields=[tuple(pair) for pair in data.get("fields", ())],
            model_version=data.get("model_version"),
            score_date=data.get("score_date"),
            next_step=data.get("next_step"),
            run_url=data.get("run_url"),
            alert_id=data.get("alert_id", ""),
        )


def _normalise_fields(fields: Sequence[tuple[str, Any]]) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for pair in fields:
        if len(pair) != 2:
            raise ValueError(f"alert fields are (label, value) pairs, got {pair!r}")
        label, value = " ".join(str(pair[0]).split()), str(pair[1]).strip()
        if not label:
            raise ValueError(f"alert field label is empty (value {value!r})")
        if label.lower().replace(" ", "_").replace("-", "_") in _PERSONAL_LABELS:
            raise ValueError(
                f"alert field {label!r} names a subscriber or person: alerts carry aggregates only"
            )
        pairs.append((label, value))
    return tuple(pairs)


def _default_alert_id(alert: Alert) -> str:
    identity = [
        alert.kind,
        alert.title,
        alert.score_date.isoformat() if alert.score_date else None,
        alert.model_version,
        [list(pair) for pair in alert.fields],
    ]
    canonical = json.dumps(identity, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:24]


def flow_run_url(settings: Settings, flow_run_id: UUID | str | None) -> str | None:
    """The Prefect UI page of a flow run, or None when the UI URL or the run id is unknown."""
    if not settings.prefect_ui_url or not flow_run_id:
        return None
    return f"{settings.prefect_ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def failure_alert(
    flow_name: str,
    flow_run_id: UUID | str | None,
    error: BaseException | str | None,
    settings: Settings,
) -> Alert:
    """An ``error`` alert for a failed flow run (for Prefect ``on_failure`` hooks).

    The summary is the exception type and the first line of its message, at most 300
    characters, with every known secret and anything shaped like a Slack URL or token or a
    URL password removed; no traceback.
    """
    if isinstance(error, BaseException):
        kind_of_error = type(error).__name__
        message = str(error)
    else:
        kind_of_error, message = "Error", str(error or "")
    first_line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    first_line = _fit(_Redactor(settings)(first_line), 300)
    summary = f"{kind_of_error}: {first_line}" if first_line else kind_of_error
    run_id = str(flow_run_id) if flow_run_id else "unknown"
    return Alert(
        kind="failure",
        severity="error",
        title=f"Flow {flow_name} failed",
        summary=summary,
        fields=[("Flow", flow_name), ("Flow run", run_id), ("Error", kind_of_error)],
        next_step="nothing downstream of this run happens until it is fixed and rerun; "
        "the traceback is in the flow run's logs",
        run_url=flow_run_url(settings, flow_run_id),
    )


_GATE_VERDICTS: dict[str, tuple[Severity, str, str]] = {
    # verdict: severity, title, default next step
    "promote": (
        "info",
        "candidate passed every gate",
        "registered; the promotion mode decides when it becomes champion",
    ),
    "keep_champion": (
        "warn",
        "candidate refused, champion kept",
        "the champion keeps scoring; the refused candidate stays an MLflow run with its reasons",
    ),
    "refuse": (
        "alert",
        "candidate refused, no champion yet",
        "nothing is registered and nothing can score until a candidate passes",
    ),
}


def gate_alert(
    model_name: str,
    version: str | int | None,
    verdict: str,
    failed_gates: Mapping[str, str] | Sequence[tuple[str, str]],
    metrics: Mapping[str, float | None],
    *,
    as_of: date | None = None,
    run_url: str | None = None,
    next_step: str | None = None,
) -> Alert:
    """A ``gate`` alert for a retraining outcome, from plain values.

    Args:
        model_name: registered model name.
        version: the registered version, or None when the candidate was not registered.
        verdict: ``promote``, ``keep_champion`` or ``refuse`` (``GateDecision.verdict``).
        failed_gates: gate name → one-sentence detail with the numbers, in report order.
        metrics: key holdout metrics (name → value; None or NaN shows as ``n/a``).
        as_of: the retraining date (shown as the alert's date).
        run_url: link to the retrain flow run (see :func:`flow_run_url`).
        next_step: overrides the verdict's default next step.

    Raises:
        ValueError: an unknown verdict.
    """
    if verdict not in _GATE_VERDICTS:
        raise ValueError(f"gate verdict {verdict!r} is not one of {tuple(_GATE_VERDICTS)}")
    severity, headline, default_next = _GATE_VERDICTS[verdict]
    failed = list(failed_gates.items() if isinstance(failed_gates, Mapping) else failed_gates)
    if verdict == "promote":
        shown = f"version {version}" if version is not None else "the candidate"
        summary = f"{model_name}: {shown} passed every gate."
    else:
        names = ", ".join(name for name, _ in failed) or "unknown"
        summary = f"{model_name}: {len(failed)} gate(s) failed ({names})."
    fields = [("Verdict", verdict)]
    fields += [(f"✗ {name}", detail) for name, detail in failed]
    fields += [(name, _format_metric(value)) for name, value in metrics.items()]
    return Alert(
        kind="gate",
        severity=severity,
        title=f"Retraining: {headline}",
        summary=summary,
        fields=fields,
        model_version=None if version is None else str(version),
        score_date=as_of,
        next_step=next_step or default_next,
        run_url=run_url,
    )


def _format_metric(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.4f}"


# --------------------------------------------------------------------------------------------
# Rendering: Block Kit and the plain-text fallback, from the same alert


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + ELLIPSIS


def _escape(text: str) -> str:
    """Slack's mrkdwn escaping: only ``&``, ``<`` and ``>``."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md(text: str, limit: int) -> str:
    """Escaped mrkdwn cut to ``limit``, never in the middle of an ``&amp;``-style entity."""
    escaped = _escape(text)
    if len(escaped) <= limit:
        return escaped
    cut = escaped[: limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut.rstrip() + ELLIPSIS


def _context_items(alert: Alert) -> list[str]:
    items = [f"{alert.severity.upper()} · {alert.kind}"]
    if alert.model_version is not None:
        items.append(f"model version {alert.model_version}")
    if alert.score_date is not None:
        items.append(f"score date {alert.score_date.isoformat()}")
    items.append(f"alert {alert.alert_id}")
    return items


def render_blocks(alert: Alert) -> list[dict[str, Any]]:
    """Block Kit: header, summary, fields (sections of ten), next step, context, run button.

    Every text is kept within Slack's limits; a cut ends in "…" and fields beyond
    :data:`MAX_FIELDS` are counted in a note.
    """
    header = _fit(f"{_EMOJI[alert.severity]} {alert.title}", HEADER_MAX)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _md(alert.summary, 3000)}},
    ]
    shown = alert.fields[:MAX_FIELDS]
    for start in range(0, len(shown), FIELDS_PER_SECTION):
        cells = []
        for label, value in shown[start : start + FIELDS_PER_SECTION]:
            head = _md(label, FIELD_LABEL_MAX)
            body = _md(value or "—", FIELD_TEXT_MAX - len(head) - 3)
            cells.append({"type": "mrkdwn", "text": f"*{head}*\n{body}"})
        blocks.append({"type": "section", "fields": cells})
    hidden = len(alert.fields) - len(shown)
    if hidden:
        note = f"…and {hidden} more field(s) not shown here"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
    if alert.next_step:
        next_text = _md(alert.next_step, SECTION_TEXT_MAX - len("*Next:* "))
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*Next:* {next_text}"}}
        )
    context = [
        {"type": "mrkdwn", "text": _md(item, CONTEXT_TEXT_MAX)} for item in _context_items(alert)
    ]
    blocks.append({"type": "context", "elements": context[:10]})
    if alert.run_url and len(alert.run_url) <= URL_MAX:
        button = {
            "type": "button",
            "text": {"type": "plain_text", "text": "Open flow run"},
            "url": alert.run_url,
            "action_id": "open_flow_run",
        }
        blocks.append({"type": "actions", "elements": [button]})
    return blocks[:MAX_BLOCKS]


def render_text(alert: Alert) -> str:
    """The plain-text fallback (notifications, clients without blocks): the same content."""
    lines = [
        f"{_EMOJI[alert.severity]} [{alert.severity.upper()}] {alert.kind}: {alert.title}",
        alert.summary,
    ]
    lines += [f"• {label}: {value or '—'}" for label, value in alert.fields[:MAX_FIELDS]]
    hidden = len(alert.fields) - MAX_FIELDS
    if hidden > 0:
        lines.append(f"…and {hidden} more field(s) not shown here")
    if alert.next_step:
        lines.append(f"Next: {alert.next_step}")
    lines.append(" · ".join(_context_items(alert)[1:]))
    if alert.run_url:
        lines.append(f"Flow run: {alert.run_url}")
    return _md("\n".join(lines), TEXT_MAX)


# --------------------------------------------------------------------------------------------
# Secrets


class _Redactor:
    """Replaces every secret of ``settings`` (and anything shaped like a Slack secret)."""

    def __init__(self, settings: Settings):
        values: set[str] = set()
        for name in type(settings).model_fields:
            secret = getattr(settings, name)
            if isinstance(secret, SecretStr):
                plain = secret.get_secret_value().strip()
                if plain:
                    values.add(plain)
                    if name == "slack_webhook_url":
                        # Some messages name only the path (/services/T…/B…/…) of the webhook.
                        path = re.sub(r"^[a-z]+://[^/]*", "", plain, flags=re.IGNORECASE)
                        if len(path) >= 8:
                            values.add(path)
        self._values = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, REDACTED)
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(REDACTED, text)
        return text


class _RedactingHandler(logging.Handler):
    """Forwards slack-sdk's own log lines to this module's logger, redacted, at DEBUG."""

    def __init__(self, redact: _Redactor):
        super().__init__()
        self._redact = redact

    def emit(self, record: logging.LogRecord) -> None:
        logger.debug(
            "slack-sdk %s: %s", record.levelname.lower(), self._redact(record.getMessage())
        )


def _sdk_logger(redact: _Redactor) -> logging.Logger:
    # Not registered with logging's manager, so slack-sdk's lines (some name the URL) reach
    # no handler but the redacting one. INFO, because slack-sdk builds its request dumps
    # whenever the level is DEBUG or unset.
    sdk = logging.Logger(f"{__name__}.slack_sdk", level=logging.INFO)  # noqa: LOG001
    sdk.propagate = False
    sdk.addHandler(_RedactingHandler(redact))
    return sdk


# --------------------------------------------------------------------------------------------
# Transports: one HTTP attempt each; the retry loop is ours


@dataclass(frozen=True)
class _Attempt:
    """The outcome of one HTTP request to Slack."""

    ok: bool
    retryable: bool = False
    retry_after: float | None = None
    reason: str = ""


class _Transport(Protocol):
    name: str

    def post(self, text: str, blocks: list[dict[str, Any]]) -> _Attempt: ...


class _WebhookTransport:
    name = "webhook"

    def __init__(self, url: SecretStr, redact: _Redactor):
        self._url = url
        self._redact = redact

    def post(self, text: str, blocks: list[dict[str, Any]]) -> _Attempt:
        client = WebhookClient(
            url=self._url.get_secret_value(),
            timeout=HTTP_TIMEOUT_SECONDS,
            logger=_sdk_logger(self._redact),
            retry_handlers=[],
        )
        try:
            response = client.send(text=text, blocks=blocks)
        except SlackClientError as exc:  # e.g. a URL slack-sdk refuses: a configuration error
            return _Attempt(ok=False, reason=self._redact(f"{type(exc).__name__}: {exc}"))
        except (OSError, http.client.HTTPException) as exc:
            return _connection_failure(exc, self._redact)
        return _classify(response.status_code, response.headers, response.body, self._redact)


class _BotTransport:
    name = "bot"

    def __init__(self, token: SecretStr, channel: str, api_url: str, redact: _Redactor):
        self._token = token
        self._channel = channel
        self._api_url = api_url
        self._redact = redact

    def post(self, text: str, blocks: list[dict[str, Any]]) -> _Attempt:
        client = WebClient(
            token=self._token.get_secret_value(),
            base_url=self._api_url,
            timeout=HTTP_TIMEOUT_SECONDS,
            logger=_sdk_logger(self._redact),
            retry_handlers=[],
        )
        try:
            client.chat_postMessage(channel=self._channel, text=text, blocks=blocks)
        except SlackApiError as exc:
            response = exc.response
            data = response.data if isinstance(response.data, dict) else {}
            error = str(data.get("error", "")) or "no error code"
            if 200 <= response.status_code < 300:  # ok=false
                reason = self._redact(f"Slack API error: {error}")
                if error in _TRANSIENT_API_ERRORS:
                    wait = _retry_after(response.headers)
                    return _Attempt(ok=False, retryable=True, retry_after=wait, reason=reason)
                # channel_not_found, invalid_auth, invalid_blocks…: retrying won't help.
                return _Attempt(ok=False, reason=reason)
            return _classify(response.status_code, response.headers, error, self._redact)
        except SlackClientError as exc:
            return _Attempt(ok=False, reason=self._redact(f"{type(exc).__name__}: {exc}"))
        except (OSError, http.client.HTTPException) as exc:
            return _connection_failure(exc, self._redact)
        return _Attempt(ok=True)


def _classify(status: int, headers: Any, body: str, redact: _Redactor) -> _Attempt:
    if 200 <= status < 300:
        return _Attempt(ok=True)
    reason = redact(f"HTTP {status}: {_fit(' '.join(str(body).split()), 200)}")
    if status == 429:
        return _Attempt(ok=False, retryable=True, retry_after=_retry_after(headers), reason=reason)
    return _Attempt(ok=False, retryable=status >= 500, reason=reason)


def _connection_failure(exc: BaseException, redact: _Redactor) -> _Attempt:
    return _Attempt(ok=False, retryable=True, reason=redact(f"{type(exc).__name__}: {exc}"))


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), if any."""
    for key in headers or {}:
        if str(key).lower() != "retry-after":
            continue
        value = headers[key]
        value = str(value[0] if isinstance(value, list | tuple) else value).strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None


def _open_transport(settings: Settings, slack_api_url: str) -> _Transport | None:
    """The configured destination: webhook first, else bot token + channel, else None."""
    redact = _Redactor(settings)
    if settings.slack_webhook_url is not None and settings.slack_webhook_url.get_secret_value():
        return _WebhookTransport(settings.slack_webhook_url, redact)
    if settings.slack_bot_token is not None and settings.slack_bot_token.get_secret_value():
        if settings.slack_channel:
            return _BotTransport(
                settings.slack_bot_token, settings.slack_channel, slack_api_url, redact
            )
        logger.warning(
            "CHURN_SLACK_BOT_TOKEN is set without CHURN_SLACK_CHANNEL: alerts are only logged"
        )
    return None


def _post_with_retries(
    transport: _Transport,
    text: str,
    blocks: list[dict[str, Any]],
    settings: Settings,
    alert_id: str,
) -> tuple[_Attempt, int]:
    """Post until success, a permanent refusal, or ``alert_max_attempts`` attempts.

    Waits ``alert_backoff_seconds × 2^(n-1)`` after the n-th failure, or what ``Retry-After``
    asks on a 429; a wait above :data:`MAX_RETRY_AFTER_SECONDS` is left to the next flush.
    """
    attempt = 0
    while True:
        attempt += 1
        outcome = transport.post(text, blocks)
        if outcome.ok or not outcome.retryable or attempt >= settings.alert_max_attempts:
            return outcome, attempt
        delay = outcome.retry_after
        if delay is None:
            delay = settings.alert_backoff_seconds * 2 ** (attempt - 1)
        if delay > MAX_RETRY_AFTER_SECONDS:
            logger.warning(
                "alert %s: Slack asks to wait %.0f s (%s); leaving it to the outbox",
                alert_id,
                delay,
                outcome.reason,
            )
            return outcome, attempt
        logger.info(
            "alert %s: Slack %s attempt %d/%d failed (%s); retrying in %.2f s",
            alert_id,
            transport.name,
            attempt,
            settings.alert_max_attempts,
            outcome.reason,
            delay,
        )
        _sleep(delay)


# --------------------------------------------------------------------------------------------
# Delivery, the sent record and the outbox


@dataclass(frozen=True)
class Delivery:
    """What became of one alert.

    ``status``: ``sent`` (posted now), ``duplicate`` (posted before: not again), ``queued`` (kept
    in the outbox to retry), ``failed`` (refused by Slack, e.g. a 4xx: kept in the outbox with
    the reason, not retried), ``logged`` (no Slack configured: logged and recorded only).
    ``transport`` is ``webhook``, ``bot``, ``log`` or None (duplicate). ``reason`` never holds a
    secret.
    """

    alert_id: str
    status: DeliveryStatus
    transport: str | None = None
    attempts: int = 0
    reason: str | None = None
    outbox_path: Path | None = field(default=None, compare=False)


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
    if _open_transport(settings, slack_api_url) is None:
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
    redact = _Redactor(settings)
    if alert.alert_id in _sent_ids(settings):
        _outbox_path(settings, alert.alert_id).unlink(missing_ok=True)
        logger.info("alert %s was already sent: not posting it again", alert.alert_id)
        return Delivery(alert.alert_id, "duplicate")
    # Alerts are built from our own text; redacting the payload too keeps a secret that slipped
    # into a field (an error message) out of Slack as well.
    text = redact(render_text(alert))
    blocks = json.loads(redact(json.dumps(render_blocks(alert), ensure_ascii=False)))
    transport = _open_transport(settings, slack_api_url)
    if transport is None:
        logger.log(_LOG_LEVEL[alert.severity], "alert (no Slack configured):\n%s", text)
        reason = (
            "no Slack destination configured (set CHURN_SLACK_WEBHOOK_URL, or "
            "CHURN_SLACK_BOT_TOKEN with CHURN_SLACK_CHANNEL)"
        )
        path = _write_outbox(settings, alert, "logged", reason, 0, "log", previous)
        return Delivery(alert.alert_id, "logged", "log", 0, reason, path)

    outcome, attempts = _post_with_retries(transport, text, blocks, settings, alert.alert_id)
    total = attempts + int((previous or {}).get("attempts", 0))
    if outcome.ok:
        _record_sent(settings, alert, transport.name, total)
        _outbox_path(settings, alert.alert_id).unlink(missing_ok=True)
        logger.info(
            "alert %s sent to Slack (%s, attempt %d): %s",
            alert.alert_id,
            transport.name,
            attempts,
            alert.title,
        )
        return Delivery(alert.alert_id, "sent", transport.name, attempts)
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


def _sent_ids(settings: Settings) -> set[str]:
    try:
        lines = _sent_path(settings).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return set()
    ids = set()
    for line in lines:
        try:
            ids.add(json.loads(line)["alert_id"])
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash mid-append: it was never confirmed
    return ids


def _record_sent(settings: Settings, alert: Alert, transport: str, attempts: int) -> None:
    record = {
        "alert_id": alert.alert_id,
        "sent_at": _now(),
        "transport": transport,
        "attempts": attempts,
        "kind": alert.kind,
        "severity": alert.severity,
        "title": alert.title,
    }
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
    text = _Redactor(settings)(json.dumps(record, ensure_ascii=False, indent=2, sort_keys=True))
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
