"""The retraining job as plain functions (DESIGN §6): frame → time split → LightGBM → holdout
metrics → fairness → champion measured on the same holdout (metrics and fairness) → gates → an
MLflow run → only if every gate passed, a registered version (alias ``challenger``) → promotion
by settings.

``flows/retrain.py`` wraps these steps as Prefect tasks; the CLI (`churn train`) runs the flow.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.schema import PROTECTED_ATTRIBUTES
from tasks.core.settings import Settings
from tasks.features.frames import LABEL, build_training_frame, frame_of, labelled_entities
from tasks.features.store import feature_service, open_store, service_columns
from tasks.monitoring.profiles import ProfileHandle, profile_frame
from tasks.monitoring.reference import Reference, build_reference, save_reference
from tasks.scoring.models import compile_for_scoring
from tasks.training.approval import ApprovalOutcome
from tasks.training.candidates import log_candidate
from tasks.training.cold_start import (
    COLD_START_TAG,
    SPLIT_TAG,
    cold_start_day,
    cold_start_note,
    label_note,
    split_by_subscriber,
    unused_leavers,
)
from tasks.training.evaluate import best_achievable_auc, holdout_metrics, observable_oracle_auc
from tasks.training.fairness import FairnessReport, fairness_report
from tasks.training.fairness_compare import FairnessComparison
from tasks.training.gates import GateDecision, decide
from tasks.training.lineage import lineage_tags
from tasks.training.mlflow_store import CHAMPION, init_store
from tasks.training.model_spec import ModelSpec, TrainedModel, model_inputs
from tasks.training.registry import current_alias, load_model, promote, register_version
from tasks.training.time_split import TimeSplit, split_by_time
from tasks.training.train import feature_importance, predict_proba, train_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """A model measured on the out-of-time holdout, at the retention team's capacity."""

    metrics: dict[str, float]
    fairness: FairnessReport


@dataclass(frozen=True)
class RetrainResult:
    """What one retraining decided, and where it is recorded."""

    as_of: date
    run_id: str
    version: int | None
    promoted: bool
    decision: GateDecision
    challenger: Evaluation
    champion_version: int | None
    champion_metrics: dict[str, float] | None
    champion_fairness: FairnessReport | None
    """The champion's fairness on the same holdout at its own operating threshold."""
    best_auc: float | None
    observable_auc: float | None
    """AUC of the simulator's probability without frailty and the protected age term: the target."""
    model_card: str
    split_days: dict[str, list[str]]
    timings: dict[str, float]
    approval: ApprovalOutcome | None = None
    """A person's decision, when the candidate waited for approval and got one."""

    def with_approval(self, outcome: ApprovalOutcome) -> RetrainResult:
        return replace(self, approval=outcome, promoted=outcome.approved)


def evaluate(settings: Settings, holdout: pd.DataFrame, p: np.ndarray) -> Evaluation:
    """Holdout metrics at the retention team's capacity, and fairness at that operating point
    (the model's own top ``retention_capacity`` a day), with intervals (challenger and champion
    alike)."""
    y = holdout[LABEL].to_numpy()
    metrics = _metrics(settings, holdout, p)
    fairness = fairness_report(
        y,
        p,
        metrics["operating_threshold"],
        holdout[list(PROTECTED_ATTRIBUTES)].reset_index(drop=True),
        min_dp_ratio=settings.fairness_min_dp_ratio,
        max_eo_difference=settings.fairness_max_eo_difference,
        min_group_size=settings.fairness_min_group_size,
        min_selected_per_group=settings.fairness_min_selected_per_group,
        confidence=settings.fairness_confidence,
    )
    return Evaluation(metrics, fairness)


def champion_on_holdout(
    settings: Settings, holdout: pd.DataFrame
) -> tuple[int | None, Evaluation | None]:
    """The current champion (if any) scored on the same holdout with the same features:
    its version, and its metrics and fairness measured exactly as the challenger's."""
    if current_alias(settings, CHAMPION) is None:
        return None, None
    booster, spec, version = load_model(settings, CHAMPION)
    p = predict_proba((booster, ModelSpec.from_dict(spec)), holdout)
    return version, evaluate(settings, holdout, p)


def _metrics(settings: Settings, holdout: pd.DataFrame, p: np.ndarray) -> dict[str, float]:
    """Holdout metrics at the retention team's daily capacity (challenger and champion alike)."""
    return holdout_metrics(
        holdout[LABEL].to_numpy(),
        p,
        holdout["snapshot_date"].to_numpy(),
        settings.retention_capacity,
    )


def model_card(
    as_of: date,
    reason: str,
    split: TimeSplit,
    challenger: Evaluation,
    best_auc: float | None,
    observable_auc: float | None,
    champion_version: int | None,
    champion_metrics: dict[str, float] | None,
    decision: GateDecision,
    importance: pd.DataFrame,
    capacity: int,
    fairness: FairnessComparison,
    split_note: str | None = None,
) -> str:
    """Markdown for people: the decision and why, the numbers, and how far from the limit.

    ``fairness`` is the candidate's fairness beside the champion's on the same holdout (the
    fairness gate's evidence): the card shows both, per attribute and per group. ``split_note``:
    a split that is not by time (a cold start) says here what its holdout can and cannot say.
    """
    m = challenger.metrics
    limit = (
        f"{best_auc:.3f} (gap {best_auc - m['roc_auc']:.3f})"
        if best_auc is not None
        else "unknown (no ground truth)"
    )
    target = (
        f"{observable_auc:.3f} (gap {observable_auc - m['roc_auc']:.3f})"
        if observable_auc is not None
        else "unknown (no ground truth, or truth written before generator version 2)"
    )
    lines = [
        f"# telecom_churn_model — candidate trained at {as_of}",
        "",
        f"**Decision: {decision.summary()}**",
        "",
        (
            f"Reason for training: {reason}. Training days {split.train_days[0]} .. {split.train_days[-1]} "
            f"({len(split.train_days)}), validation {', '.join(map(str, split.validation_days))}, "
            f"out-of-time holdout {', '.join(map(str, split.holdout_days))}."
            if split_note is None
            else f"Reason for training: {reason}. Snapshot day {split.train_days[0]}, "
            "split by subscriber (see below)."
        ),
        "",
        *([split_note] if split_note else []),
        "| holdout metric | challenger | champion |",
        "|---|---:|---:|",
    ]
    for key in (
        "roc_auc",
        "pr_auc",
        "brier",
        "log_loss",
        "calibration_error",
        "precision_at_k",
        "recall_at_k",
        "lift_at_k",
    ):
        theirs = f"{champion_metrics[key]:.4f}" if champion_metrics else "—"
        lines.append(f"| {key} | {m[key]:.4f} | {theirs} |")
    lines += [
        "",
        f"Best achievable ROC-AUC on this holdout (simulator truth): {limit}.",
        (
            "Observable-oracle ROC-AUC on this holdout (the truth without the unobservable "
            f"frailty and the protected age term; the honest target): {target}."
        ),
        f"Champion compared: {f'version {champion_version}' if champion_version else 'none yet'}.",
        "",
        "## Gates",
        "",
        *(f"- {'✅' if r.passed else '❌'} **{r.name}**: {r.detail}" for r in decision.results),
        "",
        (
            "## Fairness at the operating threshold "
            f"({m['operating_threshold']:.4f}: top {capacity} a day)"
        ),
        "",
        *fairness.markdown(),
        "",
        "## Top features (gain)",
        "",
        *(f"- {row.feature}: {row.gain:,.0f}" for row in importance.head(8).itertuples()),
    ]
    return "\n".join(lines) + "\n"


def retrain(
    settings: Settings,
    as_of: date | None,
    reason: str,
    *,
    flow_run_id: str | None = None,
    by: str = "retrain flow",
    cold_start: bool = False,
) -> RetrainResult:
    """Train, evaluate and gate a challenger at ``as_of``; register and promote it only if it passes.

    A refused candidate stays an MLflow run with its failed gates; the champion alias and the
    promotion history are untouched. ``cold_start``: train on one labelled snapshot day split by
    subscriber (:mod:`tasks.training.cold_start`; ``as_of`` may then be None: the newest export).
    """
    clock = _Stopwatch()
    init_store(settings)
    store = open_store(settings)
    service = feature_service(store, settings.feature_service)
    features = service_columns(store, service)
    split_note = None
    if cold_start:
        from_export = as_of is None
        day = cold_start_day(settings, as_of)
        as_of = as_of or day + timedelta(days=1)
        window = (day, day)
        frame: pa.Table = frame_of(settings, store, labelled_entities(settings, [day]), [day])
        clock.lap("training frame")
        split = split_by_subscriber(frame)
        unused = 0
        if from_export:
            unused = unused_leavers(settings, int(pc.sum(frame.column(LABEL)).as_py() or 0))
        if unused:
            logger.warning(
                "cold start: %d of the export's leavers were not in service on %s", unused, day
            )
        split_note = cold_start_note(day, split, unused, label_note(settings, from_export))
    else:
        if as_of is None:
            raise ValueError("a time-split retraining needs its as-of day")
        window = settings.training_window(as_of)
        frame = build_training_frame(settings, as_of, store)
        clock.lap("training frame")
        split = split_by_time(frame, settings.holdout_snapshots, settings.validation_snapshots)
    clock.lap("split")
    model: TrainedModel = train_model(split, features, settings)
    clock.lap("train")
    holdout = split.holdout.reset_index(drop=True)
    p_holdout = predict_proba(model, holdout)
    challenger = evaluate(settings, holdout, p_holdout)
    best_auc = best_achievable_auc(settings.truth_dir, holdout)
    observable_auc = observable_oracle_auc(settings.truth_dir, holdout)
    clock.lap("evaluate + fairness")
    champion_version, champion = champion_on_holdout(settings, holdout)
    champion_metrics = champion.metrics if champion else None
    champion_fairness = champion.fairness if champion else None
    decision = decide(
        challenger.metrics, champion_metrics, challenger.fairness, settings, champion_fairness
    )
    fairness = decision.fairness
    clock.lap("champion + gates")
    importance = feature_importance(model)
    card = model_card(
        as_of,
        reason,
        split,
        challenger,
        best_auc,
        observable_auc,
        champion_version,
        champion_metrics,
        decision,
        importance,
        settings.retention_capacity,
        fairness,
        split_note,
    )
    lineage = lineage_tags(
        training_window=window,
        feature_service=service.name,
        feature_service_version=str((service.tags or {}).get("version", "unknown")),
        frame=frame,
        reason=reason,
        flow_run_id=flow_run_id,
    ) | {SPLIT_TAG: "subscriber" if cold_start else "time", COLD_START_TAG: str(cold_start).lower()}
    auc = challenger.metrics["roc_auc"]
    metrics = {
        **challenger.metrics,
        "best_achievable_auc": best_auc,
        "observable_oracle_auc": observable_auc,
        # None (not logged) without ground truth.
        "auc_gap_to_best": best_auc - auc if best_auc is not None else None,
        "auc_gap_to_observable": observable_auc - auc if observable_auc is not None else None,
    }
    if champion_metrics:
        metrics |= {f"champion_{k}": v for k, v in champion_metrics.items()}
    metrics |= fairness.mlflow_metrics()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = _write_artifacts(
            Path(tmp),
            card,
            challenger,
            importance,
            decision,
            holdout,
            p_holdout,
            best_auc,
            fairness,
        )
        run_id = log_candidate(
            settings,
            booster=model.booster,
            model_spec=model.spec.to_dict(),
            input_example=model_inputs(holdout.head(5), model.spec),
            params={
                **model.params,
                "best_iteration": model.best_iteration,
                "as_of": as_of.isoformat(),
            },
            metrics=metrics,
            gate_results={r.name: r.to_dict() for r in decision.results},
            tags={
                **lineage,
                **fairness.mlflow_tags(),
                "verdict": decision.verdict,
                "summary": decision.summary(),
            },
            artifacts=artifacts,
            run_name=f"{'cold-start' if cold_start else 'retrain'}-{as_of}",
        )
    clock.lap("mlflow run")
    version, promoted = None, False
    if decision.passed:
        # Built before registering: a version never exists without what monitoring needs.
        reference, profile = drift_reference(settings, frame, model)
        clock.lap("drift reference")
        version = register_version(settings, run_id, lineage)
        save_reference(settings, version, reference, profile)
        compile_for_scoring(settings, version)
        clock.lap("compile for scoring")
        if settings.promotion_mode == "immediate":
            promote(settings, version, by=by, reason=reason)
            promoted = True
    logger.info(
        "retrain at %s: %s (run %s, version %s)", as_of, decision.summary(), run_id, version
    )
    return RetrainResult(
        as_of=as_of,
        run_id=run_id,
        version=version,
        promoted=promoted,
        decision=decision,
        challenger=challenger,
        champion_version=champion_version,
        champion_metrics=champion_metrics,
        champion_fairness=champion_fairness,
        best_auc=best_auc,
        observable_auc=observable_auc,
        model_card=card,
        split_days={
            "train": [str(d) for d in split.train_days],
            "validation": [str(d) for d in split.validation_days],
            "holdout": [str(d) for d in split.holdout_days],
        },
        timings=clock.laps,
    )


def drift_reference(
    settings: Settings, frame: pa.Table, model: TrainedModel
) -> tuple[Reference, ProfileHandle]:
    """What monitoring compares each scoring day with: the training window's features and the
    model's probabilities on a seeded sample of it, plus a whylogs profile of the window."""
    features = model.spec.features
    inputs = frame.select(features)
    rows = min(frame.num_rows, settings.drift_reference_rows)
    rng = np.random.default_rng(settings.model_seed)
    sample = np.sort(rng.choice(frame.num_rows, size=rows, replace=False))
    p_sample = predict_proba(model, inputs.take(pa.array(sample)))
    reference = build_reference(
        inputs,
        features,
        model.spec.categorical,
        p_sample,
        max_rows=settings.drift_reference_rows,
        seed=settings.model_seed,
    )
    profile = profile_frame(inputs, features, seed=settings.model_seed)
    return reference, profile


class _Stopwatch:
    """Seconds per stage, for the flow's artifact and bench/train.py."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = now - self._last
        self._last = now


def _write_artifacts(
    folder: Path,
    card: str,
    challenger: Evaluation,
    importance: pd.DataFrame,
    decision: GateDecision,
    holdout: pd.DataFrame,
    p: np.ndarray,
    best_auc: float | None,
    fairness: FairnessComparison,
) -> dict[str, Path]:
    """The model card, tables and charts logged with the candidate's MLflow run.

    Fairness: ``fairness_by_group.csv`` (one row per attribute and group: counts, selections,
    rates with intervals, the champion's beside them), ``fairness_by_attribute.csv`` (both
    models' ratio and difference with intervals, the status) and ``fairness.json`` (all of it
    and the decision).
    """
    from tasks.training import charts

    (folder / "model_card.md").write_text(card)
    fairness.by_group().to_csv(folder / "fairness_by_group.csv", index=False)
    fairness.by_attribute().to_csv(folder / "fairness_by_attribute.csv", index=False)
    (folder / "fairness.json").write_text(json.dumps(fairness.to_dict(), indent=2))
    importance.to_csv(folder / "feature_importance.csv", index=False)
    (folder / "gates.json").write_text(json.dumps(decision.to_dict(), indent=2))
    plots = folder / "plots"
    plots.mkdir()
    y = holdout[LABEL].to_numpy()
    m = challenger.metrics
    charts.roc_chart(y, p, m["roc_auc"], best_auc, plots / "roc.png")
    charts.pr_chart(y, p, m["pr_auc"], plots / "precision_recall.png")
    charts.calibration_chart(y, p, m["calibration_error"], plots / "calibration.png")
    charts.fairness_chart(fairness.candidate, plots / "fairness_by_group.png", fairness.champion)
    charts.importance_chart(importance, plots / "feature_importance.png")
    names = (
        "model_card.md",
        "fairness_by_group.csv",
        "fairness_by_attribute.csv",
        "fairness.json",
        "feature_importance.csv",
        "gates.json",
        "plots",
    )
    return {name: folder / name for name in names}
