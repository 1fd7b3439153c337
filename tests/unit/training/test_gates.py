"""Champion/challenger gates: each gate passes and fails on its own numbers, and says so."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tasks.core.settings import Settings
from tasks.training.fairness import FairnessReport, fairness_report
from tasks.training.gates import GATES, NO_CHAMPION, decide

SETTINGS = Settings(
    gate_min_auc=0.70,
    gate_max_calibration_error=0.05,
    gate_auc_margin=0.002,
    gate_calibration_tolerance=0.01,
)
NAN = math.nan


def fairness(tpr_b: float, rows_c: int = 0) -> FairnessReport:
    """Two groups of 400 (TPR 0.6 vs ``tpr_b``, FPR 0.1) and an optional third of ``rows_c``."""
    sizes = {"a": (400, 0.6), "b": (400, tpr_b), "c": (rows_c, 0.6)}
    y, p, g = [], [], []
    for name, (rows, tpr) in sizes.items():
        pos = rows // 4
        hits, alarms = round(tpr * pos), round(0.1 * (rows - pos))
        y += [1] * pos + [0] * (rows - pos)
        p += [0.9] * hits + [0.1] * (pos - hits) + [0.9] * alarms + [0.1] * (rows - pos - alarms)
        g += [name] * rows
    return fairness_report(
        np.array(y),
        np.array(p),
        0.5,
        pd.DataFrame({"age_band": g}),
        min_dp_ratio=0.6,
        max_eo_difference=0.25,
        min_group_size=200,
    )


FAIR = fairness(0.6)
UNFAIR = fairness(0.3)  # TPR gap 0.3 > 0.25 (selection ratio 0.667 passes)
FAIR_WITH_SMALL_GROUP = fairness(0.6, rows_c=40)


def metrics(auc: float, cal: float) -> dict[str, float]:
    """Holdout metrics as tasks.training.evaluate reports them (only the gated ones matter here)."""
    return {"roc_auc": auc, "calibration_error": cal, "pr_auc": 0.3, "brier": 0.02}


@pytest.mark.parametrize(
    ("challenger", "champion", "report", "failed"),
    [
        # Beats the champion by more than the margin, calibration as good: promote.
        (metrics(0.785, 0.020), metrics(0.779, 0.020), FAIR, []),
        # Exactly the margin (0.779 + 0.002 is 0.78100000000000001 in floats): still a pass.
        (metrics(0.781, 0.020), metrics(0.779, 0.020), FAIR, []),
        # Better, but by less than the margin.
        (metrics(0.780, 0.020), metrics(0.779, 0.020), FAIR, ["beats_champion_auc"]),
        # Worse than the champion.
        (metrics(0.760, 0.020), metrics(0.779, 0.020), FAIR, ["beats_champion_auc"]),
        # Calibration worse, but within the tolerance.
        (metrics(0.800, 0.029), metrics(0.779, 0.020), FAIR, []),
        # Calibration worse beyond the tolerance (still under the absolute ceiling).
        (metrics(0.800, 0.035), metrics(0.779, 0.020), FAIR, ["calibration_vs_champion"]),
        # Beats the champion on every number, but unfair.
        (metrics(0.800, 0.010), metrics(0.779, 0.020), UNFAIR, ["fairness"]),
        # Under the absolute floors even though the champion is worse still.
        (
            metrics(0.690, 0.060),
            metrics(0.650, 0.080),
            FAIR,
            ["min_auc", "max_calibration_error"],
        ),
        # No champion yet: only the floors and fairness can say no.
        (metrics(0.750, 0.030), None, FAIR, []),
        (metrics(0.650, 0.030), None, FAIR, ["min_auc"]),
        (metrics(0.750, 0.070), None, UNFAIR, ["max_calibration_error", "fairness"]),
        # NaN challenger AUC (e.g. single-class holdout) fails both AUC gates.
        (metrics(NAN, 0.020), metrics(0.779, 0.020), FAIR, ["min_auc", "beats_champion_auc"]),
        # NaN calibration error fails both calibration gates.
        (
            metrics(0.800, NAN),
            metrics(0.779, 0.020),
            FAIR,
            ["max_calibration_error", "calibration_vs_champion"],
        ),
        # A champion that cannot be measured is kept, not replaced blindly.
        (metrics(0.800, 0.020), metrics(NAN, 0.020), FAIR, ["beats_champion_auc"]),
    ],
)
def test_gates(challenger, champion, report, failed) -> None:
    decision = decide(challenger, champion, report, SETTINGS)
    assert [r.name for r in decision.results] == list(GATES)
    assert [r.name for r in decision.failed] == failed
    assert decision.passed == (not failed)


@pytest.mark.parametrize(
    ("challenger", "champion", "report", "gate", "detail"),
    [
        (
            metrics(0.781, 0.02),
            metrics(0.779, 0.02),
            FAIR,
            "min_auc",
            "holdout ROC-AUC 0.781 ≥ floor 0.700",
        ),
        (
            metrics(0.650, 0.02),
            None,
            FAIR,
            "min_auc",
            "holdout ROC-AUC 0.650 < floor 0.700, short by 0.050",
        ),
        (
            metrics(0.780, 0.02),
            metrics(0.779, 0.02),
            FAIR,
            "beats_champion_auc",
            "challenger ROC-AUC 0.780 < champion 0.779 + margin 0.002, short by 0.001",
        ),
        (
            metrics(0.800, 0.035),
            metrics(0.779, 0.02),
            FAIR,
            "calibration_vs_champion",
            "challenger calibration error 0.035 > champion 0.020 + tolerance 0.010, over by 0.005",
        ),
        (
            metrics(0.800, 0.060),
            None,
            FAIR,
            "max_calibration_error",
            "holdout calibration error 0.060 > ceiling 0.050, over by 0.010",
        ),
        (metrics(0.800, 0.02), None, FAIR, "beats_champion_auc", NO_CHAMPION),
        (metrics(0.800, 0.02), None, FAIR, "calibration_vs_champion", NO_CHAMPION),
        (
            metrics(NAN, 0.02),
            None,
            FAIR,
            "min_auc",
            (
                "holdout ROC-AUC is NaN (undefined, e.g. a single-class holdout), "
                "so it cannot clear floor 0.700"
            ),
        ),
        (
            metrics(0.800, 0.02),
            metrics(NAN, 0.02),
            FAIR,
            "beats_champion_auc",
            (
                "champion ROC-AUC is NaN on this holdout: no comparison possible, champion kept "
                "(challenger ROC-AUC 0.800)"
            ),
        ),
        (
            metrics(0.800, 0.02),
            None,
            UNFAIR,
            "fairness",
            (
                "age_band: equalized-odds difference 0.300 > 0.250 "
                "(true-positive rate: a 60.0%, b 30.0%)"
            ),
        ),
        # A group too small to judge is named even when the gate passes.
        (
            metrics(0.800, 0.02),
            None,
            FAIR_WITH_SMALL_GROUP,
            "fairness",
            (
                "fair at threshold 0.500 for age_band; "
                "age_band: not judged, too small: c (40 rows < 200)"
            ),
        ),
    ],
)
def test_details_carry_the_numbers(challenger, champion, report, gate, detail) -> None:
    decision = decide(challenger, champion, report, SETTINGS)
    (result,) = [r for r in decision.results if r.name == gate]
    assert result.detail == detail


def test_no_champion_passes_comparisons_with_no_numbers() -> None:
    decision = decide(metrics(0.75, 0.03), None, FAIR, SETTINGS)
    compared = [r for r in decision.results if r.name.endswith(("_auc", "_champion"))][1:]
    assert [(r.name, r.passed, r.value, r.threshold) for r in compared] == [
        ("beats_champion_auc", True, None, None),
        ("calibration_vs_champion", True, None, None),
    ]


@pytest.mark.parametrize(
    ("challenger", "champion", "report", "summary"),
    [
        # Everything passes.
        (metrics(0.785, 0.02), metrics(0.779, 0.02), FAIR, "promote: all 5 gates passed"),
        # One gate says no, with how much.
        (
            metrics(0.780, 0.02),
            metrics(0.779, 0.02),
            FAIR,
            (
                "keep champion: beats_champion_auc failed "
                "(challenger ROC-AUC 0.780 < champion 0.779 + margin 0.002, short by 0.001)"
            ),
        ),
        # Several gates say no: each listed, in gate order.
        (
            metrics(0.780, 0.035),
            metrics(0.779, 0.02),
            FAIR,
            (
                "keep champion: beats_champion_auc failed "
                "(challenger ROC-AUC 0.780 < champion 0.779 + margin 0.002, short by 0.001); "
                "calibration_vs_champion failed "
                "(challenger calibration error 0.035 > champion 0.020 + tolerance 0.010, "
                "over by 0.005)"
            ),
        ),
        # No champion to keep: the candidate is refused.
        (
            metrics(0.650, 0.02),
            None,
            FAIR,
            (
                "refuse (no champion yet): min_auc failed "
                "(holdout ROC-AUC 0.650 < floor 0.700, short by 0.050)"
            ),
        ),
    ],
)
def test_summary(challenger, champion, report, summary) -> None:
    assert decide(challenger, champion, report, SETTINGS).summary() == summary


def test_to_dict_is_json_ready() -> None:
    decision = decide(metrics(NAN, 0.02), metrics(0.779, 0.02), UNFAIR, SETTINGS)
    data = decision.to_dict()
    json.dumps(data, allow_nan=False)  # NaN values become null
    assert data["passed"] is False and data["verdict"] == "keep_champion"
    assert data["failed"] == ["min_auc", "beats_champion_auc", "fairness"]
    assert data["gates"][0] == {
        "name": "min_auc",
        "passed": False,
        "value": None,
        "threshold": 0.7,
        "detail": decision.results[0].detail,
    }
    assert data["summary"] == decision.summary()


@pytest.mark.parametrize(
    ("challenger", "champion", "message"),
    [
        # The challenger's metrics lack a gated key.
        ({"roc_auc": 0.8}, None, "challenger metrics lack 'calibration_error'"),
        # So do the champion's.
        (metrics(0.8, 0.02), {"calibration_error": 0.02}, "champion metrics lack 'roc_auc'"),
    ],
)
def test_missing_metric_is_a_clear_error(challenger, champion, message) -> None:
    with pytest.raises(ValueError, match=message):
        decide(challenger, champion, FAIR, SETTINGS)
