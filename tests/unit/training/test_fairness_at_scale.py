"""The fairness gate at a telecom's scale and at a small one, on generated holdouts.

Each holdout is built like the real one: two snapshot days of the same subscribers, protected
groups in the simulator's shares, labels drawn from a known true probability, and the operating
threshold of the real metrics (the top ``retention_capacity`` a day). The honest model's
probability is a noisy version of the truth without the protected age term; the biased model adds
risk for one region. Judged with the default settings: the gate must refuse the biased model at
100k and 1M subscribers and pass the honest one at 1M, and noise must not refuse a first
training at 5,000.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.core.schema import AGE_BANDS, GENDERS, PROTECTED_ATTRIBUTES, REGIONS
from tasks.core.settings import Settings
from tasks.data.sim_params import AGE_P, GENDER_P, REGION_P
from tasks.training.evaluate import operating_threshold
from tasks.training.fairness import FAIR, UNFAIR, FairnessReport, fairness_report
from tasks.training.fairness_compare import compare_with_champion

SETTINGS = Settings()
PENALISED = "west"
PENALTY = 0.5
"""Logit added for the penalised region: its subscribers look 1.6x as risky as they are."""
REGION_EFFECT = dict(zip(REGIONS, (0.0, 0.06, 0.03, 0.15, 0.01), strict=True))
"""A legitimate region effect (through network quality, as in the simulator), in logits."""


def holdout(subscribers: int, seed: int) -> dict[str, np.ndarray]:
    """Two snapshot days of ``subscribers``: labels, the honest and the biased probability.

    Grain: one row per (subscriber, day); keys ``day`` and the protected columns; ``y`` drawn
    from the true probability, which includes the protected 18-24 term no model may use.
    """
    rng = np.random.default_rng(seed)
    region = rng.choice(len(REGIONS), size=subscribers, p=REGION_P)
    age = rng.choice(len(AGE_BANDS), size=subscribers, p=AGE_P)
    gender = rng.choice(len(GENDERS), size=subscribers, p=GENDER_P)
    effect = np.array([REGION_EFFECT[r] for r in REGIONS])
    risk = rng.normal(-4.2, 1.0, subscribers) + effect[region]  # ~2.5% churn in 30 days
    penalised = region == REGIONS.index(PENALISED)
    days = []
    for day in range(2):
        logit = risk + rng.normal(0.0, 0.3, subscribers)  # today's state
        truth = _sigmoid(logit + 0.25 * (age == 0))
        honest = logit + rng.normal(0.0, 0.5, subscribers)  # what a model can see, with error
        days.append(
            {
                "day": np.full(subscribers, day),
                "y": (rng.random(subscribers) < truth).astype(np.int8),
                "honest": _sigmoid(honest),
                "biased": _sigmoid(honest + PENALTY * penalised),
                "age_band": np.array(AGE_BANDS)[age],
                "gender": np.array(GENDERS)[gender],
                "region": np.array(REGIONS)[region],
            }
        )
    return {key: np.concatenate([d[key] for d in days]) for key in days[0]}


def judge(world: dict[str, np.ndarray], model: str) -> FairnessReport:
    """The report the retrain job would make: default settings, top 500 a day."""
    p = world[model]
    threshold = operating_threshold(p, world["day"], SETTINGS.retention_capacity)
    return fairness_report(
        world["y"],
        p,
        threshold,
        pd.DataFrame({name: world[name] for name in PROTECTED_ATTRIBUTES}),
        min_dp_ratio=SETTINGS.fairness_min_dp_ratio,
        max_eo_difference=SETTINGS.fairness_max_eo_difference,
        min_group_size=SETTINGS.fairness_min_group_size,
        min_selected_per_group=SETTINGS.fairness_min_selected_per_group,
        confidence=SETTINGS.fairness_confidence,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def million() -> dict[str, Any]:
    """Both models judged on one holdout of 1M subscribers (2M rows), with the judging time."""
    # Seed 3: the honest model's region ratio lands at 0.594 < 0.60, as in the README's 1M run.
    world = holdout(1_000_000, seed=3)
    began = time.perf_counter()
    honest = judge(world, "honest")
    return {
        "honest": honest,
        "seconds": time.perf_counter() - began,
        "biased": judge(world, "biased"),
    }


@pytest.mark.parametrize("subscribers", [100_000, 1_000_000])
def test_a_candidate_penalising_one_region_is_refused(subscribers, million) -> None:
    if subscribers == 1_000_000:
        report = million["biased"]
    else:
        report = judge(holdout(subscribers, seed=1), "biased")
    statuses = {a.attribute: a.status for a in report.attributes}
    assert statuses == {"age_band": FAIR, "gender": FAIR, "region": UNFAIR}
    (reason,) = report.reasons
    assert reason.startswith("region: DP ratio") and "credibly below 0.60" in reason
    assert f"selected: {PENALISED}" in reason  # the over-selected region is named first
    # Every region holds enough expected selections to be judged, even at 500 a day of 1M.
    assert report.attribute("region").by_group["judged"].all()


def test_the_honest_candidate_passes_at_a_million(million) -> None:
    report = million["honest"]
    region = report.attribute("region")
    # The premise: on point estimates alone, this honest model would be refused (ratio < 0.60)
    # because ~0.05% of each region is selected, and a ratio of two tiny rates is noisy ...
    assert region.dp_ratio < SETTINGS.fairness_min_dp_ratio
    # ... while its interval reaches well above the floor: not credible, so it passes.
    assert region.dp_interval.high > 0.8
    assert report.passed and region.status == FAIR and report.reasons == []
    # 500 a day for two days, give or take: the threshold is the days' 500th probability averaged.
    assert 900 < report.selected < 1100
    # On the (group, label, selected) cells, 2M rows x 3 attributes stay far from fairlearn's
    # row-by-row minute (well under a few seconds on a quiet machine; loose for a loaded one).
    assert million["seconds"] < 15


def test_beside_an_honest_champion_the_biased_candidate_is_also_clearly_worse(million) -> None:
    comparison = compare_with_champion(
        million["biased"], million["honest"], SETTINGS.fairness_regression_margin
    )
    region = next(a for a in comparison.attributes if a.attribute == "region")
    assert not comparison.passed and region.status == UNFAIR  # credible disparity comes first
    assert set(region.regressions) == {"dp"}
    assert comparison.sentence().startswith("region credibly unfair, at threshold")


def test_noise_does_not_refuse_a_first_training_at_5000_subscribers() -> None:
    # Twelve worlds of 5,000 subscribers, the honest model each time, no champion: 10,000
    # holdout rows of which ~1,000 selected, ~40 churners per age band.
    reports = [judge(holdout(5000, seed), "honest") for seed in range(12)]
    refused_on_points = [
        r
        for r in reports
        if any(
            a.dp_ratio < SETTINGS.fairness_min_dp_ratio
            or a.eo_difference > SETTINGS.fairness_max_eo_difference
            for a in r.attributes
        )
    ]
    # The premise: point estimates alone (the old rule) would refuse several of these (5 of 12,
    # mostly on age_band equalized odds at 0.26-0.29, as in the issue) ...
    assert len(refused_on_points) >= 3
    # ... the evidence rule refuses none.
    assert [r.reasons for r in reports if not r.passed] == []
