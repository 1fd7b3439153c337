"""Drift: PSI, KS and chi-square against hand-computed values, bins, levels, severity, reference
save/load, history, and the report."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from tasks.core.settings import Settings
from tasks.monitoring.drift import (
    DRIFT_SCHEMA,
    PSI_EPSILON,
    Severity,
    chi_square,
    day_severity,
    feature_drift,
    ks,
    psi,
)
from tasks.monitoring.drift_history import append_history, history_by_day, read_history
from tasks.monitoring.reference import (
    NULL_BIN,
    UNSEEN_BIN,
    DriftError,
    Reference,
    ReferenceNotFound,
    bin_counts,
    bin_labels,
    build_reference,
    load_reference,
    quantile_edges,
    reference_dir,
    save_reference,
)
from tasks.monitoring.report import write_report

N = 40_000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Thresholds set explicitly (the values calibrated on the simulator), not the defaults."""
    return Settings(
        home=tmp_path / "home",
        drift_psi_warn=0.10,
        drift_psi_alert=0.25,
        drift_ks_warn=0.10,
        drift_ks_alert=0.12,
        drift_retrain_features=2,
    )


def world(
    rng: np.random.Generator, n: int, shift: float = 0.0, null_share: float = 0.0
) -> pa.Table:
    """A frame like the scoring features: floats, heavy-zero counts, a category."""
    charge = rng.normal(50 + 10 * shift, 10, n)
    calls = rng.poisson(0.2, n).astype(np.int32)
    plan = rng.choice(["basic", "premium", "standard"], size=n, p=[0.5, 0.2, 0.3])
    mask = rng.random(n) < null_share
    return pa.table(
        {
            "monthly_charge": pa.array(charge.astype(np.float32), mask=mask),
            "support_calls_30d": pa.array(calls),
            "plan": pa.array(plan),
        }
    )


FEATURES = ["monthly_charge", "support_calls_30d", "plan"]
CATEGORICAL = ["plan"]


@pytest.fixture
def reference() -> Reference:
    rng = np.random.default_rng(1)
    frame = world(rng, N)
    probabilities = rng.beta(1, 30, N)
    return build_reference(frame, FEATURES, CATEGORICAL, probabilities, max_rows=20_000, seed=3)


# ----------------------------------------------------------------------------- the statistics


def test_psi_matches_the_hand_computed_value() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(
        0.25 * math.log(2) + 0.25 * math.log(1.5), rel=1e-12
    )
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_psi_floors_empty_bins_at_epsilon() -> None:
    # The third bin is empty in the reference: it counts as 1e-4 there.
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - PSI_EPSILON) * math.log(0.1 / PSI_EPSILON)
    assert psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1]) == pytest.approx(expected, rel=1e-12)
    # Empty on both sides: no contribution, and never infinite.
    assert psi([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        psi([0.5, 0.5], [1.0])


def test_ks_statistic_is_the_largest_gap_between_the_ecdfs() -> None:
    result = ks(np.array([1.0, 2, 3, 4]), np.array([3.0, 4, 5, 6, np.nan]))
    # At x = 2: F_ref = 0.5, F_cur = 0 (the NaN takes no part).
    assert result.statistic == pytest.approx(0.5)
    assert result.p_value == pytest.approx(stats.ks_2samp([1, 2, 3, 4], [3, 4, 5, 6]).pvalue)
    empty = ks(np.array([1.0]), np.array([np.nan]))
    assert math.isnan(empty.statistic) and math.isnan(empty.p_value)


def test_chi_square_matches_the_hand_computed_value() -> None:
    # Expected counts 40/60 in both rows: 2 x (10²/40 + 10²/60) = 8.333…, 1 degree of freedom.
    result = chi_square([50, 50, 0], [30, 70, 0])
    assert result.statistic == pytest.approx(25 / 3)
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(25 / 6)), rel=1e-9)
    assert chi_square([10, 0], [5, 0]) == chi_square([0], [0])  # nothing can differ: (0, 1)
    assert chi_square([10, 0], [5, 0]).p_value == 1.0


# ----------------------------------------------------------------------------- bins


@pytest.mark.parametrize(
    ("values", "edges", "labels"),
    [
        # 90% zeros at the minimum: zero is the lowest bin on its own already.
        (np.r_[np.zeros(900), np.arange(1, 101)], (0.0,), ("<= 0", "> 0")),
        # Zeros between negatives and positives get a bin "= 0" of their own.
        (
            np.r_[-5.0, np.zeros(900), np.arange(1, 100)],
            (float(np.nextafter(0.0, -1)), 0.0),
            ("< 0", "= 0", "> 0"),
        ),
        # Even values: ten bins.
        (np.arange(1000.0), (99.0, 199.0, 300.0, 399.0, 499.0, 600.0, 700.0, 799.0, 899.0), None),
        # A point mass at the top: nothing between 29 and 30, so no extra edge is needed.
        (np.r_[np.full(800, 30.0), np.arange(200) % 30], (14.0, 29.0, 30.0), None),
        # No value at all: one bin.
        (np.full(5, np.nan), (), ("all values",)),
    ],
)
def test_quantile_edges_handle_ties_and_point_masses(
    values: np.ndarray, edges: tuple[float, ...], labels: tuple[str, ...] | None
) -> None:
    assert quantile_edges(values, 10) == edges
    if labels is not None:
        assert bin_labels(edges) == (*labels, NULL_BIN)


def test_bin_counts_are_right_closed_with_nulls_last() -> None:
    counts = bin_counts(np.array([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan, np.nan]), (0.0, 1.0))
    # (-inf, 0] holds -1 and 0; (0, 1] holds 0.5 and 1; (1, inf) holds 2; then 2 nulls.
    assert counts.tolist() == [2, 2, 1, 2]


# ----------------------------------------------------------------------------- a day's drift


def test_identical_distributions_do_not_drift(reference: Reference, settings: Settings) -> None:
    rng = np.random.default_rng(2)
    table = feature_drift(reference, world(rng, N), rng.beta(1, 30, N), settings)
    assert table.schema == DRIFT_SCHEMA
    assert table.column("feature").to_pylist() == [*FEATURES, "prediction"]
    assert max(table.column("psi").to_pylist()) < 0.01
    ks_rows = [r for r in table.to_pylist() if r["test"] == "ks"]
    assert max(r["statistic"] for r in ks_rows) < 0.03
    assert set(table.column("level").to_pylist()) == {"none"}
    assert day_severity(table, settings).level == "none"


def test_shifted_feature_alerts_on_effect_size(reference: Reference, settings: Settings) -> None:
    rng = np.random.default_rng(2)
    frame = world(rng, N, shift=1.0)  # monthly charge one standard deviation up
    table = feature_drift(reference, frame, rng.beta(1, 30, N), settings)
    row = {r["feature"]: r for r in table.to_pylist()}["monthly_charge"]
    # Normal shifted by one sd: KS = 2 Φ(0.5) - 1 = 0.383; PSI on deciles ≈ 1.
    assert row["statistic"] == pytest.approx(2 * stats.norm.cdf(0.5) - 1, abs=0.02)
    assert row["psi"] > settings.drift_psi_alert
    assert row["level"] == "alert"
    assert row["p_value"] < 1e-100  # reported, never the decision
    severity = day_severity(table, settings)
    assert severity.level == "alert" and severity.features == ("monthly_charge",)
    assert "monthly_charge (PSI" in severity.reason


def test_nulls_are_a_bin_of_their_own(reference: Reference, settings: Settings) -> None:
    rng = np.random.default_rng(2)
    table = feature_drift(reference, world(rng, N, null_share=0.3), None, settings)
    row = table.to_pylist()[0]
    assert row["bins"][-1] == NULL_BIN
    assert row["current_null_share"] == pytest.approx(0.3, abs=0.01)
    assert row["reference_null_share"] == 0.0
    # The values that are there did not move: KS ignores nulls, PSI sees the null bin.
    assert row["statistic"] < 0.03
    assert row["psi"] > settings.drift_psi_alert
    assert "prediction" not in table.column("feature").to_pylist()


def test_unseen_categories_count_as_one_bin(reference: Reference, settings: Settings) -> None:
    rng = np.random.default_rng(2)
    frame = world(rng, N)
    plans = np.asarray(frame.column("plan").to_pylist(), dtype=object)
    plans[rng.random(N) < 0.2] = "family"  # a plan the reference never saw
    plans[:100] = None
    frame = frame.set_column(2, "plan", pa.array(plans.tolist(), pa.string()))
    row = feature_drift(reference, frame, None, settings).to_pylist()[2]
    assert row["bins"] == ["basic", "premium", "standard", UNSEEN_BIN, NULL_BIN]
    assert row["reference_share"][3:] == [0.0, 0.0]
    assert row["current_share"][3] == pytest.approx(0.2, abs=0.01)
    assert row["current_share"][4] == pytest.approx(100 / N)
    assert row["test"] == "chi2" and row["p_value"] < 1e-10
    assert row["level"] == "alert"  # PSI: 0.2 ln(0.2 / 1e-4) alone is 1.5


def test_ks_on_a_sample_of_a_large_day_stays_within_the_bound(
    reference: Reference, settings: Settings
) -> None:
    rng = np.random.default_rng(5)
    frame = world(rng, 200_000, shift=0.3)
    full = feature_drift(reference, frame, None, settings, ks_max_rows=10**9).to_pylist()[0]
    sampled = feature_drift(reference, frame, None, settings, ks_max_rows=20_000).to_pylist()[0]
    # DKW at alpha 1e-3: sqrt(ln(2000) / 40000) = 0.014 for 20,000 rows.
    assert abs(full["statistic"] - sampled["statistic"]) < 0.014
    assert full["psi"] == sampled["psi"]  # PSI always counts every row


def test_day_without_a_feature_or_rows_is_refused(reference: Reference, settings: Settings) -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(DriftError, match="lacks feature\\(s\\) plan"):
        feature_drift(reference, world(rng, 10).drop_columns(["plan"]), None, settings)
    with pytest.raises(DriftError, match="no rows"):
        feature_drift(reference, world(rng, 0), None, settings)


def test_build_reference_refuses_bad_input() -> None:
    frame = world(np.random.default_rng(0), 10)
    with pytest.raises(DriftError, match="lacks feature\\(s\\) tenure_days"):
        build_reference(frame, ["tenure_days"], [], None)
    with pytest.raises(DriftError, match="not among the features"):
        build_reference(frame, ["monthly_charge"], ["plan"], None)
    with pytest.raises(DriftError, match="empty"):
        build_reference(frame.slice(0, 0), FEATURES, CATEGORICAL, None)


# ----------------------------------------------------------------------------- severity


def drift_rows(*rows: tuple[str, str, float, float | None]) -> pa.Table:
    """A drift table from (feature, kind, psi, ks) tuples, levels by the fixture's thresholds."""
    from tasks.monitoring.drift import drift_level

    thresholds = Settings(drift_psi_warn=0.1, drift_psi_alert=0.25, drift_ks_warn=0.1,
                          drift_ks_alert=0.2)  # fmt: skip
    records = []
    for feature, kind, psi_value, ks_value in rows:
        records.append(
            {
                "feature": feature,
                "kind": kind,
                "test": "chi2" if kind == "categorical" else "ks",
                "statistic": ks_value,
                "p_value": 0.5,
                "psi": psi_value,
                "level": drift_level(kind, psi_value, ks_value, thresholds),
                "reference_rows": 100,
                "current_rows": 100,
                "reference_null_share": 0.0,
                "current_null_share": 0.0,
                "bins": ["a", NULL_BIN],
                "reference_share": [1.0, 0.0],
                "current_share": [1.0, 0.0],
            }
        )
    return pa.Table.from_pylist(records, schema=DRIFT_SCHEMA)


QUIET = ("quiet", "numeric", 0.01, 0.01)


@pytest.mark.parametrize(
    ("rows", "retrain_from", "level", "features"),
    [
        # nothing moved
        ([QUIET, ("prediction", "prediction", 0.0, 0.01)], 2, "none", ()),
        # a warning by PSI alone
        ([QUIET, ("a", "numeric", 0.12, 0.02)], 2, "warn", ("a",)),
        # a warning by KS alone
        ([QUIET, ("a", "numeric", 0.02, 0.15)], 2, "warn", ("a",)),
        # a categorical feature's chi-square statistic is never compared with KS thresholds
        ([("c", "categorical", 0.05, 900.0)], 2, "none", ()),
        # a warning on the prediction only
        ([QUIET, ("prediction", "prediction", 0.15, 0.05)], 2, "warn", ("prediction",)),
        # one feature alerts (KS)
        ([QUIET, ("a", "numeric", 0.05, 0.30)], 2, "alert", ("a",)),
        # two features alert: retrain, the most drifted first (PSI 0.9 / 0.25 > KS 0.3 / 0.2)
        (
            [("a", "numeric", 0.05, 0.30), ("b", "categorical", 0.9, 50.0)],
            2,
            "retrain",
            ("b", "a"),
        ),
        # the same with a higher bar: alert
        (
            [("a", "numeric", 0.05, 0.30), ("b", "categorical", 0.9, 50.0)],
            3,
            "alert",
            ("b", "a"),
        ),
        # the prediction distribution alone shifted: retrain
        ([QUIET, ("prediction", "prediction", 0.30, 0.05)], 2, "retrain", ("prediction",)),
    ],
)
def test_day_severity_rules(
    rows: list[tuple[str, str, float, float | None]],
    retrain_from: int,
    level: str,
    features: tuple[str, ...],
) -> None:
    settings = Settings(drift_retrain_features=retrain_from)
    severity = day_severity(drift_rows(*rows), settings)
    assert (severity.level, severity.features) == (level, features)
    assert severity.reason


# ----------------------------------------------------------------------------- save / load


def test_reference_roundtrip(reference: Reference, settings: Settings) -> None:
    path = save_reference(settings, 7, reference)
    assert path == reference_dir(settings, 7) == settings.home / "monitoring" / "reference" / "v7"
    loaded = load_reference(settings, 7)
    assert loaded.features == reference.features
    assert loaded.prediction == reference.prediction
    assert loaded.sample.equals(reference.sample)
    np.testing.assert_array_equal(loaded.prediction_sample, reference.prediction_sample)
    assert (loaded.rows, loaded.seed) == (N, 3)
    rng = np.random.default_rng(9)
    day, p = world(rng, 5_000, shift=0.2), rng.beta(1, 25, 5_000)
    assert feature_drift(loaded, day, p, settings).equals(
        feature_drift(reference, day, p, settings)
    )
    # Saving again replaces the folder as a whole.
    save_reference(settings, 7, reference)
    assert sorted(p.name for p in path.iterdir()) == [
        "bins.json",
        "prediction.parquet",
        "sample.parquet",
    ]


def test_missing_reference_names_the_version(reference: Reference, settings: Settings) -> None:
    save_reference(settings, 2, reference)
    with pytest.raises(ReferenceNotFound, match="model version 3") as raised:
        load_reference(settings, 3)
    assert str(reference_dir(settings, 3)) in str(raised.value)
    assert "Saved versions: v2" in str(raised.value)


def test_reference_sample_is_bounded(reference: Reference) -> None:
    assert reference.sample.num_rows == 20_000
    assert reference.sample.column_names == ["monthly_charge", "support_calls_30d"]
    assert len(reference.prediction_sample) == 20_000
    # Counts cover the whole frame, not the sample.
    assert all(f.rows == N for f in reference.features)


# ----------------------------------------------------------------------------- history, report


def test_history_rerun_replaces_the_day(reference: Reference, settings: Settings) -> None:
    rng = np.random.default_rng(4)
    quiet = feature_drift(reference, world(rng, 5_000), None, settings)
    shifted = feature_drift(reference, world(rng, 5_000, shift=1.0), None, settings)
    d1, d2 = date(2026, 7, 1), date(2026, 7, 2)
    append_history(settings, d1, 3, shifted, day_severity(shifted, settings))
    append_history(settings, d2, 3, shifted, day_severity(shifted, settings))
    append_history(settings, d1, 4, quiet, day_severity(quiet, settings))  # rerun of d1

    history = read_history(settings)
    assert history.num_rows == 2 * len(FEATURES)
    assert history.column("score_date").to_pylist() == [d1] * 3 + [d2] * 3
    by_day = history_by_day(history).to_pylist()
    assert [(d["score_date"], d["model_version"], d["severity"]) for d in by_day] == [
        (d1, 4, "none"),
        (d2, 3, "alert"),
    ]
    assert by_day[1]["max_psi_feature"] == "monthly_charge"
    assert read_history(settings, start=d2).num_rows == 3
    files = sorted(p.name for p in (settings.monitoring_dir / "drift").iterdir())
    assert files == ["2026-07-01.parquet", "2026-07-02.parquet"]


def test_empty_history(settings: Settings) -> None:
    assert read_history(settings).num_rows == 0
    assert history_by_day(read_history(settings)).num_rows == 0


def test_report_embeds_charts_of_drifted_rows(reference: Reference, settings: Settings) -> None:
    rng = np.random.default_rng(6)
    frame, p = world(rng, 5_000, shift=1.0), rng.beta(1, 30, 5_000)
    table = feature_drift(reference, frame, p, settings)
    severity = day_severity(table, settings)
    day = date(2026, 7, 3)
    append_history(settings, date(2026, 7, 2), 1, table, severity)
    append_history(settings, day, 1, table, severity)
    report = write_report(
        settings,
        day,
        1,
        table,
        severity,
        history=read_history(settings),
        reference=reference,
        current_frame=frame,
        current_probabilities=p,
    )
    assert report.directory == settings.monitoring_dir / "reports" / "2026-07-03"
    assert set(report.charts) == {"monthly_charge", "prediction", "history"}
    for chart in report.charts.values():
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = report.html.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "monthly_charge" in page and severity.reason.split(":")[0] in page
    # A rerun replaces the folder: no chart of a feature that no longer drifts stays behind.
    quiet = feature_drift(reference, world(rng, 5_000), None, settings)
    again = write_report(settings, day, 1, quiet, Severity("none"))
    assert sorted(p.name for p in again.directory.iterdir()) == ["report.html"]
