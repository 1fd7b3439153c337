"""What realized performance says to people: findings for an alert, and the trend chart.

:func:`performance_findings` takes the history of realized performance
(:func:`tasks.monitoring.performance.read_history`) and reports a champion whose realized AUC fell more than
the tolerance below its holdout AUC (per day, and over its last ``WINDOW_DAYS`` dates), a
realized churn rate off the mean predicted probability by more than ``RATE_RATIO_LIMIT`` either
way, and a shadow that beat the champion by more than the promotion margin. :func:`trend_chart`
draws the history as a PNG.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib.figure import Figure

from tasks.audit.log_schema import CHAMPION, SHADOW
from tasks.core.files import atomic_path
from tasks.core.settings import Settings
from tasks.training.mlflow_store import CHAMPION as CHAMPION_ALIAS
from tasks.training.registry import current_alias

WINDOW_DAYS = 7

RATE_RATIO_LIMIT = 1.25

CHAMPION_BELOW_HOLDOUT = "champion_below_holdout"
CHAMPION_MISCALIBRATED = "champion_miscalibrated"
SHADOW_BETTER = "shadow_better"
DAY, WINDOW = "day", "window"


@dataclass(frozen=True)
class Finding:
    """One thing the realized performance says, for an alert: counts and metrics, no subscriber.

    ``scope``: :data:`DAY` (one score date) or :data:`WINDOW` (the champion's last
    :data:`WINDOW_DAYS` evaluated dates; AUCs are then means of the daily AUCs). By ``kind``:

    * :data:`CHAMPION_BELOW_HOLDOUT`: ``value`` the champion's realized AUC, ``reference`` its
      holdout AUC, ``gap`` = reference − value (> ``performance_auc_tolerance``);
    * :data:`SHADOW_BETTER`: ``value`` the champion's realized AUC, ``reference`` the shadow's on
      the same days, ``gap`` = reference − value (> ``gate_auc_margin``);
    * :data:`CHAMPION_MISCALIBRATED` (window only): ``value`` the realized churn rate,
      ``reference`` the mean predicted probability on the same rows, ``gap`` = value / reference
      (beyond :data:`RATE_RATIO_LIMIT` either way).

    ``message`` is the plain-text summary.
    """

    kind: str
    scope: str
    first_date: date
    last_date: date
    days: int
    champion_version: int
    value: float
    reference: float
    gap: float
    shadow_version: int | None
    message: str

    def to_dict(self) -> dict[str, object]:
        record = asdict(self)
        record["first_date"] = self.first_date.isoformat()
        record["last_date"] = self.last_date.isoformat()
        return record


def champion_reference(settings: Settings) -> tuple[int, float] | None:
    """The champion's version and holdout ROC-AUC from the registry; None without a champion."""
    info = current_alias(settings, CHAMPION_ALIAS)
    if info is None or "roc_auc" not in info.metrics:
        return None
    return info.version, float(info.metrics["roc_auc"])


# ----------------------------------------------------------------------------- findings


def performance_findings(
    history: pa.Table,
    champion_version: int,
    champion_holdout_auc: float,
    settings: Settings,
    *,
    new_dates: Iterable[date] | None = None,
) -> list[Finding]:
    """What the realized performance says about the champion, for an alert.

    * :data:`CHAMPION_BELOW_HOLDOUT`, per day: the champion version's realized AUC on a date of
      ``new_dates`` is more than ``performance_auc_tolerance`` below ``champion_holdout_auc``;
      per window: the mean of its daily AUCs over its last :data:`WINDOW_DAYS` evaluated dates
      is (needs that many dates). The version's rows count whatever role it scored in: a
      freshly promoted champion is judged on the days it ran in shadow.
    * :data:`CHAMPION_MISCALIBRATED`, per window: over the same window, churners over all rows
      against the mean predicted probability (pooled over the rows) beyond
      :data:`RATE_RATIO_LIMIT` either way. Concept drift that keeps the ranking barely moves
      the AUC but shows here.
    * :data:`SHADOW_BETTER`, per day and per window (on days the champion version scored as
      champion beside a shadow): the shadow's AUC beat the champion's by more than
      ``gate_auc_margin``, the margin a challenger needs at promotion.

    Window findings are only given when the window holds a date of ``new_dates``, so a run
    with nothing new says nothing again. ``new_dates`` defaults to the history's newest date
    (pass the dates :func:`~tasks.monitoring.performance.update_history` just wrote when it wrote several). Rows of other
    models than ``settings.model_name`` and days whose AUC is undefined are ignored.
    """
    tolerance = settings.performance_auc_tolerance
    rows = [
        r
        for r in history.to_pylist()
        if r["model_name"] == settings.model_name and r["roc_auc"] is not None
    ]
    if not rows:
        return []
    # The champion version's own predictions per date (its champion row if it has both).
    champion: dict[date, dict] = {}
    for r in rows:
        if r["model_version"] == champion_version and (
            r["score_date"] not in champion or r["role"] == CHAMPION
        ):
            champion[r["score_date"]] = r
    shadow = {
        r["score_date"]: r
        for r in rows
        if r["role"] == SHADOW
        and r["model_version"] != champion_version
        and r["score_date"] in champion
        and champion[r["score_date"]]["role"] == CHAMPION
    }
    fresh = set(new_dates) if new_dates is not None else {max(r["score_date"] for r in rows)}
    findings: list[Finding] = []

    for day in sorted(fresh & champion.keys()):
        r = champion[day]
        gap = champion_holdout_auc - r["roc_auc"]
        if gap > tolerance:
            findings.append(
                Finding(
                    kind=CHAMPION_BELOW_HOLDOUT,
                    scope=DAY,
                    first_date=day,
                    last_date=day,
                    days=1,
                    champion_version=champion_version,
                    value=r["roc_auc"],
                    reference=champion_holdout_auc,
                    gap=gap,
                    shadow_version=None,
                    message=(
                        f"Champion v{champion_version}: realized AUC {r['roc_auc']:.3f} on score "
                        f"date {day} ({r['n']:,} subscribers, {r['positives']:,} churned within "
                        f"{r['horizon_days']} days), {gap:.3f} below its holdout AUC "
                        f"{champion_holdout_auc:.3f} (tolerance {tolerance:.3f})."
                    ),
                )
            )
    window = sorted(champion)[-WINDOW_DAYS:]
    if len(window) == WINDOW_DAYS and fresh & set(window):
        mean_auc = float(np.mean([champion[d]["roc_auc"] for d in window]))
        gap = champion_holdout_auc - mean_auc
        if gap > tolerance:
            findings.append(
                Finding(
                    kind=CHAMPION_BELOW_HOLDOUT,
                    scope=WINDOW,
                    first_date=window[0],
                    last_date=window[-1],
                    days=len(window),
                    champion_version=champion_version,
                    value=mean_auc,
                    reference=champion_holdout_auc,
                    gap=gap,
                    shadow_version=None,
                    message=(
                        f"Champion v{champion_version}: mean realized AUC {mean_auc:.3f} over its "
                        f"last {len(window)} matured score dates ({window[0]} to {window[-1]}), "
                        f"{gap:.3f} below its holdout AUC {champion_holdout_auc:.3f} "
                        f"(tolerance {tolerance:.3f})."
                    ),
                )
            )
    if len(window) == WINDOW_DAYS and fresh & set(window):
        findings += _calibration_finding([champion[d] for d in window], champion_version)
    findings += _shadow_findings(champion, shadow, champion_version, fresh, settings)
    return findings


def _calibration_finding(window: list[dict], champion_version: int) -> list[Finding]:
    """Realized churn against predicted, pooled over the window's rows; empty when within limits."""
    rows = sum(r["n"] for r in window)
    churned = sum(r["positives"] for r in window)
    predicted = sum(r["n"] * r["mean_probability"] for r in window)
    if not rows or predicted <= 0:
        return []
    rate, mean_p = churned / rows, predicted / rows
    ratio = rate / mean_p
    if 1 / RATE_RATIO_LIMIT <= ratio <= RATE_RATIO_LIMIT:
        return []
    first, last = window[0]["score_date"], window[-1]["score_date"]
    direction = "under-predicts" if ratio > 1 else "over-predicts"
    return [
        Finding(
            kind=CHAMPION_MISCALIBRATED,
            scope=WINDOW,
            first_date=first,
            last_date=last,
            days=len(window),
            champion_version=champion_version,
            value=rate,
            reference=mean_p,
            gap=ratio,
            shadow_version=None,
            message=(
                f"Champion v{champion_version} {direction} churn: over its last {len(window)} "
                f"matured score dates ({first} to {last}) {rate:.2%} churned within "
                f"{window[0]['horizon_days']} days against a mean predicted probability of "
                f"{mean_p:.2%} (x{ratio:.2f}; expected within x{1 / RATE_RATIO_LIMIT:.2f} to "
                f"x{RATE_RATIO_LIMIT:.2f})."
            ),
        )
    ]


def _shadow_findings(
    champion: Mapping[date, dict],
    shadow: Mapping[date, dict],
    champion_version: int,
    fresh: set[date],
    settings: Settings,
) -> list[Finding]:
    margin = settings.gate_auc_margin
    k = settings.retention_capacity
    findings = []
    for day in sorted(fresh & shadow.keys()):
        c, s = champion[day], shadow[day]
        ahead = s["roc_auc"] - c["roc_auc"]
        if ahead > margin:
            findings.append(
                Finding(
                    kind=SHADOW_BETTER,
                    scope=DAY,
                    first_date=day,
                    last_date=day,
                    days=1,
                    champion_version=champion_version,
                    value=c["roc_auc"],
                    reference=s["roc_auc"],
                    gap=ahead,
                    shadow_version=s["model_version"],
                    message=(
                        f"Shadow v{s['model_version']} would have done better than champion "
                        f"v{champion_version} on score date {day}: realized AUC "
                        f"{s['roc_auc']:.3f} against {c['roc_auc']:.3f} (+{ahead:.3f}); "
                        f"precision in the top {k:,} {_fmt(s['precision_at_k'])} against "
                        f"{_fmt(c['precision_at_k'])}."
                    ),
                )
            )
    if not shadow:
        return findings
    # The window of the newest shadow version: its last WINDOW_DAYS days beside the champion.
    newest = shadow[max(shadow)]["model_version"]
    window = sorted(d for d, r in shadow.items() if r["model_version"] == newest)[-WINDOW_DAYS:]
    if len(window) < WINDOW_DAYS or not fresh & set(window):
        return findings
    c_auc = float(np.mean([champion[d]["roc_auc"] for d in window]))
    s_auc = float(np.mean([shadow[d]["roc_auc"] for d in window]))
    ahead = s_auc - c_auc
    if ahead > margin:
        days_ahead = sum(shadow[d]["roc_auc"] > champion[d]["roc_auc"] for d in window)
        c_prec = _mean(champion[d]["precision_at_k"] for d in window)
        s_prec = _mean(shadow[d]["precision_at_k"] for d in window)
        findings.append(
            Finding(
                kind=SHADOW_BETTER,
                scope=WINDOW,
                first_date=window[0],
                last_date=window[-1],
                days=len(window),
                champion_version=champion_version,
                value=c_auc,
                reference=s_auc,
                gap=ahead,
                shadow_version=newest,
                message=(
                    f"Shadow v{newest} would have done better than champion v{champion_version} "
                    f"over the last {len(window)} matured score dates ({window[0]} to "
                    f"{window[-1]}): mean realized AUC {s_auc:.3f} against {c_auc:.3f} "
                    f"(+{ahead:.3f}, ahead on {days_ahead} of {len(window)} days); precision in "
                    f"the top {k:,} {_fmt(s_prec)} against {_fmt(c_prec)}."
                ),
            )
        )
    return findings


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ----------------------------------------------------------------------------- chart


def trend_chart(
    history: pa.Table,
    path: Path,
    *,
    holdout_auc: Mapping[int, float] | None = None,
    tolerance: float | None = None,
) -> Path:
    """PNG of the realized ROC-AUC per model version and role over score dates, written atomically.

    Champion lines are solid, shadow lines dashed; ``holdout_auc`` (version → AUC) adds each
    version's holdout AUC as a dotted line in its colour, and ``tolerance`` the alert line
    (holdout − tolerance) under it. An empty history gives a chart that says so.
    """
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    rows = [r for r in history.to_pylist() if r["roc_auc"] is not None]
    versions = sorted({r["model_version"] for r in rows} | set(holdout_auc or {}))
    colours = {v: f"C{i % 10}" for i, v in enumerate(versions)}
    for version, role in sorted({(r["model_version"], r["role"]) for r in rows}):
        series = sorted(
            (r["score_date"], r["roc_auc"])
            for r in rows
            if r["model_version"] == version and r["role"] == role
        )
        ax.plot(
            [d for d, _ in series],
            [a for _, a in series],
            color=colours[version],
            linestyle="-" if role == CHAMPION else "--",
            marker="o",
            markersize=2.5,
            label=f"v{version} {role}",
        )
    for version, auc in sorted((holdout_auc or {}).items()):
        ax.axhline(
            auc,
            color=colours[version],
            linestyle=":",
            linewidth=1,
            label=f"v{version} holdout {auc:.3f}",
        )
        if tolerance is not None:
            ax.axhline(
                auc - tolerance,
                color=colours[version],
                linestyle="-.",
                linewidth=1,
                label=f"v{version} alert below {auc - tolerance:.3f}",
            )
    if rows:
        ax.legend(loc="lower left", fontsize=7)
        fig.autofmt_xdate()
    else:
        ax.text(
            0.5, 0.5, "no matured score date yet", ha="center", va="center", transform=ax.transAxes
        )
    horizon = rows[0]["horizon_days"] if rows else None
    ax.set(
        xlabel="score date",
        ylabel="realized ROC-AUC",
        title="Realized ROC-AUC by score date" + (f" ({horizon}-day outcomes)" if horizon else ""),
    )
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
