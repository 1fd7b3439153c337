"""Real Redis and PostgreSQL servers for the tests, each in a temporary directory on a free port.

Started from the binaries of Debian's ``redis-server`` and ``postgresql`` packages (`.ci/run`
installs them); a fixture skips, saying so, only when a binary cannot be found. Each server is
stopped when its fixture ends, and its directory removed.

PostgreSQL refuses to run ``initdb`` or ``postgres`` as root, and CI runs as root: there the
cluster is created and run as an unprivileged account (``postgres``, which Debian's package
creates, else ``nobody``) through ``runuser``, in a directory that account owns under /tmp
(pytest's own temporary directories are private to root).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in Debian's versioned PostgreSQL folder (not on PATH there)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _wait(ready, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{what} did not start: {tail}")
        time.sleep(0.1)


# ----------------------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    """A ``redis-server`` with a password; :meth:`stop` and :meth:`start` keep its data (RDB)."""

    binary: str
    directory: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self, db: int = 0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, db=db)

    def start(self) -> None:
        log = self.directory / "redis.log"
        # The password goes in through stdin's config, not the command line (ps shows that).
        config = (
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\ndbfilename dump.rdb\n"
            f'save ""\nappendonly no\nrequirepass {self.password}\nlogfile {log}\n'
        )
        self.process = subprocess.Popen(
            [self.binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        assert self.process.stdin is not None
        self.process.stdin.write(config.encode())
        self.process.stdin.close()
        _wait(self._answers, self.process, "redis-server", log)

    def _answers(self) -> bool:
        import redis

        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Save the data, then stop (a later :meth:`start` loads it again)."""
        import redis

        if self.process is None:
            return
        try:
            self.client().shutdown(save=True)
        except redis.ConnectionError:
            pass  # it closes the connection as it exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def _running(server, directory: Path):
    """Start ``server``, hand it to the session, then stop it and remove its folder."""
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis on 127.0.0.1 (password set), for the session."""
    binary = find_binary("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (`.ci/run` installs it: apt-get install redis-server)"
        )
    directory = Path(tempfile.mkdtemp(prefix="churn-redis-"))
    yield from _running(RedisServer(binary, directory), directory)


# ----------------------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresServer:
    """A PostgreSQL cluster with a password-protected superuser ``churn``."""

    bin_dir: Path
    directory: Path
    run_as: str | None
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    process: subprocess.Popen | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str) -> str:
        return f"postgresql://churn:{self.password}@127.0.0.1:{self.port}/{database}"

    def _command(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def init(self) -> None:
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        subprocess.run(
            self._command(
                str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "churn",
                f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
                "--encoding=UTF8", "--no-sync",
            ),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        pwfile.unlink()

    def _own(self, path: Path) -> None:
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        log = self.directory / "postgres.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                self._command(
                    str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                    "-h", "127.0.0.1", "-k", str(self.directory), "-c", "fsync=off",
                    "-c", "max_connections=200",
                ),
                stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _wait(self._answers, self.process, "postgres", log)

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is None:
            return
        # SIGINT: PostgreSQL's "fast" shutdown (sessions are ended, then it exits cleanly).
        # runuser passes the signal on to postgres.
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


def _unprivileged_account() -> str | None:
    """Who runs PostgreSQL: None (this user) unless we are root, which PostgreSQL refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip(
        "running as root and no unprivileged account (postgres, nobody) to run PostgreSQL as"
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on 127.0.0.1 (superuser ``churn`` with a password), for the session."""
    initdb = find_binary("initdb")
    if initdb is None or find_binary("postgres") is None:
        pytest.skip(
            "PostgreSQL is not installed (`.ci/run` installs Debian's postgresql; initdb and "
            "postgres are looked for on PATH and in /usr/lib/postgresql/*/bin)"
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: PostgreSQL refuses to run as root")
    run_as = _unprivileged_account()
    bin_dir = Path(os.path.realpath(initdb)).parent
    directory = Path(tempfile.mkdtemp(prefix="churn-postgres-"))
    server = PostgresServer(bin_dir, directory, run_as)
    server._own(directory)
    server.init()
    yield from _running(server, directory)
