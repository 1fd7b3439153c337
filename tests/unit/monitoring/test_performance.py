"""Realized performance on a tiny hand-made world: labels, metrics, maturity, history, findings, chart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks.audit.prediction_log import PredictionLogWriter
from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import SOURCE_TABLES
from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.features.frames import training_entities
from tasks.monitoring.performance import (
    HISTORY_SCHEMA,
    LabelsNotMature,
    PerformanceError,
    evaluate_day,
    history_dir,
    history_path,
    matured_score_dates,
    read_history,
    realized_labels,
    update_history,
)
from tasks.monitoring.performance_findings import (
    CHAMPION_BELOW_HOLDOUT,
    CHAMPION_MISCALIBRATED,
    DAY,
    RATE_RATIO_LIMIT,
    SHADOW_BETTER,
    WINDOW,
    WINDOW_DAYS,
    performance_findings,
    trend_chart,
)
from tasks.training.evaluate import holdout_metrics

D = date(2026, 6, 1)  # the first score date
START = D - timedelta(days=200)  # long enough for training_entities' feature warm-up
SCORE_DATES = [D + timedelta(days=i) for i in range(10)]
HORIZON = 30
CAPACITY = 20
SUBSCRIBERS = 400
WORLD_END = SCORE_DATES[-1] + timedelta(days=HORIZON)  # every score date matures


def day(offset: int) -> date:
    return D + timedelta(days=offset)


def subscriber(sid: int, signup: date = START) -> dict:
    return {
        "subscriber_id": sid,
        "signup_date": signup,
        "plan": "standard",
        "contract_type": "month_to_month",
        "payment_method": "card",
        "monthly_charge": 55.0,
        "region": "north",
        "age_band": "25-34",
        "gender": "female",
    }


def cancellation(sid: int, cancel: date) -> dict:
    return {"subscriber_id": sid, "cancel_date": cancel, "reason": "price"}


def write_sources(settings: Settings, end: date, **rows: list[dict]) -> None:
    """Every source table (empty unless given) and a manifest covering START .. end."""
    settings.source_dir.mkdir(parents=True, exist_ok=True)
    for name, spec in SOURCE_TABLES.items():
        table = pa.Table.from_pylist(rows.get(name, []), schema=spec.arrow_schema)
        path = table_path(settings.source_dir, spec)
        if spec.partitioned:
            path.mkdir(exist_ok=True)
            path = path / "part-0.parquet"
        pq.write_table(table, path)
    manifest = {"source": "test", "start": START.isoformat(), "end": end.isoformat()}
    (settings.source_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def log_day(
    settings: Settings, score_date: date, version: int, role: str, probability: dict[int, float]
) -> None:
    """One prediction-log file, written the way nightly scoring writes it."""
    ids = sorted(probability)
    p = [probability[i] for i in ids]
    batch = pa.table(
        {
            "subscriber_id": pa.array(ids, pa.int64()),
            "probability": pa.array(p, pa.float64()),
            "risk_tier": ["high" if v >= 0.1 else "medium" if v >= 0.04 else "low" for v in p],
            "reasons": pa.array([None] * len(ids), pa.list_(pa.string())),
            "features": pa.array(
                [{"tenure_days": i % 90} for i in ids], pa.struct([("tenure_days", pa.int32())])
            ),
        }
    )
    with PredictionLogWriter(
        settings,
        score_date=score_date,
        model_name=settings.model_name,
        model_version=version,
        role=role,
        feature_service="churn_model_v1",
        flow_run_id=None,
        scored_at=datetime.combine(score_date + timedelta(days=1), datetime.min.time(), UTC),
    ) as writer:
        writer.write(batch)


@pytest.fixture
def settings(churn_home: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A fresh data root with a small retention capacity, so the top K is a real selection."""
    monkeypatch.setenv("CHURN_RETENTION_CAPACITY", str(CAPACITY))
    reset_settings()
    yield get_settings()
    reset_settings()


class World:
    """400 subscribers; about a third cancel on a random day; labels known in the test itself."""

    def __init__(self, settings: Settings, end: date = WORLD_END, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self.settings = settings
        self.rng = rng
        self.cancel: dict[int, date] = {}
        for sid in range(1, SUBSCRIBERS + 1):
            if rng.random() < 0.35:
                self.cancel[sid] = day(int(rng.integers(-5, 45)))
        write_sources(
            settings,
            end,
            subscribers=[subscriber(sid) for sid in range(1, SUBSCRIBERS + 1)],
            cancellations=[cancellation(sid, c) for sid, c in self.cancel.items()],
        )

    def active(self, d: date) -> list[int]:
        return [s for s in range(1, SUBSCRIBERS + 1) if s not in self.cancel or self.cancel[s] > d]

    def label(self, sid: int, d: date) -> int:
        return int(sid in self.cancel and self.cancel[sid] <= d + timedelta(days=HORIZON))

    def informative(self, d: date, strength: float = 0.3) -> dict[int, float]:
        """Probabilities that rank churners high (AUC about 0.97 at 0.3), their mean near the rate."""
        return {
            s: float(
                np.clip(
                    0.25 + strength * (self.label(s, d) - 0.25) + 0.4 * (self.rng.random() - 0.5),
                    0,
                    1,
                )
            )
            for s in self.active(d)
        }

    def random(self, d: date) -> dict[int, float]:
        return {s: float(self.rng.random() * 0.5) for s in self.active(d)}


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    ("cancel", "expected"),
    [
        (None, 0),  # never cancels
        (day(1), 1),  # first day without service D+1: left the day after scoring
        (day(HORIZON), 1),  # first day without service D+30: the last day inside the horizon
        (day(HORIZON + 1), 0),  # D+31: one day too late
        (day(0), None),  # no service on D: not in service, so no label (and never scored)
    ],
)
def test_realized_label_has_the_training_label_edges(
    settings: Settings, cancel: date | None, expected: int | None
) -> None:
    write_sources(
        settings,
        day(HORIZON + 5),
        subscribers=[subscriber(1), subscriber(2, signup=day(1))],  # 2 joins after D: no label
        cancellations=[cancellation(1, cancel)] if cancel else [],
    )
    labels = dict(_pairs(realized_labels(settings, D)))
    assert labels == ({} if expected is None else {1: expected})


def _pairs(table: pa.Table) -> list[tuple[int, int]]:
    return list(
        zip(
            table.column("subscriber_id").to_pylist(),
            table.column("churned_30d").to_pylist(),
            strict=True,
        )
    )


def test_realized_labels_equal_the_training_labels(settings: Settings) -> None:
    world = World(settings)
    realized = dict(_pairs(realized_labels(settings, D)))
    # The training frame at as_of = D + horizon has D as its newest (mature) snapshot day.
    frame = training_entities(settings, day(HORIZON))
    training = frame[frame["snapshot_date"] == D]
    assert realized == dict(
        zip(training["subscriber_id"].tolist(), training["churned_30d"].tolist(), strict=True)
    )
    assert realized == {s: world.label(s, D) for s in world.active(D)}
    assert 0 < sum(realized.values()) < len(realized)


def test_labels_are_refused_before_the_source_covers_the_horizon(settings: Settings) -> None:
    write_sources(settings, day(HORIZON - 1), subscribers=[subscriber(1)])
    with pytest.raises(LabelsNotMature, match=r"through 2026-07-01 .* source ends on 2026-06-30"):
        realized_labels(settings, D)


# ----------------------------------------------------------------------------- metrics


def test_day_metrics_equal_holdout_metrics_on_the_same_rows(settings: Settings) -> None:
    world = World(settings)
    champion, shadow = world.informative(D, 0.2), world.informative(D, 0.5)
    log_day(settings, D, 1, "champion", champion)
    log_day(settings, D, 2, "shadow", shadow)

    rows = evaluate_day(settings, D).to_pylist()

    assert [(r["model_version"], r["role"]) for r in rows] == [(1, "champion"), (2, "shadow")]
    for row, probability in zip(rows, (champion, shadow), strict=True):
        ids = sorted(probability)
        y = np.array([world.label(s, D) for s in ids])
        p = np.array([probability[s] for s in ids])
        expected = holdout_metrics(y, p, [D] * len(ids), CAPACITY)
        for name in ("roc_auc", "pr_auc", "precision_at_k", "recall_at_k", "lift_at_k"):
            assert row[name] == pytest.approx(expected[name]), name
        assert row["calibration_error"] == pytest.approx(expected["calibration_error"])
        assert (row["n"], row["positives"], row["unlabelled"]) == (len(ids), int(y.sum()), 0)
        assert row["realized_rate"] == pytest.approx(y.mean())
        assert row["mean_probability"] == pytest.approx(p.mean())
        assert (row["capacity"], row["horizon_days"], row["note"]) == (CAPACITY, HORIZON, None)
    assert rows[1]["roc_auc"] > rows[0]["roc_auc"] > 0.6


def test_a_logged_subscriber_out_of_service_is_counted_not_labelled(settings: Settings) -> None:
    world = World(settings)
    gone = next(s for s, c in world.cancel.items() if c <= D)  # not in service on D
    probability = world.informative(D) | {gone: 0.9}
    log_day(settings, D, 1, "champion", probability)
    (row,) = evaluate_day(settings, D).to_pylist()
    assert (row["n"], row["unlabelled"]) == (len(probability) - 1, 1)


def test_a_day_with_one_class_is_recorded_without_ranking_metrics(settings: Settings) -> None:
    write_sources(settings, day(HORIZON + 1), subscribers=[subscriber(1), subscriber(2)])
    log_day(settings, D, 1, "champion", {1: 0.2, 2: 0.1})
    (row,) = evaluate_day(settings, D).to_pylist()
    assert (row["n"], row["positives"], row["roc_auc"]) == (2, 0, None)
    assert "single class" in row["note"]
    assert performance_findings(evaluate_day(settings, D), 1, 0.9, settings) == []


# ----------------------------------------------------------------------------- history


def test_only_matured_dates_are_evaluated_and_a_rerun_changes_nothing(settings: Settings) -> None:
    world = World(settings, end=day(7 + HORIZON))  # the source covers D .. D+7's horizons
    for d in SCORE_DATES:
        log_day(settings, d, 1, "champion", world.informative(d))

    # as_of limits first: D+3's horizon ends on as_of.
    assert matured_score_dates(settings, day(3 + HORIZON)) == SCORE_DATES[:4]
    first = update_history(settings, day(3 + HORIZON))
    assert sorted(set(first.column("score_date").to_pylist())) == SCORE_DATES[:4]
    # Later, the source's end limits: D+8 and D+9 wait for data.
    assert matured_score_dates(settings, day(60)) == SCORE_DATES[4:8]
    update_history(settings, day(60))
    history = read_history(settings)
    assert history.schema == HISTORY_SCHEMA
    assert sorted(set(history.column("score_date").to_pylist())) == SCORE_DATES[:8]
    assert sorted(p.name for p in history_dir(settings).iterdir()) == [
        f"score_date={d}.parquet" for d in SCORE_DATES[:8]
    ]

    # Nothing new: nothing evaluated. Recompute: same rows, same files.
    assert update_history(settings, day(60)).num_rows == 0
    before = {d: history_path(settings, d).read_bytes() for d in SCORE_DATES[:8]}
    again = update_history(settings, day(60), recompute=True)
    assert again.num_rows == 8
    assert read_history(settings).equals(history)
    assert {d: history_path(settings, d).read_bytes() for d in SCORE_DATES[:8]} == before

    # Scoring a matured date again (a new log file for it) makes only that date due again.
    log_day(settings, day(2), 1, "champion", world.random(day(2)))
    assert matured_score_dates(settings, day(60)) == [day(2)]
    update_history(settings, day(60))
    changed = read_history(settings)
    assert changed.num_rows == history.num_rows
    auc = {r["score_date"]: r["roc_auc"] for r in changed.to_pylist()}
    assert auc[day(2)] < 0.75 < auc[day(1)]


def test_a_night_with_nobody_scored_is_recorded_once(settings: Settings) -> None:
    World(settings)
    log_day(settings, D, 1, "champion", {})  # an empty file: scored, nobody in it
    assert update_history(settings, WORLD_END).num_rows == 0
    assert pq.read_table(history_path(settings, D)).num_rows == 0
    assert matured_score_dates(settings, WORLD_END) == []  # done, not retried every run


def test_an_unreadable_history_file_is_named(settings: Settings) -> None:
    path = history_path(settings, D)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not parquet")
    with pytest.raises(PerformanceError, match=r"score_date=2026-06-01\.parquet is unreadable"):
        read_history(settings)


# ----------------------------------------------------------------------------- findings


@pytest.fixture
def drifted(settings: Settings) -> pa.Table:
    """Ten matured dates: the champion (v1) turns random from D+5, the shadow (v2) stays good."""
    world = World(settings)
    for i, d in enumerate(SCORE_DATES):
        log_day(settings, d, 1, "champion", world.informative(d) if i < 5 else world.random(d))
        log_day(settings, d, 2, "shadow", world.informative(d))
    update_history(settings, WORLD_END)
    return read_history(settings)


def test_champion_below_holdout_per_day_and_over_the_window(
    drifted: pa.Table, settings: Settings
) -> None:
    auc = {r["score_date"]: r["roc_auc"] for r in drifted.to_pylist() if r["model_version"] == 1}
    holdout = float(np.mean([auc[d] for d in SCORE_DATES[:5]]))  # as good as its good days
    findings = performance_findings(drifted, 1, holdout, settings, new_dates=SCORE_DATES)
    below = [f for f in findings if f.kind == CHAMPION_BELOW_HOLDOUT]

    # Every random day, and no good day, falls more than the tolerance below.
    assert [f.first_date for f in below if f.scope == DAY] == SCORE_DATES[5:]
    (window,) = [f for f in below if f.scope == WINDOW]
    assert (window.first_date, window.last_date, window.days) == (
        SCORE_DATES[-WINDOW_DAYS],
        SCORE_DATES[-1],
        WINDOW_DAYS,
    )
    assert window.value == pytest.approx(np.mean([auc[d] for d in SCORE_DATES[-7:]]))
    assert window.gap == pytest.approx(holdout - window.value)
    day_finding = below[0]
    assert day_finding.message.startswith(
        f"Champion v1: realized AUC {auc[day(5)]:.3f} on score date {day(5)} ("
    )
    assert f"below its holdout AUC {holdout:.3f} (tolerance 0.050)" in day_finding.message


def test_shadow_better_on_the_same_days(drifted: pa.Table, settings: Settings) -> None:
    findings = performance_findings(drifted, 1, 0.3, settings, new_dates=SCORE_DATES)
    assert not [f for f in findings if f.kind == CHAMPION_BELOW_HOLDOUT]  # a low bar is met
    better = [f for f in findings if f.kind == SHADOW_BETTER]
    # The random days for sure; a good day only by chance (both informative, by a margin).
    assert set(SCORE_DATES[5:]) <= {f.first_date for f in better if f.scope == DAY}
    (window,) = [f for f in better if f.scope == WINDOW]
    assert window.shadow_version == 2 and window.gap > 0.1
    assert window.message.startswith(
        f"Shadow v2 would have done better than champion v1 over the last {WINDOW_DAYS} "
        f"matured score dates ({SCORE_DATES[-7]} to {SCORE_DATES[-1]})"
    )
    assert f"precision in the top {CAPACITY}" in window.message


def test_a_champion_that_under_predicts_is_called_miscalibrated(
    drifted: pa.Table, settings: Settings
) -> None:
    def findings(history: pa.Table) -> list:
        found = performance_findings(history, 1, 0.3, settings, new_dates=SCORE_DATES)
        return [f for f in found if f.kind == CHAMPION_MISCALIBRATED]

    assert findings(drifted) == []  # the test's probabilities average about the churn rate
    halved = pc.multiply(drifted.column("mean_probability"), 0.5)
    column = drifted.schema.get_field_index("mean_probability")
    (finding,) = findings(drifted.set_column(column, "mean_probability", halved))
    assert (finding.scope, finding.first_date, finding.last_date) == (
        WINDOW,
        SCORE_DATES[-WINDOW_DAYS],
        SCORE_DATES[-1],
    )
    assert finding.gap == pytest.approx(finding.value / finding.reference)
    assert finding.gap > RATE_RATIO_LIMIT
    assert finding.message.startswith("Champion v1 under-predicts churn: over its last 7")


def test_findings_only_speak_of_new_dates(drifted: pa.Table, settings: Settings) -> None:
    # Default: the newest date only (one day finding of each kind, plus the windows it is in).
    newest = performance_findings(drifted, 1, 0.8, settings)
    assert {(f.kind, f.scope, f.last_date) for f in newest} == {
        (CHAMPION_BELOW_HOLDOUT, DAY, day(9)),
        (CHAMPION_BELOW_HOLDOUT, WINDOW, day(9)),
        (SHADOW_BETTER, DAY, day(9)),
        (SHADOW_BETTER, WINDOW, day(9)),
    }
    # Nothing newly matured: nothing said again.
    assert performance_findings(drifted, 1, 0.8, settings, new_dates=[]) == []
    # A (good) date before the window, judged strictly: its day finding only.
    strict = settings.model_copy(update={"performance_auc_tolerance": 0.0})
    (old,) = performance_findings(drifted, 1, 1.0, strict, new_dates=[day(1)])
    assert (old.kind, old.scope) == (CHAMPION_BELOW_HOLDOUT, DAY)


def test_a_promoted_shadow_is_judged_on_the_days_it_ran_in_shadow(
    drifted: pa.Table, settings: Settings
) -> None:
    assert performance_findings(drifted, 2, 0.7, settings, new_dates=SCORE_DATES) == []
    strict = settings.model_copy(update={"performance_auc_tolerance": 0.0})
    findings = performance_findings(drifted, 2, 1.0, strict, new_dates=SCORE_DATES)
    assert {f.kind for f in findings} == {CHAMPION_BELOW_HOLDOUT}  # no shadow beside v2
    assert len([f for f in findings if f.scope == DAY]) == len(SCORE_DATES)


# ----------------------------------------------------------------------------- chart


def test_trend_chart_is_a_png_written_atomically(drifted: pa.Table, settings: Settings) -> None:
    path = settings.monitoring_dir / "performance_trend.png"
    assert trend_chart(drifted, path, holdout_auc={1: 0.8, 2: 0.82}, tolerance=0.05) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []

    empty = settings.monitoring_dir / "empty.png"
    trend_chart(HISTORY_SCHEMA.empty_table(), empty)
    assert empty.read_bytes()[:4] == b"\x89PNG"
