"""Benchmark the real-time endpoint: ``churn serve`` under an open-loop load on 127.0.0.1.

    python bench/online.py [--home bench/out/online] [--rates 100 250 500] [--seconds 10]
                           [--max-requests 20000] [--connections 16] [--no-pin]
                           [--subscribers 3000] [--days 240] [--stores sqlite redis]

Setup, once (reused while ``<home>/_bench_online.json`` matches): a simulated world
(``--subscribers`` × ``--days`` from 2026-01-01, seed 7), its features built, a champion trained at
the last day by ``tasks.training.retrain.retrain`` (small-world gates, as in the integration tests) in an
MLflow store under the world, and the online store materialized for that day.

Measured: ``churn serve`` in a child process (one uvicorn worker, the defaults of settings: log
flushes of 1,000 rows or 5 s), pinned to CPU 0, and this load generator pinned to CPU 1
(``--no-pin``: both anywhere). The client is plain asyncio on keep-alive HTTP/1.1 connections,
so it costs the server's core nothing. For each rate, after a 2-second warm-up at that rate:
request *i* is due at ``t0 + i / rate``, goes out on the next free connection (of
``--connections``), and its latency is counted from when it was due, so queueing in a slow
server shows up in the numbers instead of slowing the load down (no coordinated omission);
"from send" is the latency from when the request was written. Each rate is bounded by
``--seconds`` and ``--max-requests``; a last, closed-loop run (every connection back to back for
``--seconds``) shows the most one worker answers. Subscribers are drawn at random from those in
service on the materialized day; every request is a ``POST /predict`` (online-store read,
predict, SHAP reasons, log buffer).

Each store of ``--stores`` is measured in turn, the same way: ``sqlite`` (Feast's SQLite file,
the default) and ``redis`` (``CHURN_ONLINE_STORE=redis``: a ``redis-server`` this script starts on
a free port, without persistence, loaded for the same day by ``materialize_online``; the server
and this client are pinned as above, Redis runs anywhere).

Target (issue 7, and issue 14 for Redis): p99 ≤ 10 ms at 500 requests/s with one worker on the
2-core machine. Other processes on the machine share its cores; the load average is printed
beside the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from common import (
    ROOT,
    SEED,
    START,
    build_world,
    new_table,
    settings_for,
    stamp_matches,
    start_redis,
    world_spec,
)
from rich.console import Console

SETUP_VERSION = 1
TARGET_RATE = 500
TARGET_P99_MS = 10.0
WARMUP_SECONDS = 2.0
MODEL = "bench_online_model"
SMALL_WORLD_GATES = {
    "CHURN_FAIRNESS_MAX_EO_DIFFERENCE": "0.9",
    "CHURN_FAIRNESS_MIN_DP_RATIO": "0.1",
    "CHURN_GATE_MIN_AUC": "0.6",
}


def world_env(home: Path) -> dict[str, str]:
    return {
        "CHURN_HOME": str(home),
        "CHURN_MLFLOW_TRACKING_URI": f"sqlite:///{home}/bench_mlflow/mlflow.db",
        "CHURN_MODEL_NAME": MODEL,
    }


def setup(home: Path, subscribers: int, days: int, console: Console) -> date:
    """The world, champion and online store of the benchmark; reused when already there."""
    day = START + timedelta(days=days - 1)
    stamp = {"version": SETUP_VERSION, "subscribers": subscribers, "days": days, "seed": SEED}
    marker = home / "_bench_online.json"
    if stamp_matches(marker, stamp):
        return day
    if home.exists() and any(home.iterdir()) and not marker.exists():
        raise SystemExit(f"{home} is not a bench world of this script: refusing to replace it")
    console.print(f"setting up {subscribers:,} subscribers × {days} days under {home} …")
    env = {**os.environ, **world_env(home), **SMALL_WORLD_GATES}
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--build",
            "--home",
            str(home),
            "--subscribers",
            str(subscribers),
            "--days",
            str(days),
        ],
        env=env,
        check=True,
    )
    marker.write_text(json.dumps(stamp))
    return day


def build(home: Path, subscribers: int, days: int) -> None:
    """In a child process (environment set by :func:`setup`): world, features, champion, store."""
    import shutil

    from tasks.core.settings import get_settings
    from tasks.core.telemetry import disable_telemetry
    from tasks.features.tables import materialize_online
    from tasks.training.retrain import retrain

    disable_telemetry()
    shutil.rmtree(home, ignore_errors=True)
    settings = get_settings()
    day = START + timedelta(days=days - 1)
    build_world(settings, world_spec(subscribers, days))
    result = retrain(settings, day, "bench: a champion to serve")
    if not result.promoted:
        raise SystemExit(f"the bench champion was not promoted: {result.decision.summary()}")
    materialize_online(settings, day)


def materialize_redis(home: Path, day: date) -> None:
    """In a child process (environment: the world's, and Redis's): load ``day`` into Redis."""
    from tasks.core.settings import get_settings
    from tasks.core.telemetry import disable_telemetry
    from tasks.features.tables import materialize_online

    disable_telemetry()
    materialize_online(get_settings(), day)


def redis_env(url: str) -> dict[str, str]:
    return {"CHURN_ONLINE_STORE": "redis", "CHURN_REDIS_URL": url}


def subscribers_in_service(home: Path, day: date) -> list[int]:
    from tasks.data.sources import active_subscribers

    settings = settings_for(home, **world_env(home))
    return active_subscribers(settings, day).column("subscriber_id").to_pylist()


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    home: Path, port: int, cpu: int | None, store_env: dict[str, str]
) -> subprocess.Popen:
    log = (home / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "flows", "serve", "--port", str(port)],
        env={**os.environ, **world_env(home), **store_env, "COLUMNS": "200"},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    if cpu is not None:
        os.sched_setaffinity(server.pid, {cpu})
    deadline = time.monotonic() + 180
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"churn serve did not start: {(home / 'serve.log').read_text()}")
            time.sleep(0.25)


def stop_server(server: subprocess.Popen) -> int:
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


# ----------------------------------------------------------------------------- the load


class Connection:
    """One keep-alive HTTP/1.1 connection: a POST /predict and its whole response, in turn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def predict(self, subscriber_id: int) -> int:
        body = b'{"subscriber_id": %d}' % subscriber_id
        self.writer.write(
            b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


@dataclass
class Run:
    """One load level: what was asked, what came back."""

    label: str
    offered: float | None
    seconds: float
    latency: np.ndarray  # from due time, seconds
    from_send: np.ndarray
    errors: int
    server_cpu: float = 0.0  # CPU seconds the server process used during the run

    @property
    def requests(self) -> int:
        return len(self.latency) + self.errors

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu / self.requests * 1e3 if self.requests else float("nan")

    def ms(self, q: float, which: str = "latency") -> float:
        values = getattr(self, which)
        return float(np.quantile(values, q) * 1e3) if len(values) else float("nan")


async def open_loop(
    connections: list[Connection], ids: list[int], rate: float, seconds: float, limit: int
) -> Run:
    """``rate`` requests a second on schedule for ``seconds`` (at most ``limit``)."""
    loop = asyncio.get_running_loop()
    count = max(1, min(limit, int(rate * seconds)))
    queue: asyncio.Queue = asyncio.Queue()
    latency: list[float] = []
    from_send: list[float] = []
    errors = 0
    rng = random.Random(1)

    async def produce() -> None:
        start = loop.time() + 0.01
        for i in range(count):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((due, rng.choice(ids)))
        for _ in connections:
            queue.put_nowait(None)

    async def consume(connection: Connection) -> None:
        nonlocal errors
        while (job := await queue.get()) is not None:
            due, subscriber = job
            sent = loop.time()
            status = await connection.predict(subscriber)
            done = loop.time()
            if status == 200:
                latency.append(done - due)
                from_send.append(done - sent)
            else:
                errors += 1

    began = loop.time()
    await asyncio.gather(produce(), *(consume(c) for c in connections))
    return Run(
        f"{rate:,.0f}/s",
        rate,
        loop.time() - began,
        np.array(latency),
        np.array(from_send),
        errors,
    )


async def closed_loop(
    connections: list[Connection], ids: list[int], seconds: float, limit: int
) -> Run:
    """Every connection back to back for ``seconds`` (at most ``limit`` requests in all)."""
    loop = asyncio.get_running_loop()
    latency: list[float] = []
    errors = 0
    rng = random.Random(2)
    end = loop.time() + seconds

    async def worker(connection: Connection) -> None:
        nonlocal errors
        while loop.time() < end and len(latency) + errors < limit:
            sent = loop.time()
            if await connection.predict(rng.choice(ids)) == 200:
                latency.append(loop.time() - sent)
            else:
                errors += 1

    began = loop.time()
    await asyncio.gather(*(worker(c) for c in connections))
    times = np.array(latency)
    return Run(f"max ({len(connections)} conn.)", None, loop.time() - began, times, times, errors)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    port: int,
    pid: int,
    ids: list[int],
    rates: list[float],
    seconds: float,
    limit: int,
    connections: int,
) -> list[Run]:
    pool = [await Connection.open(port) for _ in range(connections)]
    runs = []
    try:
        for rate in rates:
            await open_loop(pool, ids, rate, WARMUP_SECONDS, limit)
            before = cpu_seconds(pid)
            runs.append(await open_loop(pool, ids, rate, seconds, limit))
            runs[-1].server_cpu = cpu_seconds(pid) - before
        before = cpu_seconds(pid)
        runs.append(await closed_loop(pool, ids, seconds, limit))
        runs[-1].server_cpu = cpu_seconds(pid) - before
    finally:
        for connection in pool:
            connection.close()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=ROOT / "bench" / "out" / "online")
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 250, 500])
    parser.add_argument("--seconds", type=float, default=10.0, help="Per load level (≤ 60).")
    parser.add_argument("--max-requests", type=int, default=20_000, help="Per load level.")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--subscribers", type=int, default=3_000)
    parser.add_argument("--days", type=int, default=240)
    parser.add_argument("--no-pin", action="store_true", help="Do not pin server and client.")
    parser.add_argument(
        "--stores", nargs="+", choices=("sqlite", "redis"), default=["sqlite", "redis"]
    )
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)  # setup's child
    parser.add_argument("--materialize-redis", type=date.fromisoformat, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(args.home, args.subscribers, args.days)
        return
    if args.materialize_redis:
        materialize_redis(args.home, args.materialize_redis)
        return
    if not 0 < args.seconds <= 60 or args.max_requests < 1:
        parser.error("--seconds must be in (0, 60] and --max-requests positive")
    console = Console(width=150)
    home = args.home.resolve()
    day = setup(home, args.subscribers, args.days, console)
    ids = subscribers_in_service(home, day)
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    cpus = sorted(os.sched_getaffinity(0))
    load = os.getloadavg()
    results: list[tuple[str, Run]] = []
    codes: dict[str, int] = {}
    redis_server = None
    scratch = Path(tempfile.mkdtemp(prefix="bench-online-redis-"))
    began = time.monotonic()
    try:
        for store in args.stores:
            store_env: dict[str, str] = {}
            if store == "redis":
                redis_server, url = start_redis(scratch)
                store_env = redis_env(url)
                with console.status(f"materializing {day} into redis"):
                    subprocess.run(
                        [sys.executable, __file__, "--home", str(home),
                         "--materialize-redis", day.isoformat()],
                        env={**os.environ, **world_env(home), **store_env},
                        check=True,
                    )  # fmt: skip
            port = free_port()
            server = start_server(home, port, cpus[0] if pin else None, store_env)
            if pin:
                os.sched_setaffinity(0, {cpus[1]})
            try:
                runs = asyncio.run(
                    asyncio.wait_for(
                        measure(
                            port,
                            server.pid,
                            ids,
                            args.rates,
                            args.seconds,
                            args.max_requests,
                            args.connections,
                        ),
                        timeout=(len(args.rates) + 1) * (args.seconds + WARMUP_SECONDS) + 120,
                    )
                )
            finally:
                codes[store] = stop_server(server)
                if pin:
                    os.sched_setaffinity(0, set(cpus))
            results += [(store, run) for run in runs]
    finally:
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    wall = time.monotonic() - began
    table = new_table(
        f"POST /predict on churn serve (1 worker), {len(ids):,} subscribers in service on {day}; "
        f"server on CPU {cpus[0] if pin else 'any'}, client on CPU {cpus[1] if pin else 'any'}; "
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        (
            "store",
            "load",
            "requests",
            "throughput /s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "p99 from send ms",
            "errors",
            "server CPU ms/req",
        ),
    )
    for store, run in results:
        table.add_row(
            store,
            run.label,
            f"{run.requests:,}",
            f"{run.throughput:,.0f}",
            f"{run.ms(0.50):.2f}",
            f"{run.ms(0.95):.2f}",
            f"{run.ms(0.99):.2f}",
            f"{run.ms(1.0):.2f}",
            f"{run.ms(0.99, 'from_send'):.2f}",
            f"{run.errors:,}",
            f"{run.cpu_ms_per_request:.2f}",
        )
    console.print(table)
    for store, run in results:
        if run.offered != TARGET_RATE:
            continue
        met = run.ms(0.99) <= TARGET_P99_MS and run.errors == 0
        console.print(
            f"{store}: target p99 ≤ {TARGET_P99_MS:g} ms at {TARGET_RATE}/s: "
            f"{'met' if met else 'MISSED'} (p99 {run.ms(0.99):.2f} ms, {run.errors} errors)"
        )
    console.print(
        f"{wall:.0f} s in all; server exit codes {codes}; last server log {home / 'serve.log'}"
    )


if __name__ == "__main__":
    main()
