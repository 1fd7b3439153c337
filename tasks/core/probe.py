"""Is a backend there? One bounded check per URL, failing as one line that names it and its host.

:func:`probe` connects to a PostgreSQL database (and logs in), pings a Redis, asks an HTTP
server's ``/health``, or checks that an SQLite file's folder can be created, within a time
limit, and writes nothing. A failure is :class:`BackendUnreachable`: ``<part>: cannot reach
<kind> at <host:port/db>: <reason>``, never with the password (:mod:`tasks.core.urls`).
:func:`describe` is the same ``<kind> at <where>`` text for status lines.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tasks.core.errors import ChurnError
from tasks.core.urls import host_port, location, scheme, scrub

DEFAULT_PORTS = {"postgresql": 5432, "redis": 6379, "rediss": 6379, "mysql": 3306, "mssql": 1433}
MAX_REASON = 200


class BackendUnreachable(ChurnError):
    """A configured backend cannot be reached, refuses the login, or its URL is malformed."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message
        """Why, without the part and the host (for tables that show those already)."""


def kind(url: str) -> str:
    """What a URL points at, in words: ``postgresql``, ``redis``, ``sqlite``, ``http server``, …"""
    found = scheme(url)
    if found in ("http", "https"):
        return "http server"
    return "redis" if found == "rediss" else found or "folder"


def describe(url: str, *, embedded: bool = False) -> str:
    """``postgresql at db:5432/mlflow``, ``sqlite (embedded) at /path/mlflow.db`` (no password)."""
    where = location(url, DEFAULT_PORTS.get(scheme(url))) if "://" in url else url
    return f"{kind(url)}{' (embedded)' if embedded else ''} at {where}"


def probe(part: str, url: str, timeout_s: float) -> None:
    """Check that the backend behind ``url`` answers, within ``timeout_s``; write nothing.

    Raises:
        BackendUnreachable: it does not answer, refuses, or the URL is malformed.
    """
    name = scheme(url) if "://" in url else "file"
    check = _CHECKS.get(name, _tcp)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            check(url, timeout_s)
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - any driver failure is "cannot reach", reported below
            outcome.append(exc)

    # A thread bounds what a socket timeout cannot: a DNS lookup that hangs, a driver that retries.
    worker = threading.Thread(target=attempt, name=f"probe {part}", daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    if not outcome:
        raise _unreachable(part, url, f"no answer within {timeout_s:.0f} s")
    if outcome[0] is not None:
        raise _unreachable(part, url, _reason(outcome[0])) from None


def _unreachable(part: str, url: str, reason: str) -> BackendUnreachable:
    reason = scrub(reason, [url])
    return BackendUnreachable(f"{part}: cannot reach {describe(url)}: {reason}", reason)


def _reason(exc: BaseException) -> str:
    """The first informative line of a driver's error, short enough for one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if text.lower().startswith("connection to server") and len(lines) > 1:
        text = lines[1]  # libpq: "connection to server at … failed:" then the reason
    if "FATAL:" in text:
        text = text.split("FATAL:", 1)[1]  # libpq names host and port before it: we do already
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def _tcp(url: str, timeout_s: float) -> None:
    try:
        host, port = host_port(url, DEFAULT_PORTS.get(scheme(url)))
    except ValueError as exc:
        raise ValueError(f"malformed URL: {exc}") from None
    if port is None:
        raise ValueError("malformed URL: it names no port")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except TimeoutError:
        raise OSError(f"no answer within {timeout_s:.0f} s") from None
    except ConnectionRefusedError:
        raise OSError("connection refused") from None
    except socket.gaierror as exc:
        raise OSError(f"unknown host ({exc.strerror})") from None


def _postgres(url: str, timeout_s: float) -> None:
    _tcp(url, timeout_s)  # "refused" and "unknown host" read better than libpq's version of them
    import psycopg

    # libpq takes postgresql:// URIs; the SQLAlchemy driver suffix (+asyncpg, +psycopg) is ours.
    dsn = "postgresql" + url[url.index("://") :]
    with psycopg.connect(dsn, connect_timeout=max(2, int(timeout_s))) as connection:
        connection.execute("SELECT 1")


def _redis(url: str, timeout_s: float) -> None:
    _tcp(url, timeout_s)
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    finally:
        client.close()


def _http(url: str, timeout_s: float) -> None:
    health = url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as response:
            if not 200 <= response.status < 300:
                raise OSError(f"{health} answered {response.status}")
    except urllib.error.HTTPError as exc:
        raise OSError(f"/health answered {exc.code}") from None
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None


def _folder(url: str, timeout_s: float) -> None:
    """The file's folder exists and is writable, or could be created (nothing is created here)."""
    path = Path(location(url) if "://" in url else url).expanduser().absolute()
    folder = path.parent if scheme(url) == "sqlite" else path
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OSError(f"{ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OSError(f"{ancestor} is not writable")


_CHECKS: dict[str, Callable[[str, float], None]] = {
    "postgresql": _postgres,
    "redis": _redis,
    "rediss": _redis,
    "http": _http,
    "https": _http,
    "sqlite": _folder,
    "file": _folder,
}
