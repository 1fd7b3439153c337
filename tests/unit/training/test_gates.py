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


def fairness(tpr_b: float, rows_c: int = 0, rows: int = 400) -> FairnessReport:
    """Two groups of ``rows`` (a quarter churners; TPR 0.6 vs ``tpr_b``, FPR 0.1) and an
    optional third of ``rows_c``."""
    sizes = {"a": (rows, 0.6), "b": (rows, tpr_b), "c": (rows_c, 0.6)}
    y, p, g = [], [], []
    for name, (size, tpr) in sizes.items():
        pos = size // 4
        hits, alarms = round(tpr * pos), round(0.1 * (size - pos))
        y += [1] * pos + [0] * (size - pos)
        p += [0.9] * hits + [0.1] * (pos - hits) + [0.9] * alarms + [0.1] * (size - pos - alarms)
        g += [name] * size
    return fairness_report(
        np.array(y),
        np.array(p),
        0.5,
        pd.DataFrame({"age_band": g}),
        min_dp_ratio=0.6,
        max_eo_difference=0.25,
        min_group_size=200,
        min_selected_per_group=30,
        confidence=0.95,
    )


FAIR = fairness(0.6)
# TPR 0.6 vs 0.2 among 500 churners each: the odds gap is at least 0.296 > 0.25, credibly.
UNFAIR = fairness(0.2, rows=2000)
# A TPR gap of 0.3 > 0.25 among 100 churners each: could be as small as 0.052, not credible.
NOISY = fairness(0.3)
# TPR 0.6 vs 0.35 among 1,000 churners each: within the ceiling, clearly worse than FAIR_BIG.
WORSE = fairness(0.35, rows=4000)
FAIR_BIG = fairness(0.6, rows=4000)
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
        # A first training with a point estimate beyond the ceiling on thin evidence is not
        # refused: noise alone must not leave the product without a champion.
        (metrics(0.750, 0.030), None, NOISY, []),
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
    decision = decide(challenger, champion, report, SETTINGS, report if champion else None)
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
                "age_band credibly unfair, at threshold 0.5000, 95% intervals | "
                "age_band: DP ratio 0.56 [0.44, 0.70], not credibly below 0.60; "
                "EO difference 0.400 [0.296, 0.494], credibly above 0.25"
            ),
        ),
        # A group too small to judge is named even when the gate passes.
        (
            metrics(0.800, 0.02),
            None,
            FAIR_WITH_SMALL_GROUP,
            "fairness",
            (
                "no credible disparity (no champion to compare), at threshold 0.5000, "
                "95% intervals | age_band: DP ratio 1.00 [0.66, 1.00], ≥ 0.60; "
                "EO difference 0.000 [0.000, 0.238], ≤ 0.25; "
                "not judged: c (40 rows < 200, 9.0 expected selected < 30)"
            ),
        ),
        # Beyond the ceiling in point estimate only: passes, and says why.
        (
            metrics(0.800, 0.02),
            None,
            NOISY,
            "fairness",
            (
                "no credible disparity (no champion to compare), at threshold 0.5000, "
                "95% intervals | age_band: DP ratio 0.67 [0.42, 1.00], ≥ 0.60; "
                "EO difference 0.300 [0.052, 0.513], not credibly above 0.25"
            ),
        ),
    ],
)
def test_details_carry_the_numbers(challenger, champion, report, gate, detail) -> None:
    decision = decide(challenger, champion, report, SETTINGS, FAIR if champion else None)
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


def test_a_candidate_clearly_less_fair_than_the_champion_is_refused() -> None:
    # WORSE is within both absolute limits on its own (no champion: it passes) ...
    alone = decide(metrics(0.800, 0.02), None, WORSE, SETTINGS, FAIR_BIG)
    assert alone.passed and alone.fairness.champion is None
    # ... but beside the champion on the same rows its whole interval is worse by the margin.
    decision = decide(metrics(0.800, 0.02), metrics(0.779, 0.02), WORSE, SETTINGS, FAIR_BIG)
    assert [r.name for r in decision.failed] == ["fairness"]
    assert decision.verdict == "keep_champion"
    (result,) = decision.failed
    assert result.detail.startswith(
        "age_band clearly worse than the champion (margin 0.05), at threshold 0.5000 "
        "(champion's 0.5000), 95% intervals | age_band: DP ratio 0.72 [0.62, 0.84], ≥ 0.60 "
        "(champion 1.00: clearly worse, whole interval below 1.00 - margin 0.05)"
    )


def test_a_candidate_as_fair_as_the_champion_passes_with_both_shown() -> None:
    decision = decide(metrics(0.800, 0.02), metrics(0.779, 0.02), FAIR_BIG, SETTINGS, FAIR_BIG)
    (result,) = [r for r in decision.results if r.name == "fairness"]
    assert result.passed
    assert "none clearly worse than the champion (margin 0.05)" in result.detail
    assert "(champion 1.00: no regression)" in result.detail
    assert decision.fairness.champion is FAIR_BIG


def test_a_champion_without_fairness_is_said_not_compared() -> None:
    decision = decide(metrics(0.800, 0.02), metrics(0.779, 0.02), WORSE, SETTINGS)
    (result,) = [r for r in decision.results if r.name == "fairness"]
    assert result.passed
    assert result.detail.endswith(
        "| champion's fairness not measured on this holdout: no regression check"
    )


def test_fairness_of_the_champion_on_another_holdout_is_refused() -> None:
    with pytest.raises(ValueError, match="both must be measured on the same holdout"):
        decide(metrics(0.800, 0.02), metrics(0.779, 0.02), FAIR, SETTINGS, FAIR_BIG)


@pytest.mark.parametrize(
    ("challenger", "champion", "report", "routine"),
    [
        # No better than the champion: the usual scheduled outcome, nothing for people to do.
        (metrics(0.780, 0.020), metrics(0.779, 0.020), FAIR, True),
        (metrics(0.785, 0.040), metrics(0.779, 0.020), FAIR, True),  # calibration vs champion
        # A floor or the fairness gate failed: that is news about the data or the model.
        (metrics(0.650, 0.020), metrics(0.640, 0.020), FAIR, False),
        (metrics(0.780, 0.020), metrics(0.779, 0.020), UNFAIR, False),
        (metrics(0.785, 0.020), metrics(0.779, 0.020), UNFAIR, False),
        # Promoted, or refused with no champion: never routine.
        (metrics(0.785, 0.020), metrics(0.779, 0.020), FAIR, False),
        (metrics(0.650, 0.020), None, FAIR, False),
    ],
)
def test_only_a_keep_for_want_of_a_better_model_is_routine(
    challenger, champion, report, routine
) -> None:
    assert decide(challenger, champion, report, SETTINGS).routine_keep is routine
