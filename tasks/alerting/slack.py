"""Slack transports through slack-sdk: an incoming webhook or a bot token, with bounded retries.

:func:`open_transport` picks the configured one (None when Slack is not configured: delivery then
logs the alert and keeps it in the outbox); :func:`post_with_retries` retries what Slack says is
transient (5xx, rate limits with ``Retry-After``, connection errors) and gives up on the rest.
slack-sdk's own log lines pass through the redactor. With a bot token a message can answer an
earlier one in its thread (``thread_ts``, the ``ts`` Slack returned for that one); an incoming
webhook returns no ``ts``, so its messages stand alone.
"""

from __future__ import annotations

import http.client
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

from tasks.alerting.alerts import truncate
from tasks.alerting.redact import Redactor
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)

SLACK_API_URL = WebClient.BASE_URL
HTTP_TIMEOUT_SECONDS = 10
MAX_RETRY_AFTER_SECONDS = 60.0
# chat.postMessage errors that Slack documents as temporary (the rest are the caller's fault).
_TRANSIENT_API_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

_sleep = time.sleep  # the retry loop's clock; unit tests replace it


class _RedactingHandler(logging.Handler):
    """Forwards slack-sdk's own log lines to this module's logger, redacted, at DEBUG."""

    def __init__(self, redact: Redactor):
        super().__init__()
        self._redact = redact

    def emit(self, record: logging.LogRecord) -> None:
        logger.debug(
            "slack-sdk %s: %s", record.levelname.lower(), self._redact(record.getMessage())
        )


def _sdk_logger(redact: Redactor) -> logging.Logger:
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
class Attempt:
    """The outcome of one HTTP request to Slack."""

    ok: bool
    retryable: bool = False
    retry_after: float | None = None
    reason: str = ""
    ts: str | None = None
    """Slack's id of the posted message (bot token only): the ``thread_ts`` of its replies."""


class _Transport(Protocol):
    name: str

    def post(
        self, text: str, blocks: list[dict[str, Any]], thread_ts: str | None = None
    ) -> Attempt: ...


class _WebhookTransport:
    name = "webhook"

    def __init__(self, url: SecretStr, redact: Redactor):
        self._url = url
        self._redact = redact

    def post(
        self, text: str, blocks: list[dict[str, Any]], thread_ts: str | None = None
    ) -> Attempt:
        # thread_ts is not used: a webhook's answer carries no ts, so there is no thread to join.
        client = WebhookClient(
            url=self._url.get_secret_value(),
            timeout=HTTP_TIMEOUT_SECONDS,
            logger=_sdk_logger(self._redact),
            retry_handlers=[],
        )
        try:
            response = client.send(text=text, blocks=blocks)
        except SlackClientError as exc:  # e.g. a URL slack-sdk refuses: a configuration error
            return Attempt(ok=False, reason=self._redact(f"{type(exc).__name__}: {exc}"))
        except (OSError, http.client.HTTPException) as exc:
            return _connection_failure(exc, self._redact)
        return _classify(response.status_code, response.headers, response.body, self._redact)


class _BotTransport:
    name = "bot"

    def __init__(self, token: SecretStr, channel: str, api_url: str, redact: Redactor):
        self._token = token
        self._channel = channel
        self._api_url = api_url
        self._redact = redact

    def post(
        self, text: str, blocks: list[dict[str, Any]], thread_ts: str | None = None
    ) -> Attempt:
        client = WebClient(
            token=self._token.get_secret_value(),
            base_url=self._api_url,
            timeout=HTTP_TIMEOUT_SECONDS,
            logger=_sdk_logger(self._redact),
            retry_handlers=[],
        )
        try:
            response = client.chat_postMessage(
                channel=self._channel, text=text, blocks=blocks, thread_ts=thread_ts
            )
        except SlackApiError as exc:
            response = exc.response
            data = response.data if isinstance(response.data, dict) else {}
            error = str(data.get("error", "")) or "no error code"
            if 200 <= response.status_code < 300:  # ok=false
                reason = self._redact(f"Slack API error: {error}")
                if error in _TRANSIENT_API_ERRORS:
                    wait = _retry_after(response.headers)
                    return Attempt(ok=False, retryable=True, retry_after=wait, reason=reason)
                # channel_not_found, invalid_auth, invalid_blocks…: retrying won't help.
                return Attempt(ok=False, reason=reason)
            return _classify(response.status_code, response.headers, error, self._redact)
        except SlackClientError as exc:
            return Attempt(ok=False, reason=self._redact(f"{type(exc).__name__}: {exc}"))
        except (OSError, http.client.HTTPException) as exc:
            return _connection_failure(exc, self._redact)
        ts = response.get("ts")
        return Attempt(ok=True, ts=str(ts) if ts else None)


def _classify(status: int, headers: Any, body: str, redact: Redactor) -> Attempt:
    if 200 <= status < 300:
        return Attempt(ok=True)
    reason = redact(f"HTTP {status}: {truncate(' '.join(str(body).split()), 200)}")
    if status == 429:
        return Attempt(ok=False, retryable=True, retry_after=_retry_after(headers), reason=reason)
    return Attempt(ok=False, retryable=status >= 500, reason=reason)


def _connection_failure(exc: BaseException, redact: Redactor) -> Attempt:
    return Attempt(ok=False, retryable=True, reason=redact(f"{type(exc).__name__}: {exc}"))


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


def open_transport(settings: Settings, slack_api_url: str) -> _Transport | None:
    """The configured destination: webhook first, else bot token + channel, else None."""
    redact = Redactor(settings)
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


def post_with_retries(
    transport: _Transport,
    text: str,
    blocks: list[dict[str, Any]],
    settings: Settings,
    alert_id: str,
    thread_ts: str | None = None,
) -> tuple[Attempt, int]:
    """Post until success, a permanent refusal, or ``alert_max_attempts`` attempts.

    ``thread_ts`` posts it as a reply in that message's thread (bot token only).

    Waits ``alert_backoff_seconds × 2^(n-1)`` after the n-th failure, or what ``Retry-After``
    asks on a 429; a wait above :data:`MAX_RETRY_AFTER_SECONDS` is left to the next flush.
    """
    attempt = 0
    while True:
        attempt += 1
        outcome = transport.post(text, blocks, thread_ts=thread_ts)
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
