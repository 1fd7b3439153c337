"""The feature and label SQL on tiny hand-made source tables: window edges, known-at dates, labels."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import SOURCE_TABLES
from tasks.core.settings import Settings
from tasks.features.frames import training_entities
from tasks.features.tables import build_feature_tables, read_feature_day

D = date(2026, 6, 1)  # the snapshot day under test
START = D - timedelta(days=200)


def day(offset: int) -> date:
    return D + timedelta(days=offset)


def subscriber(sid: int, signup: date, plan: str = "standard", charge: float = 55.0) -> dict:
    return {
        "subscriber_id": sid,
        "signup_date": signup,
        "plan": plan,
        "contract_type": "month_to_month",
        "payment_method": "card",
        "monthly_charge": charge,
        "region": "north",
        "age_band": "25-34",
        "gender": "female",
    }


def write_sources(settings: Settings, **rows: list[dict]) -> None:
    """Write every source table (empty unless given) and a manifest covering START .. D + 40."""
    settings.source_dir.mkdir(parents=True)
    for name, spec in SOURCE_TABLES.items():
        table = pa.Table.from_pylist(rows.get(name, []), schema=spec.arrow_schema)
        path = table_path(settings.source_dir, spec)
        if spec.partitioned:
            path.mkdir()
            path = path / "part-0.parquet"
        pq.write_table(table, path)
    manifest = {"source": "test", "start": START.isoformat(), "end": day(40).isoformat()}
    (settings.source_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def features_on(settings: Settings, name: str, snapshot: date = D) -> dict[int, dict]:
    build_feature_tables(settings, snapshot, snapshot, specs={})  # the SQL alone, no contracts
    return {r["subscriber_id"]: r for r in read_feature_day(settings, name, snapshot).to_pylist()}


def test_spine_includes_signup_day_and_excludes_first_day_without_service(
    churn_home: Settings,
) -> None:
    write_sources(
        churn_home,
        subscribers=[
            subscriber(1, D),
            subscriber(2, START),
            subscriber(3, START),
            subscriber(4, day(1)),
        ],
        cancellations=[
            {"subscriber_id": 2, "cancel_date": D, "reason": "price"},  # gone on D
            {
                "subscriber_id": 3,
                "cancel_date": day(1),
                "reason": "price",
            },  # last day of service is D
        ],
    )
    assert set(features_on(churn_home, "subscriber_profile")) == {1, 3}


def test_support_windows_have_exact_edges(churn_home: Settings) -> None:
    offsets = [
        -30,
        -29,
        -7,
        -6,
        0,
        1,
    ]  # -30 and +1 fall outside the 30-day window; -7 outside the 7-day one
    write_sources(
        churn_home,
        subscribers=[subscriber(1, START)],
        support_tickets=[
            {
                "ticket_id": i + 1,
                "subscriber_id": 1,
                "opened_date": day(o),
                "category": "network" if o == 0 else "billing",
            }
            for i, o in enumerate(offsets)
        ],
    )
    row = features_on(churn_home, "subscriber_support_30d")[1]
    assert (row["support_calls_30d"], row["support_calls_7d"], row["network_tickets_30d"]) == (
        4,
        2,
        1,
    )


def test_late_payment_counts_from_the_day_after_due(churn_home: Settings) -> None:
    def bill(due_offset: int, late: int) -> dict:
        due = day(due_offset)
        return {
            "subscriber_id": 1,
            "bill_date": due - timedelta(days=14),
            "due_date": due,
            "amount": 55.0,
            "days_late": late,
        }

    write_sources(
        churn_home,
        subscribers=[subscriber(1, START)],
        billing=[
            bill(-91, 5),  # known late on D-90: just outside the 90-day window
            bill(-90, 5),  # known late on D-89: inside
            bill(-1, 3),  # known late on D: inside
            bill(0, 3),  # due today: not known to be late until tomorrow
            bill(-40, 0),  # paid on time
        ],
    )
    assert features_on(churn_home, "subscriber_billing_90d")[1]["late_payments_90d"] == 2


def test_usage_windows_count_missing_days_as_no_use(churn_home: Settings) -> None:
    usage = [
        {
            "subscriber_id": 1,
            "usage_date": day(o),
            "data_gb": 1.0,
            "voice_minutes": 10.0,
            "dropped_calls": 1,
        }
        for o in range(-40, 1)
        if o not in (-3, -2)  # two days without a row inside the last week
    ]
    write_sources(
        churn_home, subscribers=[subscriber(1, START), subscriber(2, START)], usage_daily=usage
    )
    rows = features_on(churn_home, "subscriber_usage_30d")
    one = rows[1]
    assert one["data_gb_7d"] == pytest.approx(5.0)
    assert one["data_gb_30d"] == pytest.approx(28.0)
    assert one["active_days_30d"] == 28 and one["dropped_calls_30d"] == 28
    assert one["data_trend_7d_30d"] == pytest.approx((5.0 / 7) / (28.0 / 30), rel=1e-6)
    # No usage at all: zero totals and no trend (not a division by zero).
    assert rows[2]["data_gb_30d"] == 0 and rows[2]["data_trend_7d_30d"] is None


def test_dropped_call_rate_is_per_100_call_minutes_of_the_30_days(churn_home: Settings) -> None:
    def use(sid: int, offset: int, voice: float, dropped: int) -> dict:
        return {
            "subscriber_id": sid,
            "usage_date": day(offset),
            "data_gb": 1.0,
            "voice_minutes": voice,
            "dropped_calls": dropped,
        }

    usage = [
        use(1, -30, 500.0, 50),  # the day before the 30-day window: never counted
        use(1, -29, 100.0, 1),
        use(1, 0, 100.0, 2),
        use(1, 1, 500.0, 50),  # the next day: not known on D
        use(2, -3, 0.0, 0),  # data only: no call minute, nothing to drop
    ]
    write_sources(
        churn_home,
        subscribers=[subscriber(1, START), subscriber(2, START), subscriber(3, START)],
        usage_daily=usage,
    )
    rows = features_on(churn_home, "subscriber_usage_30d")
    assert rows[1]["dropped_call_rate_30d"] == pytest.approx(100 * 3 / 200)
    assert rows[2]["dropped_call_rate_30d"] is None
    assert rows[3]["dropped_call_rate_30d"] is None  # no usage row at all


def test_profile_takes_plan_and_charge_as_of_the_day(churn_home: Settings) -> None:
    def change(sid: int, offset: int, old: float, new: float, plan: str = "premium") -> dict:
        return {
            "subscriber_id": sid,
            "change_date": day(offset),
            "old_plan": "standard",
            "new_plan": plan,
            "old_monthly_charge": old,
            "new_monthly_charge": new,
            "reason": "upgrade",
        }

    write_sources(
        churn_home,
        subscribers=[
            subscriber(1, START),
            subscriber(2, START),
            subscriber(3, day(-20)),
            subscriber(4, START),
        ],
        plan_changes=[
            change(1, -100, 55.0, 75.0),  # before the 90-day window: no change within it
            change(2, -50, 55.0, 75.0),  # inside
            change(3, -10, 55.0, 80.0),  # a newcomer: change measured since signup
            change(4, 1, 55.0, 75.0),  # tomorrow: invisible today
        ],
    )
    rows = features_on(churn_home, "subscriber_profile")
    assert (rows[1]["plan"], rows[1]["charge_change_90d"], rows[1]["plan_changes_90d"]) == (
        "premium",
        0.0,
        0,
    )
    assert (
        rows[2]["monthly_charge"],
        rows[2]["charge_change_90d"],
        rows[2]["plan_changes_90d"],
    ) == (75.0, 20.0, 1)
    assert rows[3]["charge_change_90d"] == pytest.approx(25.0) and rows[3]["tenure_days"] == 20
    assert (rows[4]["plan"], rows[4]["monthly_charge"]) == ("standard", 55.0)
    assert rows[2]["charge_to_list_ratio"] == pytest.approx(1.0)  # 75 on premium, list 75


def test_labels_look_exactly_horizon_days_ahead(churn_home: Settings) -> None:
    write_sources(
        churn_home,
        subscribers=[subscriber(i, START) for i in (1, 2, 3)],
        cancellations=[
            {
                "subscriber_id": 1,
                "cancel_date": day(30),
                "reason": "price",
            },  # last service day D+29: churned
            {"subscriber_id": 2, "cancel_date": day(31), "reason": "price"},  # one day too late
        ],
    )
    as_of = day(churn_home.label_horizon_days)  # D is then the newest mature snapshot
    frame = training_entities(churn_home, as_of)
    newest = frame[frame["snapshot_date"] == D].set_index("subscriber_id")["churned_30d"].to_dict()
    assert newest == {1: 1, 2: 0, 3: 0}
    assert frame["snapshot_date"].max() == D


# --- subscriber_usage_90d: usage relative to the subscriber's own baseline ----------------------

# Marker values on the window edges of snapshot day D (offsets from D): an off-by-one on any edge,
# or a row after D counted, moves the result far from the expected value.
_DATA_MARKERS = {-90: 500.0, -89: 2.0, -30: 3.0, -29: 5.0, -14: 7.0, -13: 11.0, -7: 13.0, -6: 17.0}
_FUTURE = 900.0  # data on D + 1: must never count on D


def _usage(sid: int, offset: int, data_gb: float, voice: float) -> dict:
    return {
        "subscriber_id": sid,
        "usage_date": day(offset),
        "data_gb": data_gb,
        "voice_minutes": voice,
        "dropped_calls": 0,
    }


def _mean(values: dict[int, float], first: int, last: int) -> float:
    """Average per day with a row over offsets first .. last (both included)."""
    inside = [v for o, v in values.items() if first <= o <= last]
    return sum(inside) / len(inside)


def test_usage_baseline_windows_have_exact_edges_and_ignore_the_next_day(
    churn_home: Settings,
) -> None:
    offsets = range(-120, 2)  # every day up to and including D + 1
    data = {o: _DATA_MARKERS.get(o, 1.0) for o in offsets}
    data[1] = _FUTURE
    voice = {o: 10.0 if -6 <= o <= 0 else 20.0 for o in offsets}  # calls halved this week
    voice[1] = 1000.0
    write_sources(
        churn_home,
        subscribers=[subscriber(1, START)],
        usage_daily=[_usage(1, o, data[o], voice[o]) for o in offsets],
    )
    # Build D and D + 1 in one chunk: the D + 1 row is in the query, and must not reach D's row.
    build_feature_tables(churn_home, D, day(1), specs={})
    row = read_feature_day(churn_home, "subscriber_usage_90d", D).to_pylist()[0]

    known = {o: v for o, v in data.items() if o <= 0}
    base, base7 = _mean(known, -89, -30), _mean(known, -89, -7)
    expected = {
        "data_gb_per_day_90d": _mean(known, -89, 0),
        "data_ratio_30d_baseline": _mean(known, -29, 0) / base,
        "data_ratio_14d_baseline": _mean(known, -13, 0) / base,
        "data_ratio_7d_baseline": _mean(known, -6, 0) / base7,
        "voice_minutes_per_day_90d": (7 * 10.0 + 83 * 20.0) / 90,
        "voice_ratio_30d_baseline": (7 * 10.0 + 23 * 20.0) / 30 / 20.0,
        "voice_ratio_14d_baseline": (7 * 10.0 + 7 * 20.0) / 14 / 20.0,
        "voice_ratio_7d_baseline": 0.5,
    }
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-5), name
    for window in ("30d", "14d", "7d"):
        geometric = (
            expected[f"data_ratio_{window}_baseline"] * expected[f"voice_ratio_{window}_baseline"]
        ) ** 0.5
        assert row[f"usage_ratio_{window}_baseline"] == pytest.approx(geometric, rel=1e-5)
    # The edges by hand: the 90-day window is D-89 .. D (500 on D-90 left out, 2 on D-89 in) ...
    assert row["data_gb_per_day_90d"] == pytest.approx((83 + 2 + 3 + 5 + 7 + 11 + 13 + 17) / 90)
    # ... and the baseline of the 30-day ratio is D-89 .. D-30 (2 and 3 in, 5 on D-29 out).
    assert base == pytest.approx((58 + 2 + 3) / 60)

    # D + 1's own row does see that day's use, and D's row is the same when built alone.
    assert (
        read_feature_day(churn_home, "subscriber_usage_90d", day(1)).to_pylist()[0][
            "data_gb_per_day_90d"
        ]
        > row["data_gb_per_day_90d"] + 5
    )
    assert features_on(churn_home, "subscriber_usage_90d")[1] == row


def test_usage_baseline_is_null_without_history_to_compare_with(churn_home: Settings) -> None:
    def history(sid: int, first: int, data_gb: float = 1.0, every: int = 1) -> list[dict]:
        return [_usage(sid, o, data_gb, 20.0) for o in range(first, 1, every)]

    zero_base = [_usage(6, o, 0.0 if o <= -30 else 1.0, 20.0) for o in range(-89, 1)]
    write_sources(
        churn_home,
        subscribers=[
            subscriber(1, day(-30)),  # 31 days in service: a one-day baseline (D-30)
            subscriber(2, day(-29)),  # 30 days: nothing before D-29, no 30- or 14-day baseline
            subscriber(3, day(-6)),  # 7 days: not even a 7-day baseline (D-89 .. D-7)
            subscriber(4, START),  # in service, but no usage rows at all
            subscriber(5, START),  # a row every other day
            subscriber(6, START),  # no data use at all in the baseline
        ],
        usage_daily=[
            *history(1, -30),
            *history(2, -29),
            *history(3, -6),
            *history(5, -119, data_gb=2.0, every=2),
            *zero_base,
        ],
    )
    rows = features_on(churn_home, "subscriber_usage_90d")
    ratios = [
        f"{kind}_ratio_{window}_baseline"
        for kind in ("data", "voice", "usage")
        for window in ("30d", "14d", "7d")
    ]

    # A newcomer's short history is not a drop: steady use reads as 1, not as 31/90.
    assert all(rows[1][name] == pytest.approx(1.0) for name in ratios)
    assert rows[1]["data_gb_per_day_90d"] == pytest.approx(1.0)

    short = rows[2]
    assert all(
        short[f"{k}_ratio_{w}_baseline"] is None
        for k in ("data", "voice", "usage")
        for w in ("30d", "14d")
    )
    assert all(
        short[f"{k}_ratio_7d_baseline"] == pytest.approx(1.0) for k in ("data", "voice", "usage")
    )

    assert all(rows[3][name] is None for name in ratios)
    assert rows[3]["data_gb_per_day_90d"] == pytest.approx(1.0)

    assert all(
        rows[4][name] is None
        for name in [*ratios, "data_gb_per_day_90d", "voice_minutes_per_day_90d"]
    )

    # Days without a usage row are not days without use: the average is per day with a row.
    assert all(rows[5][name] == pytest.approx(1.0) for name in ratios)
    assert rows[5]["data_gb_per_day_90d"] == pytest.approx(2.0)

    # A baseline without data use gives no data ratio (not a division by zero); voice still has one.
    zero = rows[6]
    assert zero["data_ratio_30d_baseline"] is None and zero["usage_ratio_30d_baseline"] is None
    assert zero["voice_ratio_30d_baseline"] == pytest.approx(1.0)
    assert zero["data_ratio_7d_baseline"] == pytest.approx((7 / 7) / (23 / 83))
