"""What the benchmarks in bench/ share: paths, child processes, memory readings, tables, worlds.

The scripts run as ``python bench/<name>.py``, which puts this directory on ``sys.path``, so they
import this module as ``common``; their child processes are the same scripts run again
(``__file__``), so the import works there too. Project imports stay inside the functions: a
script sets ``CHURN_*`` variables before anything reads the settings, and a child's peak memory
should hold only what its measurement needs.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    import lightgbm as lgb
    from rich.console import Console
    from rich.table import Table

    from tasks.core.settings import Settings
    from tasks.data.sim_population import WorldSpec
    from tasks.training.model_spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
START = date(2026, 1, 1)
"""First day of the worlds simulated to measure on (bench/simulate.py picks its own)."""
SEED = 7

PLAN_PRICES = {"basic": 35.0, "standard": 55.0, "premium": 75.0, "unlimited": 95.0}
CONTRACTS = ("month_to_month", "one_year", "two_year")
PAYMENTS = ("autopay", "card", "invoice")


# ----------------------------------------------------------------------------- processes


def settings_for(home: Path, **env: str) -> Settings:
    """The project's settings for the world at ``home``, with ``env`` set in this process first."""
    os.environ.update({"CHURN_HOME": str(home), **env})
    from tasks.core.settings import get_settings, reset_settings

    reset_settings()
    return get_settings()


def run_child(script: str | Path, *args: object, failure: str, cwd: Path | None = None) -> dict:
    """Run ``script`` with ``args`` in a fresh interpreter and return what it reported.

    A fresh process per measurement makes its peak RSS its own. On failure the tail of the
    child's stderr is shown and this process exits with ``failure``.
    """
    done = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(failure)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_to_parent(result: dict) -> None:
    """The child's side of :func:`run_child`: the result as the last line of stdout."""
    print(json.dumps(result))


def _proc_status_bytes(*fields: str) -> dict[str, int]:
    found = dict.fromkeys(fields, 0)
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in found:
            found[key] = int(line.split()[1]) * 1024
    return found


def peak_rss_bytes() -> int:
    """This process's own peak resident memory.

    ``ru_maxrss`` is no good here: a child started with vfork/exec inherits the parent's
    high-water mark, so every child would report at least what the parent once held.
    ``VmHWM`` belongs to the process's own address space.
    """
    if Path("/proc/self/status").exists():
        return _proc_status_bytes("VmHWM")["VmHWM"]
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class TreePeakRss:
    """Samples the resident memory of this process and all its descendants together (every
    50 ms, in a thread), for work done in other processes such as Dask workers, whose memory
    VmHWM does not see; keeps the maximum of the sum, and each descendant's last CPU seconds
    (a worker that has exited is counted as of its last sample)."""

    def __init__(self, every_s: float = 0.05) -> None:
        import threading

        import psutil

        self._process = psutil.Process()
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._cpu: dict[int, float] = {}
        self.peak = 0

    @property
    def descendants_cpu_seconds(self) -> float:
        return sum(self._cpu.values())

    def _total(self) -> int:
        import psutil

        total = self._process.memory_info().rss
        for proc in self._process.children(recursive=True):
            try:
                total += proc.memory_info().rss
                times = proc.cpu_times()
                self._cpu[proc.pid] = times.user + times.system
            except psutil.Error:  # gone between the listing and the reading
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            self._stop.wait(self._every_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total())


def memory_now() -> tuple[int, int]:
    """This process's resident memory now and its peak so far (VmRSS, VmHWM), in bytes."""
    found = _proc_status_bytes("VmRSS", "VmHWM")
    return found["VmRSS"], found["VmHWM"]


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    """A throwaway redis-server on a free port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "redis-server is not installed: apt-get install redis-server, or --redis-url"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("redis-server did not start") from None
            time.sleep(0.1)


# ----------------------------------------------------------------------------- tables


def new_table(
    title: str,
    columns: Iterable[str],
    *,
    left: Collection[str] = (),
    justify: str = "right",
    title_justify: str = "left",
    **column_options: Any,
) -> Table:
    """A rich table with ``columns`` justified ``justify``, except those in ``left``."""
    from rich.table import Table

    table = Table(title=title, title_justify=title_justify)
    for column in columns:
        table.add_column(column, justify="left" if column in left else justify, **column_options)
    return table


def mib(size: float) -> str:
    """Bytes as whole MiB, with thousands separators."""
    return f"{size / 2**20:,.0f}"


def gib(size: float) -> str:
    """Bytes as GiB to two decimals."""
    return f"{size / 2**30:.2f}"


def per_second(count: float, seconds: float) -> str:
    """A rate as a whole number with thousands separators."""
    return f"{count / seconds:,.0f}"


# ----------------------------------------------------------------------------- simulated worlds


def world_spec(subscribers: int, days: int, **scenario: Any) -> WorldSpec:
    """A bench world: ``days`` from :data:`START` with :data:`SEED` (and maybe a scenario)."""
    from tasks.data.sim_population import WorldSpec

    return WorldSpec(subscribers=subscribers, days=days, start=START, seed=SEED, **scenario)


def build_world(settings: Settings, spec: WorldSpec) -> None:
    """Simulate ``spec`` into ``settings``' home, apply the Feast repo and build every feature day."""
    from tasks.data.simulate import simulate_world
    from tasks.features.store import apply_feature_repo
    from tasks.features.tables import build_feature_tables

    simulate_world(spec, settings.source_dir, settings.truth_dir)
    apply_feature_repo(settings)
    build_feature_tables(settings)


def prepare_world(
    home: Path, subscribers: int, days: int, as_of: date, console: Console, full_history: bool
) -> dict:
    """Simulate the world and build the feature days the training frame reads (skipped if done)."""
    from tasks.data.simulate import simulate_world
    from tasks.features.frames import training_snapshot_days
    from tasks.features.store import apply_feature_repo
    from tasks.features.tables import build_feature_tables, built_days

    settings = settings_for(home)
    timings: dict[str, float] = {}
    if not (settings.source_dir / "_manifest.json").exists():
        began = time.perf_counter()
        with console.status(f"simulating {subscribers:,} × {days} days"):
            simulate_world(world_spec(subscribers, days), settings.source_dir, settings.truth_dir)
        timings["simulate_s"] = time.perf_counter() - began
    apply_feature_repo(settings)
    if full_history:
        wanted = [START + timedelta(days=i) for i in range(days)]
    else:
        # Only the days the frame reads (and the day before each, so the TTL fallback exists).
        snapshots = training_snapshot_days(settings, as_of)
        wanted = sorted({d - timedelta(days=k) for d in snapshots for k in (0, 1)} | {as_of})
    done = set(built_days(settings, "subscriber_billing_90d"))
    missing = [d for d in wanted if d not in done]
    began = time.perf_counter()
    with console.status(f"building {len(missing)} feature days at {subscribers:,} subscribers"):
        if full_history and missing:
            build_feature_tables(settings, missing[0], missing[-1])
        else:
            for day in missing:
                build_feature_tables(settings, day, day)
    if missing:
        timings["feature days built"] = len(missing)
        timings["build_s_per_day"] = (time.perf_counter() - began) / len(missing)
    return timings


def feature_repo_fingerprint() -> str:
    """SHA-256 of the feature declarations (``feature_repo/*.py`` and ``*.yaml``, where the
    features themselves are declared): a world prepared under other declarations is stale."""
    import hashlib

    digest = hashlib.sha256()
    repo = ROOT / "feature_repo"
    for path in sorted([*repo.glob("*.py"), *repo.glob("*.yaml")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def stamp_matches(marker: Path, stamp: dict) -> bool:
    """Whether ``marker`` records exactly ``stamp``: the world there can be reused."""
    return marker.exists() and json.loads(marker.read_text()) == stamp


# ----------------------------------------------------------------------------- synthetic data


def codes(rng: np.random.Generator, values: tuple[str, ...], p: list[float], n: int) -> np.ndarray:
    """``n`` indices into ``values`` drawn with probabilities ``p``."""
    return rng.choice(len(values), size=n, p=p).astype(np.int8)


def text(indices: np.ndarray, values: tuple[str, ...]) -> pa.Array:
    """The strings at ``indices`` of ``values``, as a plain string array."""
    return pa.DictionaryArray.from_arrays(pa.array(indices), pa.array(values)).cast(pa.string())


def strings(rng: np.random.Generator, values: tuple[str, ...], p: list[float], n: int) -> pa.Array:
    """``n`` of ``values`` drawn with probabilities ``p``, as a plain string array."""
    return text(codes(rng, values, p, n), values)


def v1_features(rng: np.random.Generator, n: int) -> dict[str, pa.Array]:
    """The 20 inputs of ``churn_model_v1`` for ``n`` subscribers: realistic shapes, typed as the
    feature tables type them, inside every feature contract."""
    plans = tuple(PLAN_PRICES)
    plan = codes(rng, plans, [0.3, 0.35, 0.25, 0.1], n)
    price = np.array(list(PLAN_PRICES.values()))[plan]
    ratio = rng.uniform(0.7, 1.3, n).astype(np.float32)
    changed = rng.random(n) < 0.05
    data_30 = np.where(rng.random(n) < 0.005, 0.0, rng.gamma(2.0, 23.0, n)).astype(np.float32)
    trend = rng.lognormal(0.0, 0.3, n).astype(np.float32)
    voice_30 = rng.gamma(2.0, 400.0, n).astype(np.float32)
    support_7 = rng.poisson(0.05, n)
    support_30 = support_7 + rng.poisson(0.15, n)
    bills = rng.choice([1, 2, 3], size=n, p=[0.03, 0.07, 0.9])
    return {
        "tenure_days": pa.array(rng.integers(30, 2500, n).astype(np.int32)),
        "plan": text(plan, plans),
        "contract_type": strings(rng, CONTRACTS, [0.5, 0.3, 0.2], n),
        "payment_method": strings(rng, PAYMENTS, [0.5, 0.3, 0.2], n),
        "monthly_charge": pa.array((price * ratio).astype(np.float32)),
        "charge_to_list_ratio": pa.array(ratio),
        "charge_change_90d": pa.array(
            np.where(changed, np.clip(rng.normal(0, 10, n), -100, 100), 0).astype(np.float32)
        ),
        "plan_changes_90d": pa.array((changed * rng.integers(1, 3, n)).astype(np.int32)),
        "data_gb_7d": pa.array(data_30 * np.float32(7 / 30) * trend),
        "data_gb_30d": pa.array(data_30),
        "data_trend_7d_30d": pa.array(trend, mask=data_30 == 0),
        "voice_minutes_7d": pa.array(
            voice_30 * np.float32(7 / 30) * rng.lognormal(0, 0.2, n).astype(np.float32)
        ),
        "voice_minutes_30d": pa.array(voice_30),
        "dropped_calls_30d": pa.array(rng.poisson(5.0, n).astype(np.int32)),
        "active_days_30d": pa.array((30 - np.minimum(30, rng.poisson(0.4, n))).astype(np.int32)),
        "support_calls_7d": pa.array(support_7.astype(np.int32)),
        "support_calls_30d": pa.array(support_30.astype(np.int32)),
        "network_tickets_30d": pa.array(rng.binomial(support_30, 0.4).astype(np.int32)),
        "late_payments_90d": pa.array(np.minimum(rng.poisson(0.15, n), bills).astype(np.int32)),
        "bills_90d": pa.array(bills.astype(np.int32)),
    }


def train_booster(
    params: dict, train: Any, label: np.ndarray, spec: ModelSpec, trees: int
) -> lgb.Booster:
    """LightGBM with ``params`` and exactly ``trees`` rounds on a synthetic ``train`` frame."""
    import lightgbm as lgb

    from tasks.training.model_spec import model_inputs

    return lgb.train(
        params,
        lgb.Dataset(model_inputs(train, spec), label=label, categorical_feature=spec.categorical),
        num_boost_round=trees,
    )
