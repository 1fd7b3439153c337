"""The backtest's plain parts: calendar, policies, summary, recovery share, files."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from tasks.ops.backtest import (
    DEFAULT_POLICY,
    FOLLOWS_UP,
    HISTORY_DAYS,
    MONITORED,
    POLICIES,
    WEEKLY,
    BacktestError,
    PolicyRun,
    backtest_calendar,
    check_policies,
    link_world,
    paired_gain,
    recovered_share_interval,
    scheduled_retraining,
    summarize,
    write_results,
)

START = date(2026, 1, 1)


def test_calendar_leaves_history_before_and_label_horizon_after():
    calendar = backtest_calendar(START, 14, 121, 30)
    assert calendar.first_training == START + timedelta(days=HISTORY_DAYS)
    assert calendar.nights[0] == calendar.first_training + timedelta(days=1)
    assert len(calendar.nights) == 135
    assert calendar.shift == calendar.nights[14]
    # Outcomes of the last night mature on the world's last day.
    assert calendar.world_end == calendar.nights[-1] + timedelta(days=30)


def test_a_first_night_without_enough_history_names_the_day_to_start_from():
    with pytest.raises(BacktestError, match=r"start from 2026-07-31 instead"):
        backtest_calendar(START, 3, 3, 30, first_night=date(2026, 7, 1))
    later = backtest_calendar(START, 3, 3, 30, first_night=date(2026, 9, 1))
    assert later.first_training == date(2026, 8, 31)


def test_a_backtest_needs_nights_on_both_sides_of_the_shift():
    with pytest.raises(BacktestError, match="before and after the shift"):
        backtest_calendar(START, 0, 10, 30)


def test_unknown_policies_are_refused_by_name():
    assert check_policies(["none", "none", "nightly"]) == ["none", "nightly"]
    with pytest.raises(BacktestError, match="unknown retraining policy hourly"):
        check_policies(["none", "hourly"])
    with pytest.raises(BacktestError, match="no policy"):
        check_policies([])


def test_schedules():
    saturday = date(2026, 8, 8)
    assert saturday.weekday() == 5
    assert scheduled_retraining("weekly", saturday) == "weekly schedule"
    assert scheduled_retraining("weekly", saturday + timedelta(days=1)) is None
    # The deployed default runs the weekly schedule beside the drift trigger, as prefect.yaml does.
    assert scheduled_retraining("deployed", saturday) == "weekly schedule"
    assert scheduled_retraining("deployed", saturday + timedelta(days=1)) is None
    assert all(scheduled_retraining("nightly", saturday + timedelta(days=i)) for i in range(7))
    for policy in ("none", "drift", "drift-matured"):
        assert scheduled_retraining(policy, saturday) is None


def _realized(shift: date) -> pd.DataFrame:
    # none drops after the shift; nightly recovers fully 45 days on; drift-matured 80 % of it.
    rows = []
    for i in range(-10, 130):
        day = shift + timedelta(days=i)
        after = i >= 0
        late = i >= 45
        for policy, p in (
            ("none", 0.20 if not after else 0.10),
            ("nightly", 0.20 if not after else (0.12 if not late else 0.20)),
            ("drift-matured", 0.20 if not after else (0.10 if not late else 0.18)),
        ):
            rows.append({"policy": policy, "score_date": day, "precision_at_k": p, "roc_auc": 0.7})
    return pd.DataFrame(rows)


def test_summary():
    shift = date(2026, 8, 6)
    runs = [
        PolicyRun("none"),
        PolicyRun("nightly", retrainings=130, promotions=20, refusals={"fairness": 3}),
        PolicyRun(
            "drift-matured",
            retrainings=2,
            promotions=2,
            slack_messages=3,
            incidents=1,
            most_incident_messages=3,
        ),
    ]
    summary = summarize(_realized(shift), runs, shift)
    row = summary.set_index("policy").loc["drift-matured"]
    assert row["p@K before"] == pytest.approx(0.20)
    assert row["p@K +45..+120d"] == pytest.approx(0.18)
    assert row["slack messages"] == 3
    assert row["incidents (most messages)"] == "1 (3)"
    assert summary.set_index("policy").loc["nightly", "refusals"] == "fairness 3"
    # The gain over none in the recovery window, paired by night, with its interval.
    gains = summary.set_index("policy")["p@K gain vs none (95% CI)"]
    assert gains["none"] == "—"
    assert gains["drift-matured"] == "+0.080 [+0.080, +0.080]"  # no noise in this made-up run


def test_paired_gain_interval_widens_with_noise():
    shift = date(2026, 8, 6)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(140):
        day = shift + timedelta(days=i)
        base = 0.12 + rng.normal(0, 0.01)
        rows += [
            {"policy": "none", "score_date": day, "precision_at_k": base},
            {"policy": "x", "score_date": day, "precision_at_k": base + 0.01 + rng.normal(0, 0.02)},
        ]
    realized = pd.DataFrame(rows)
    text = paired_gain(realized, "x", "none", shift + timedelta(45), shift + timedelta(120))
    mean, lo, hi = (
        float(v) for v in text.replace("[", "").replace("]", "").replace(",", "").split()
    )
    assert lo < mean < hi and lo < 0.01 < hi and hi - lo < 0.03
    assert paired_gain(realized, "y", "none", shift, shift + timedelta(10)) == "—"


def test_results_are_written_whole(tmp_path):
    shift = date(2026, 8, 6)
    realized = _realized(shift)
    runs = [PolicyRun(p) for p in ("none", "nightly", "drift-matured")]
    summary = summarize(realized, runs, shift)
    calendar = backtest_calendar(START, 10, 130, 30)
    files = write_results(tmp_path, "price_shock", realized, summary, runs, calendar)
    assert files["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| drift-matured |" in files["table"].read_text()
    assert len(pd.read_csv(files["realized"])) == len(realized)
    assert not list(tmp_path.glob(".*.tmp"))


def test_policy_homes_share_the_world_and_keep_their_own_state(tmp_path):
    world = tmp_path / "world"
    for name in ("source", "truth", "features", "feast"):
        (world / name).mkdir(parents=True)
    (world / "source" / "x.parquet").write_bytes(b"data")
    home = tmp_path / "none"
    link_world(world, home)
    link_world(world, home)  # idempotent
    assert (home / "source" / "x.parquet").read_bytes() == b"data"
    assert not (home / "mlflow").exists()


def test_every_policy_named_in_the_issue_and_the_deployed_default():
    assert POLICIES == ("none", "weekly", "drift", "drift-matured", "deployed", "nightly")
    assert DEFAULT_POLICY == "deployed"
    assert set(FOLLOWS_UP) <= set(MONITORED) and "deployed" in WEEKLY
    assert np.isnan(
        summarize(_realized(date(2026, 8, 6)), [PolicyRun("weekly")], date(2026, 8, 6))[
            "p@K before"
        ][0]
    )


def _noisy_nights(shift: date, gap: float, rng: np.random.Generator) -> pd.DataFrame:
    """130 nights from ``shift``: ``nightly`` ``gap`` above ``none``, ``deployed`` 80 % of it, each
    with its own noise on top of a shared nightly level."""
    rows = []
    for i in range(130):
        day = shift + timedelta(days=i)
        base = 0.11 + rng.normal(0, 0.01)
        noise = rng.normal(0, 0.01, size=2)
        for policy, p in (
            ("none", base),
            ("nightly", base + gap + noise[0]),
            ("deployed", base + 0.8 * gap + noise[1]),
        ):
            rows.append({"policy": policy, "score_date": day, "precision_at_k": p})
    return pd.DataFrame(rows)


def test_recovered_share_interval_says_when_the_gap_is_noise():
    shift = date(2026, 8, 6)
    exact = recovered_share_interval(_realized(shift), "drift-matured", shift)
    assert exact.share == pytest.approx(0.8) and exact.gap_credible
    assert exact.low == pytest.approx(0.8) and exact.high == pytest.approx(0.8)
    assert exact.text() == "80% [80%, 80%]" and exact.verdict(0.8) == "meets"

    rng = np.random.default_rng(1)

    def world(gap: float) -> pd.DataFrame:
        return _noisy_nights(shift, gap, rng)

    clear = recovered_share_interval(world(0.03), "deployed", shift)
    assert clear.gap_credible and clear.low < clear.share < clear.high
    assert abs(clear.share - 0.8) < 0.15 and 0.4 < clear.low and clear.high < 1.2
    noisy = recovered_share_interval(world(0.0005), "deployed", shift)
    assert not noisy.gap_credible and "within noise" in noisy.text()
    assert noisy.verdict(0.8).startswith("cannot be judged")
    losing = recovered_share_interval(world(-0.03), "deployed", shift)
    assert losing.gap < 0 and losing.verdict(0.8).startswith("not applicable")
    assert recovered_share_interval(_realized(shift), "weekly", shift) is None


def test_recovered_share_interval_pools_worlds_without_mixing_their_nights():
    shift = date(2026, 8, 6)
    rng = np.random.default_rng(3)

    def world(seed: int, gap: float) -> pd.DataFrame:
        return _noisy_nights(shift, gap, rng).assign(world=seed)

    one = recovered_share_interval(world(7, 0.01), "deployed", shift)
    three = recovered_share_interval(
        pd.concat([world(7, 0.01), world(11, 0.01), world(13, 0.01)]), "deployed", shift
    )
    # The same nights in several worlds are not collapsed into one night: more evidence, a
    # narrower interval around the same share.
    assert three.gap_credible
    assert three.high - three.low < one.high - one.low
    assert abs(three.share - 0.8) < 0.2
    # Pooling a world with itself gives its own share.
    same = world(7, 0.01)
    assert recovered_share_interval(
        pd.concat([same, same.assign(world=8)]), "deployed", shift
    ).share == pytest.approx(recovered_share_interval(same, "deployed", shift).share)


def test_a_rerun_never_wipes_another_worlds_replays_or_a_strangers_folder(tmp_path):
    import json

    from flows.backtest import run_backtest

    calendar = backtest_calendar(START, 14, 121, 30)
    world = tmp_path / "price_shock" / "world"
    world.mkdir(parents=True)
    replay = tmp_path / "price_shock" / "nightly" / "backtest_policy.json"
    replay.parent.mkdir()
    replay.write_text("{}")
    (world / "backtest_world.json").write_text(
        json.dumps({"scenario": "price_shock", "subscribers": 20_000, "seed": 7})
    )
    args = {"subscribers": 20_000, "seed": 11, "calendar": calendar, "policies": ["none"]}
    with pytest.raises(BacktestError, match=r"another world \(seed 7 → 11.*pass --fresh"):
        run_backtest(tmp_path, "price_shock", **args)
    assert replay.exists()

    (tmp_path / "usage_shift").mkdir()
    (tmp_path / "usage_shift" / "thesis.tex").write_text("years of work")
    with pytest.raises(BacktestError, match="not a backtest's folder .*thesis.tex"):
        run_backtest(tmp_path, "usage_shift", **args, fresh=True)
    assert (tmp_path / "usage_shift" / "thesis.tex").exists()
