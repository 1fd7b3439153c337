"""The simulator: determinism, prefixes, schemas, rules, hazard signal, scenarios, atomicity."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from tasks.core.layout import MANIFEST_NAME, table_glob, table_path
from tasks.core.schema import (
    BILLING,
    CANCELLATIONS,
    PLAN_CHANGES,
    PLANS,
    SOURCE_TABLES,
    SUBSCRIBERS,
    SUPPORT_TICKETS,
    TRUE_CHURN_PROBABILITY,
    USAGE_DAILY,
    TableSpec,
)
from tasks.data import simulate
from tasks.data.sim_population import WorldSpec
from tasks.data.simulate import WorldSummary, simulate_world

START = date(2024, 1, 1)
SHIFT_DAY = START + timedelta(days=40)
ALL_TABLES = (*SOURCE_TABLES.values(), TRUE_CHURN_PROBABILITY)


@dataclass(frozen=True)
class World:
    """A simulated world on disk and what the simulator said about it."""

    summary: WorldSummary
    source: Path
    truth: Path

    def root(self, spec: TableSpec) -> Path:
        return self.truth if spec is TRUE_CHURN_PROBABILITY else self.source

    def read(self, spec: TableSpec) -> pl.DataFrame:
        """The whole table, sorted by its date column and keys."""
        df = pl.read_parquet(table_glob(self.root(spec), spec))
        return df.sort([spec.date_column, *spec.keys])

    def until(self, spec: TableSpec, last: date) -> pl.DataFrame:
        """Rows dated on or before ``last``."""
        return self.read(spec).filter(pl.col(spec.date_column) <= last)

    def on(self, spec: TableSpec, day: date) -> pl.DataFrame:
        return self.read(spec).filter(pl.col(spec.date_column) == day)


def _simulate(root: Path, spec: WorldSpec, **kwargs: object) -> World:
    source, truth = root / "source", root / "truth"
    return World(simulate_world(spec, source, truth, **kwargs), source, truth)


def _files(world: World) -> dict[str, bytes]:
    """Every file of a world by its path relative to the world's root."""
    out = {}
    for top in (world.source, world.truth):
        for path in sorted(top.rglob("*")):
            if path.is_file():
                out[str(path.relative_to(top.parent))] = path.read_bytes()
    return out


def _spec(scenario: str = "baseline", days: int = 90) -> WorldSpec:
    start = None if scenario == "baseline" else SHIFT_DAY
    return WorldSpec(1500, days, START, seed=11, scenario=scenario, scenario_start=start)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> World:
    return _simulate(tmp_path_factory.mktemp("baseline"), _spec())


@pytest.fixture(scope="module")
def scenario_world(tmp_path_factory: pytest.TempPathFactory):
    """Scenario worlds (60 days, shift on day 40) built once each, on first use."""
    cache: dict[str, World] = {}

    def get(name: str) -> World:
        if name not in cache:
            cache[name] = _simulate(tmp_path_factory.mktemp(name), _spec(name, days=60))
        return cache[name]

    return get


def _tickets_30d(world: World, day: date) -> pl.DataFrame:
    """Per active subscriber on ``day``: tickets in the 30 days ending then, true probability."""
    con = duckdb.connect()
    result = con.sql(
        f"""
        select t.subscriber_id, t.true_churn_prob_30d as p, count(k.ticket_id) as tickets
        from read_parquet('{table_glob(world.truth, TRUE_CHURN_PROBABILITY)}') t
        left join read_parquet('{table_glob(world.source, SUPPORT_TICKETS)}') k
          on k.subscriber_id = t.subscriber_id and k.opened_date between t.date - 29 and t.date
        where t.date = ?
        group by all order by t.subscriber_id
        """,
        params=[day],
    )
    return pl.from_arrow(result.to_arrow_table())


# --- Determinism and prefix stability ----------------------------------------------------------


def test_same_spec_gives_byte_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    spec = WorldSpec(300, 40, START, seed=3)
    ticks: list[int] = []
    first = _simulate(tmp_path / "a", spec, chunk_days=15, progress=ticks.append)
    second = _simulate(tmp_path / "b", spec, chunk_days=15)
    assert sum(ticks) == spec.days
    assert _files(first) == _files(second)

    other = _simulate(tmp_path / "c", WorldSpec(300, 40, START, seed=4), chunk_days=15)
    assert not other.read(USAGE_DAILY).equals(first.read(USAGE_DAILY))

    # The chunk size changes the files, never the rows.
    rechunked = _simulate(tmp_path / "d", spec, chunk_days=7)
    for table in ALL_TABLES:
        assert rechunked.read(table).equals(first.read(table)), table.name


def test_first_days_do_not_depend_on_how_many_follow(baseline: World, tmp_path: Path) -> None:
    shorter = _simulate(tmp_path, _spec(days=60))
    last = shorter.summary.end
    for table in ALL_TABLES:
        ours, theirs = shorter.until(table, last), baseline.until(table, last)
        assert ours.height > 0 or table is CANCELLATIONS
        assert ours.equals(theirs), table.name


# --- Layout and schemas ------------------------------------------------------------------------


def test_tables_have_exactly_the_declared_schemas_and_layout(baseline: World) -> None:
    for table in ALL_TABLES:
        path = table_path(baseline.root(table), table)
        files = sorted(path.glob("*.parquet")) if table.partitioned else [path]
        assert files, table.name
        for file in files:
            schema = pq.read_schema(file)
            assert schema.equals(table.arrow_schema), f"{file}: {schema} != {table.arrow_schema}"
        if table.partitioned:
            chunk_starts = [START + timedelta(days=d) for d in range(0, 90, 31)]
            assert [f.name for f in files] == [
                f"part-{d.isoformat()}.parquet" for d in chunk_starts
            ]

    manifest = json.loads((baseline.source / MANIFEST_NAME).read_text())
    assert manifest == {
        "source": "simulator",
        "start": "2024-01-01",
        "end": (START + timedelta(days=89)).isoformat(),
        "subscribers": 1500,
        "days": 90,
        "seed": 11,
        "scenario": "baseline",
        "scenario_start": None,
        "generator_version": simulate.GENERATOR_VERSION,
    }


def test_summary_counts_match_the_files(baseline: World) -> None:
    summary = baseline.summary
    for table in ALL_TABLES:
        assert summary.rows[table.name] == baseline.read(table).height, table.name
    assert summary.end == START + timedelta(days=89)
    assert summary.subscribers_ever == summary.rows[SUBSCRIBERS.name]
    assert summary.churned == summary.rows[CANCELLATIONS.name]
    assert summary.active_at_end == baseline.on(USAGE_DAILY, summary.end).height
    assert summary.active_at_end == summary.subscribers_ever - summary.churned


# --- World rules -------------------------------------------------------------------------------


def test_subscribers_ids_and_signups(baseline: World) -> None:
    subs = pl.read_parquet(table_path(baseline.source, SUBSCRIBERS))
    assert subs["subscriber_id"].to_list() == list(range(1, subs.height + 1))
    assert subs["signup_date"].is_sorted()
    initial = subs.head(1500)
    assert initial["signup_date"].max() < START
    assert initial["signup_date"].min() >= START - timedelta(days=6 * 365)
    # More short tenure than long.
    tenure = (pl.lit(START) - initial["signup_date"]).dt.total_days()
    assert (
        initial.select((tenure < 365).mean()).item()
        > initial.select((tenure > 4 * 365).mean()).item()
    )
    arrivals = subs.slice(1500)
    assert arrivals.height > 0 and arrivals["signup_date"].min() > START
    ratio = (subs["monthly_charge"] / subs["plan"].replace_strict(PLANS)).to_numpy()
    assert ratio.min() >= 0.79 and ratio.max() <= 1.31


def test_usage_only_while_subscribed(baseline: World) -> None:
    usage = baseline.read(USAGE_DAILY)
    spans = usage.group_by("subscriber_id").agg(
        first=pl.col("usage_date").min(), last=pl.col("usage_date").max(), days=pl.len()
    )
    subs = pl.read_parquet(table_path(baseline.source, SUBSCRIBERS))
    cancels = pl.read_parquet(table_path(baseline.source, CANCELLATIONS))
    joined = subs.join(spans, on="subscriber_id", how="left").join(
        cancels, on="subscriber_id", how="left"
    )
    assert joined["first"].null_count() == 0, "every subscriber has usage"
    # Active every day from max(signup, start) to the day before cancel (or the end), no gaps.
    expected_first = pl.max_horizontal(pl.col("signup_date"), pl.lit(START))
    expected_last = pl.coalesce(
        pl.col("cancel_date") - timedelta(days=1), pl.lit(baseline.summary.end)
    )
    bad = joined.filter(
        (pl.col("first") != expected_first)
        | (pl.col("last") != expected_last)
        | (pl.col("days") != (pl.col("last") - pl.col("first")).dt.total_days() + 1)
    )
    assert bad.height == 0, bad.head()
    assert cancels["cancel_date"].max() <= baseline.summary.end
    truth = baseline.read(TRUE_CHURN_PROBABILITY)
    assert truth.select("subscriber_id", "date").equals(
        usage.select("subscriber_id", pl.col("usage_date").alias("date"))
    )


def test_files_are_sorted_by_date_then_key(baseline: World) -> None:
    for table in ALL_TABLES:
        df = pl.read_parquet(table_glob(baseline.root(table), table))
        assert df.equals(df.sort([table.date_column, *table.keys])), table.name
    tickets = pl.read_parquet(table_path(baseline.source, SUPPORT_TICKETS))
    assert tickets["ticket_id"].to_list() == list(range(1, tickets.height + 1))


def test_bills_plan_changes_and_values(baseline: World) -> None:
    subs = baseline.read(SUBSCRIBERS).select("subscriber_id", "signup_date")
    bills = baseline.read(BILLING).join(subs, on="subscriber_id")
    assert (bills["due_date"] == bills["bill_date"] + timedelta(days=14)).all()
    since = (bills["bill_date"] - bills["signup_date"]).dt.total_days()
    assert ((since > 0) & (since % 30 == 0)).all()
    late_share = (bills["days_late"] > 0).mean()
    assert 0.01 < late_share < 0.2

    changes = baseline.read(PLAN_CHANGES)
    assert set(changes["reason"]) <= {"upgrade", "downgrade"}
    old, new = changes["old_plan"].replace_strict(PLANS), changes["new_plan"].replace_strict(PLANS)
    assert ((new > old) == (changes["reason"] == "upgrade")).all()

    usage = baseline.read(USAGE_DAILY)
    assert usage["data_gb"].min() >= 0 and usage["voice_minutes"].min() >= 0
    assert 0.5 < usage["data_gb"].mean() < 4 and 10 < usage["voice_minutes"].mean() < 60
    truth = baseline.read(TRUE_CHURN_PROBABILITY)["true_churn_prob_30d"]
    assert truth.min() >= 0 and truth.max() <= 1


def test_monthly_churn_rate_is_plausible(baseline: World) -> None:
    summary = baseline.summary
    mean_active = summary.rows[USAGE_DAILY.name] / 90
    monthly = summary.churned / mean_active / 90 * 30
    assert 0.015 < monthly < 0.04, monthly
    mean_prob = baseline.read(TRUE_CHURN_PROBABILITY)["true_churn_prob_30d"].mean()
    assert 0.015 < mean_prob < 0.04, mean_prob
    # Arrivals roughly replace the leavers.
    assert 0.9 < summary.active_at_end / 1500 < 1.1


def test_hazard_follows_contract_and_support_tickets(baseline: World) -> None:
    truth = baseline.read(TRUE_CHURN_PROBABILITY).join(
        baseline.read(SUBSCRIBERS).select("subscriber_id", "contract_type"), on="subscriber_id"
    )
    by_contract = dict(
        truth.group_by("contract_type").agg(pl.col("true_churn_prob_30d").mean()).iter_rows()
    )
    assert by_contract["month_to_month"] > by_contract["one_year"] > by_contract["two_year"]
    assert by_contract["month_to_month"] > 2 * by_contract["two_year"]

    day = START + timedelta(days=75)
    recent = _tickets_30d(baseline, day)
    with_tickets = recent.filter(pl.col("tickets") > 0)["p"].mean()
    without = recent.filter(pl.col("tickets") == 0)["p"].mean()
    assert with_tickets > 1.3 * without


def test_observable_probability_leaves_out_only_frailty_and_the_age_term(baseline: World) -> None:
    # Back from 30-day probabilities to daily logits: true minus observable is frailty + age term,
    # the same every day of a subscriber, N(0, 0.5^2) across them, and 0.25 higher for 18-24.
    def logit(column: str) -> pl.Expr:
        h = -((pl.col(column).cast(pl.Float64).neg().log1p() / 30).exp() - 1)
        return h.log() - h.neg().log1p()

    truth = baseline.read(TRUE_CHURN_PROBABILITY)
    assert truth["observable_churn_prob_30d"].is_between(0, 1).all()
    per_subscriber = (
        truth.with_columns(diff=logit("true_churn_prob_30d") - logit("observable_churn_prob_30d"))
        .group_by("subscriber_id")
        .agg(diff=pl.col("diff").mean(), spread=pl.col("diff").max() - pl.col("diff").min())
        .join(baseline.read(SUBSCRIBERS).select("subscriber_id", "age_band"), on="subscriber_id")
    )
    assert per_subscriber["spread"].max() < 1e-3
    young = pl.col("age_band") == "18-24"
    others = per_subscriber.filter(~young)["diff"]
    assert abs(others.mean()) < 0.05 and 0.45 < others.std() < 0.55
    young_mean = per_subscriber.filter(young)["diff"].mean()
    assert young_mean - others.mean() == pytest.approx(0.25, abs=0.1)


# --- Scenarios ---------------------------------------------------------------------------------


def _assert_same_before(world: World, baseline: World, day: date) -> None:
    for table in ALL_TABLES:
        assert world.until(table, day - timedelta(days=1)).equals(
            baseline.until(table, day - timedelta(days=1))
        ), table.name


def test_price_shock_raises_charges_for_a_share(baseline: World, scenario_world) -> None:
    shock = scenario_world("price_shock")
    _assert_same_before(shock, baseline, SHIFT_DAY)
    changes = shock.read(PLAN_CHANGES).filter(pl.col("reason") == "price_change")
    assert set(changes["change_date"]) == {SHIFT_DAY}
    active = shock.on(USAGE_DAILY, SHIFT_DAY).height
    assert 0.2 < changes.height / active < 0.4
    assert (changes["old_plan"] == changes["new_plan"]).all()
    ratio = changes["new_monthly_charge"] / changes["old_monthly_charge"]
    assert ratio.min() > 1.24 and ratio.max() < 1.26

    after = START + timedelta(days=59)
    bills = shock.read(BILLING).filter(pl.col("bill_date").is_between(SHIFT_DAY, after))
    base_bills = baseline.read(BILLING).filter(pl.col("bill_date").is_between(SHIFT_DAY, after))
    assert bills["amount"].mean() > 1.04 * base_bills["amount"].mean()
    # The hazard reacts: same people on the first day, higher churn probability.
    p = shock.on(TRUE_CHURN_PROBABILITY, SHIFT_DAY)
    base_p = baseline.on(TRUE_CHURN_PROBABILITY, SHIFT_DAY)
    assert p["subscriber_id"].equals(base_p["subscriber_id"])
    assert p["true_churn_prob_30d"].mean() > 1.1 * base_p["true_churn_prob_30d"].mean()


def test_usage_shift_moves_usage_but_not_churn(baseline: World, scenario_world) -> None:
    shifted = scenario_world("usage_shift")
    _assert_same_before(shifted, baseline, SHIFT_DAY)
    after = START + timedelta(days=59)
    window = pl.col("usage_date").is_between(SHIFT_DAY, after)
    usage = shifted.read(USAGE_DAILY).filter(window)
    base = baseline.read(USAGE_DAILY).filter(window)
    assert 1.5 < usage["data_gb"].mean() / base["data_gb"].mean() < 1.7
    assert 0.75 < usage["voice_minutes"].mean() / base["voice_minutes"].mean() < 0.85
    assert shifted.on(TRUE_CHURN_PROBABILITY, SHIFT_DAY).equals(
        baseline.on(TRUE_CHURN_PROBABILITY, SHIFT_DAY)
    )
    # Nothing but the observation moved: churn and tickets match the baseline to the row.
    for table in (TRUE_CHURN_PROBABILITY, SUPPORT_TICKETS, CANCELLATIONS):
        assert shifted.read(table).equals(baseline.until(table, after)), table.name


def test_support_decline_weighs_tickets_not_their_rate(baseline: World, scenario_world) -> None:
    declined = scenario_world("support_decline")
    _assert_same_before(declined, baseline, SHIFT_DAY)
    assert declined.on(SUPPORT_TICKETS, SHIFT_DAY).equals(baseline.on(SUPPORT_TICKETS, SHIFT_DAY))
    after = START + timedelta(days=59)

    def rate(world: World) -> float:
        tickets = world.read(SUPPORT_TICKETS).filter(
            pl.col("opened_date").is_between(SHIFT_DAY, after)
        )
        days = world.read(USAGE_DAILY).filter(pl.col("usage_date").is_between(SHIFT_DAY, after))
        return tickets.height / days.height

    assert 0.75 < rate(declined) / rate(baseline) < 1.33

    ours, theirs = _tickets_30d(declined, SHIFT_DAY), _tickets_30d(baseline, SHIFT_DAY)
    assert ours.select("subscriber_id", "tickets").equals(theirs.select("subscriber_id", "tickets"))
    heavy = ours["tickets"] > 0
    assert (ours.filter(heavy)["p"] > theirs.filter(heavy)["p"]).all()
    assert ours.filter(~heavy)["p"].equals(theirs.filter(~heavy)["p"])
    assert ours.filter(heavy)["p"].mean() > 1.5 * theirs.filter(heavy)["p"].mean()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scenario": "meteor"}, "unknown scenario 'meteor'"),
        ({"scenario": "price_shock"}, "needs scenario_start"),
        (
            {"scenario": "usage_shift", "scenario_start": START - timedelta(days=1)},
            "before the world's start",
        ),
        ({"scenario_start": START}, "only meaningful with a scenario"),
        ({"subscribers": 0}, "subscribers must be at least 1"),
        ({"days": 0}, "days must be at least 1"),
        ({"seed": -1}, "seed must be a non-negative"),
    ],
)
def test_invalid_spec_is_rejected_with_a_clear_message(kwargs: dict, message: str) -> None:
    args = {"subscribers": 100, "days": 10, "start": START, **kwargs}
    with pytest.raises(ValueError, match=message):
        WorldSpec(**args)


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    spec = WorldSpec(10, 5, START)
    with pytest.raises(ValueError, match="chunk_days"):
        simulate_world(spec, tmp_path / "s", tmp_path / "t", chunk_days=0)
    with pytest.raises(ValueError, match="must differ"):
        simulate_world(spec, tmp_path / "s", tmp_path / "s")


# --- Atomicity ---------------------------------------------------------------------------------


def test_failed_run_leaves_previous_world_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = _simulate(tmp_path, WorldSpec(300, 40, START, seed=1), chunk_days=10)
    before = _files(previous)
    real_write = simulate._write_part
    calls = 0

    def failing_write(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError("disk full")
        real_write(*args, **kwargs)

    monkeypatch.setattr(simulate, "_write_part", failing_write)
    with pytest.raises(OSError, match="disk full"):
        simulate_world(
            WorldSpec(300, 40, START, seed=2), previous.source, previous.truth, chunk_days=10
        )
    assert _files(previous) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "truth"]

    # Nothing is created when there was no world before.
    calls = 0
    with pytest.raises(OSError, match="disk full"):
        _simulate(tmp_path / "fresh", WorldSpec(300, 40, START, seed=2), chunk_days=10)
    assert list((tmp_path / "fresh").iterdir()) == []
