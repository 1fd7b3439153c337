"""Secrets out of every line: Slack webhooks and tokens replaced before anything is logged or kept.

A webhook URL or a bot token may appear in an exception's text, in slack-sdk's own debug log or
in a failure message; :class:`Redactor` replaces each (the configured values and anything shaped
like one) with ``[redacted]``, so logs, the outbox and alerts never carry a secret.
"""

from __future__ import annotations

import re

from pydantic import SecretStr

from tasks.core.settings import Settings

# Secrets that look like Slack's even when they are not this deployment's own.
_SECRET_PATTERNS = (
    re.compile(r"https?://hooks\.slack(?:-gov)?\.com/\S+", re.IGNORECASE),
    re.compile(r"\bxox[a-z]-[A-Za-z0-9-]+"),
    re.compile(r"\bxapp-[A-Za-z0-9-]+"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in any URL
)
REDACTED = "[redacted]"


# --------------------------------------------------------------------------------------------
# Secrets


class Redactor:
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
