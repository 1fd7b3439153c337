"""Backend URLs shown to people without their passwords.

The database and Redis URLs of the production backends (``CHURN_PREFECT_DATABASE_URL``,
``CHURN_MLFLOW_BACKEND_URI``, ``CHURN_REDIS_URL``) carry passwords. Whatever prints, logs or
records one goes through :func:`redact_url` (the URL) or :func:`scrub` (a driver's error text),
and :func:`location` names where a backend lives (``host:port/db``) for one-line messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

REDACTED = "***"

# user:password@ in any URL, even one we were not told about (a driver may echo its DSN).
_USERINFO = re.compile(r"(?<=://)([^/\s:@]*):[^/\s@]+@")


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (the rest kept for diagnosis)."""
    return _USERINFO.sub(lambda m: f"{m.group(1)}:{REDACTED}@", url)


def scheme(url: str) -> str:
    """The URL's scheme without a SQLAlchemy driver (``postgresql+asyncpg`` → ``postgresql``)."""
    return urlsplit(url).scheme.split("+", 1)[0].lower()


def host_port(url: str, default_port: int | None = None) -> tuple[str, int | None]:
    """Host and port of a network URL (port: the scheme's default when the URL has none).

    Raises:
        ValueError: the URL names no host, or its port is not a number (the message holds
            no part of the URL: it may carry a password).
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("its port is not a number") from None
    if not parts.hostname:
        raise ValueError("it names no host")
    return parts.hostname, port if port is not None else default_port


def location(url: str, default_port: int | None = None) -> str:
    """Where a backend lives, never with its credentials: ``host:port/db`` or a file path."""
    parts = urlsplit(url)
    if scheme(url) == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute.db
        return unquote(parts.path[1:] if parts.path.startswith("//") else parts.path.lstrip("/"))
    if scheme(url) == "file":
        return unquote(parts.path)
    try:
        host, port = host_port(url, default_port)
    except ValueError as exc:
        return f"(malformed URL: {exc})"
    where = f"{host}:{port}" if port is not None else host
    path = parts.path.strip("/")
    return f"{where}/{path}" if path else where


def password(url: str) -> str | None:
    """The URL's password (decoded), for scrubbing it out of driver messages."""
    try:
        secret = urlsplit(url).password
    except ValueError:
        return None
    return unquote(secret) if secret else None


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` without any of ``secrets`` (whole URLs and their passwords) or user:password@."""
    values: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        values.add(secret)
        plain = password(secret)
        if plain:
            values.add(plain)
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 3:  # a one- or two-letter password would blank out ordinary words
            text = text.replace(value, redact_url(value) if "://" in value else REDACTED)
    return redact_url(text)
