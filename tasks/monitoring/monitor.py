"""One day of drift monitoring as a plain function: profile, contracts, drift, severity, report,
and whether a retraining should be triggered (DESIGN §1, §5).

What is compared: the features of the subscribers in service on the score date (through the same
bulk path nightly scoring uses) and the champion's logged probabilities of that date, against the
reference saved with the champion's version at training time. Above :data:`SAMPLE_ROWS`
subscribers a seeded uniform sample is monitored: PSI's bin shares then move by at most
``sqrt(ln(2/alpha) / (2n))`` per bin (DKW; 0.002 at n = 1M, alpha = 1e-3), far below any
threshold, and the profile's rows, nulls and means stay exact for the sample.

Retraining is asked for at most once per cooldown, whatever the version: the triggers are recorded
in ``$CHURN_HOME/monitoring/drift_triggers.jsonl`` and a day whose score date lies within
``drift_cooldown_days`` of an earlier trigger only reports. Per model rather than per version
(stricter than "once per version"): a retraining right after a shift still trains on labels from
before it (they need 30 days to mature), so the new version drifts from its own reference at once;
counted per version, each promotion would ask for the next retraining the next night. The
cooldown is measured in score dates, not wall-clock time, so a backfill over past days behaves as
the nights did.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.audit.ledger import log_path
from tasks.audit.log_schema import CHAMPION
from tasks.core.errors import ChurnError, SourceDataMissing
from tasks.core.files import file_lock
from tasks.core.settings import Settings
from tasks.data.sources import active_subscribers
from tasks.features.frames import features_from, view_reads
from tasks.features.store import open_store
from tasks.features.tables import as_of_timestamp, check_feature_tables
from tasks.monitoring.drift import Severity, day_severity, feature_drift
from tasks.monitoring.drift_history import append_history, read_history
from tasks.monitoring.profiles import profile_frame, profile_path, profile_summary, write_profile
from tasks.monitoring.reference import load_reference
from tasks.monitoring.report import DriftReport, write_report
from tasks.training.mlflow_store import CHAMPION as CHAMPION_ALIAS
from tasks.training.registry import current_alias

logger = logging.getLogger(__name__)

SAMPLE_ROWS = 1_000_000
"""Most subscribers monitored per day (a seeded sample above it; see the module docstring)."""


class NotScoredYet(ChurnError):
    """The day has no champion predictions in the log: score it before monitoring it."""


@dataclass
class MonitorResult:
    """What one day of monitoring found, and where it is written."""

    score_date: date
    model_version: int
    subscribers: int
    monitored: int
    drift: pa.Table
    severity: Severity
    report: DriftReport
    profiles: dict[str, Path]
    contracts: list[dict]
    retrain_requested: bool
    cooldown_note: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    reference_end: date | None = None
    """Newest snapshot day of the champion's training window (its reference), from its lineage."""

    @property
    def drifted(self) -> list[dict]:
        return [r for r in self.drift.to_pylist() if r["level"] != "none"]

    def contracts_passed(self) -> bool:
        return all(c["passed"] for c in self.contracts)


def monitor_day(settings: Settings, day: date, *, check_contracts: bool = True) -> MonitorResult:
    """Monitor ``day`` against the champion's reference.

    Raises:
        NoChampion-like RegistryError: no champion to monitor.
        NotScoredYet: the champion's predictions of ``day`` are not in the log.
        ReferenceNotFound: the champion's version was saved without a reference.
    """
    import time

    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    champion = current_alias(settings, CHAMPION_ALIAS)
    if champion is None:
        raise ChurnError(f"{settings.model_name} has no champion: nothing to monitor")
    version = champion.version
    reference = load_reference(settings, version)
    probabilities = _logged_probabilities(settings, day, version)
    entities = active_subscribers(settings, day)
    if entities.num_rows == 0:
        raise SourceDataMissing(f"no subscriber in service on {day}: nothing to monitor")
    sample = _sample(entities, SAMPLE_ROWS, seed=day.toordinal())
    reads = view_reads(settings, open_store(settings))
    frame = features_from(reads, as_of_timestamp(day), sample)
    features = [f.name for f in reference.features]
    lap("features")

    inputs_profile = profile_frame(frame, features, seed=day.toordinal())
    prediction_profile = profile_frame(pa.table({"probability": probabilities}), ["probability"])
    profiles = {
        "inputs": write_profile(inputs_profile, profile_path(settings, day, "inputs")),
        "predictions": write_profile(
            prediction_profile, profile_path(settings, day, "predictions")
        ),
    }
    lap("profiles")
    contracts = (
        [r.to_dict() for r in check_feature_tables(settings, day)] if check_contracts else []
    )
    lap("contracts")

    drift = feature_drift(reference, frame, probabilities, settings, seed=day.toordinal())
    severity = day_severity(drift, settings)
    append_history(settings, day, version, drift, severity)
    lap("drift")
    report = write_report(
        settings,
        day,
        version,
        drift,
        severity,
        history=read_history(settings),
        profile_summary=profile_summary(inputs_profile),
        reference=reference,
        current_frame=frame,
        current_probabilities=probabilities,
    )
    lap("report")
    retrain_requested, note = False, ""
    if severity.retrain:
        retrain_requested, note = _claim_retrain(settings, day, version, severity)
    logger.info("monitoring %s: %s (%s)", day, severity.level, severity.reason)
    return MonitorResult(
        score_date=day,
        model_version=version,
        subscribers=entities.num_rows,
        monitored=sample.num_rows,
        drift=drift,
        severity=severity,
        report=report,
        profiles=profiles,
        contracts=contracts,
        retrain_requested=retrain_requested,
        cooldown_note=note,
        timings=timings,
        reference_end=_window_end(champion.tags),
    )


def _window_end(tags: dict[str, str]) -> date | None:
    end = tags.get("training_window_end")
    return date.fromisoformat(end) if end else None


def _logged_probabilities(settings: Settings, day: date, version: int) -> np.ndarray:
    path = log_path(settings, day, settings.model_name, version, CHAMPION)
    if not path.exists():
        raise NotScoredYet(
            f"{day} has no predictions of {settings.model_name} version {version} in the log "
            f"({path}): run `churn score --date {day}` first"
        )
    return pq.read_table(path, columns=["probability"]).column("probability").to_numpy()


def _sample(entities: pa.Table, rows: int, seed: int) -> pa.Table:
    if entities.num_rows <= rows:
        return entities
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(entities.num_rows, size=rows, replace=False))
    return entities.take(pa.array(picked))


# ----------------------------------------------------------------------------- retrain guard


def triggers_path(settings: Settings) -> Path:
    return settings.monitoring_dir / "drift_triggers.jsonl"


def read_triggers(settings: Settings) -> list[dict]:
    try:
        lines = triggers_path(settings).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _claim_retrain(
    settings: Settings, day: date, version: int, severity: Severity
) -> tuple[bool, str]:
    """Record a retrain request for ``version`` unless one lies within the cooldown; (claimed, why not)."""
    path = triggers_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        for trigger in read_triggers(settings):
            earlier = date.fromisoformat(trigger["score_date"])
            if earlier == day or abs((day - earlier).days) < settings.drift_cooldown_days:
                return False, (
                    f"retraining was already requested on {earlier} (version "
                    f"{trigger['model_version']}; cooldown {settings.drift_cooldown_days} days)"
                )
        record = {
            "score_date": day.isoformat(),
            "model_version": version,
            "features": list(severity.features),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        with path.open("a") as out:
            out.write(json.dumps(record) + "\n")
    return True, ""


def drifted_features_text(result: MonitorResult, limit: int = 6) -> str:
    names = [f for f in result.severity.features if f != "prediction"]
    return ", ".join(names[:limit]) + (" …" if len(names) > limit else "")
