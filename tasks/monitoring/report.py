"""The drift report of a scoring day for people: an HTML page and PNG charts.

Written atomically (a temporary folder swapped in) to::

    $CHURN_HOME/monitoring/reports/{score_date}/
      report.html              self-contained: the charts are embedded as base64 PNG
      drift_{feature}.png      reference vs current shares per bin, one per drifted row
                               (level warn or alert) and always one for the prediction
      history.png              largest PSI and KS per day, when the history has two days or more

Charts use matplotlib's object API (``Figure``), never pyplot: no global state, safe on
headless workers and in threads. A rerun of the same date replaces the whole folder.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from matplotlib import dates as mdates
from matplotlib.figure import Figure

from tasks.core.files import atomic_dir
from tasks.core.settings import Settings
from tasks.monitoring.drift import Severity
from tasks.monitoring.drift_history import history_by_day
from tasks.monitoring.reference import CATEGORICAL, PREDICTION, Reference

REPORT_NAME = "report.html"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_LEVEL_ORDER = {"alert": 0, "warn": 1, "none": 2}
ECDF_POINTS = 20_000
"""Values drawn per side in an ECDF panel (a seeded sample: a 10M-row day is not plotted whole)."""
_COLOURS = {"none": "#2e7d32", "warn": "#ef6c00", "alert": "#c62828", "retrain": "#6a1b9a"}


@dataclass(frozen=True)
class DriftReport:
    """Where a day's report was written."""

    directory: Path
    html: Path
    charts: dict[str, Path] = field(default_factory=dict)
    """Chart file per drift-table row charted (feature name or ``prediction``), plus ``history``."""


def report_dir(settings: Settings, score_date: date) -> Path:
    """``$CHURN_HOME/monitoring/reports/{score_date}``."""
    return settings.monitoring_dir / "reports" / score_date.isoformat()


def write_report(
    settings: Settings,
    score_date: date,
    model_version: int,
    drift_table: pa.Table,
    severity: Severity,
    *,
    history: pa.Table | None = None,
    profile_summary: pa.Table | None = None,
    reference: Reference | None = None,
    current_frame: pa.Table | None = None,
    current_probabilities: np.ndarray | None = None,
) -> DriftReport:
    """Write the day's HTML report and charts; returns their paths.

    Args:
        drift_table: :func:`tasks.monitoring.drift.feature_drift`'s table.
        history: :func:`tasks.monitoring.drift_history.read_history`'s table (the days so far) for the history
            table and chart.
        profile_summary: :func:`tasks.monitoring.profiles.profile_summary` of the day, shown as a table.
        reference, current_frame, current_probabilities: when given, numeric charts get a
            second panel with both empirical distribution functions (what KS measures).
    """
    target = report_dir(settings, score_date)
    rows = sorted(
        drift_table.to_pylist(), key=lambda r: (_LEVEL_ORDER.get(r["level"], 3), -r["psi"])
    )
    charted = [r for r in rows if r["level"] != "none" or r["kind"] == PREDICTION]
    by_day = history_by_day(history) if history is not None and history.num_rows else None
    charts: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    with atomic_dir(target) as tmp:
        for row in charted:
            values = _ecdf_inputs(row, reference, current_frame, current_probabilities)
            name = f"drift_{_SAFE.sub('_', row['feature'])}.png"
            drift_chart(row, tmp / name, values)
            charts[row["feature"]] = target / name
            images[row["feature"]] = (tmp / name).read_bytes()
        if by_day is not None and by_day.num_rows >= 2:
            history_chart(by_day, tmp / "history.png")
            charts["history"] = target / "history.png"
            images["history"] = (tmp / "history.png").read_bytes()
        page = _html(
            score_date, model_version, rows, severity, images, by_day, profile_summary, settings
        )
        (tmp / REPORT_NAME).write_text(page, encoding="utf-8")
    return DriftReport(directory=target, html=target / REPORT_NAME, charts=charts)


# ----------------------------------------------------------------------------- charts


def drift_chart(
    row: dict[str, Any],
    path: Path,
    values: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Reference vs current share per bin of one drift-table row (and both ECDFs, if given)."""
    panels = 2 if values is not None else 1
    bins = list(row["bins"])
    fig = Figure(figsize=(max(6.0, 0.55 * len(bins) + 2) + 4.5 * (panels - 1), 4.2))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    x = np.arange(len(bins))
    ax.bar(x - 0.2, row["reference_share"], width=0.4, label="reference", color="#90a4ae")
    ax.bar(x + 0.2, row["current_share"], width=0.4, label="current", color="#1e88e5")
    ax.set_xticks(x, bins, rotation=40, ha="right", fontsize=7)
    ax.set(ylabel="share of rows", title="Share per bin (what PSI compares)")
    ax.legend(fontsize=8)
    if values is not None:
        ref, cur = values
        ax2 = axes[1]
        for data, label, colour in ((ref, "reference", "#90a4ae"), (cur, "current", "#1e88e5")):
            data = np.sort(_thin(data[~np.isnan(data)]))
            if len(data):
                ax2.step(data, np.arange(1, len(data) + 1) / len(data), where="post", label=label,
                         color=colour)  # fmt: skip
        ax2.set(ylabel="cumulative share", title="Empirical CDF (what KS compares)")
        ax2.legend(fontsize=8)
    fig.suptitle(f"{row['feature']}: {_measures(row)} — {row['level']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def history_chart(by_day: pa.Table, path: Path) -> Path:
    """Largest feature PSI and KS per day, with the day's severity as the marker colour."""
    days = by_day.column("score_date").to_pylist()
    psi = [v if v is not None else math.nan for v in by_day.column("max_psi").to_pylist()]
    ks = [v if v is not None else math.nan for v in by_day.column("max_ks").to_pylist()]
    severity = by_day.column("severity").to_pylist()
    fig = Figure(figsize=(8, 3.6))
    ax = fig.subplots()
    ax.plot(days, psi, color="#1e88e5", label="largest feature PSI")
    ax.plot(days, ks, color="#8e24aa", linestyle="--", label="largest feature KS")
    ax.scatter(days, psi, c=[_COLOURS.get(s, "grey") for s in severity], zorder=3, s=18)
    ax.set(ylabel="effect size", title="Drift by day (marker colour: severity)")
    locator = mdates.AutoDateLocator(minticks=3, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _ecdf_inputs(
    row: dict[str, Any],
    reference: Reference | None,
    frame: pa.Table | None,
    probabilities: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Reference sample and current values of a numeric row, when both were given."""
    if reference is None or row["kind"] == CATEGORICAL:
        return None
    if row["kind"] == PREDICTION:
        if probabilities is None or not len(reference.prediction_sample):
            return None
        return reference.prediction_sample, np.asarray(probabilities, dtype=np.float64)
    if frame is None or row["feature"] not in reference.sample.column_names:
        return None
    ref = reference.sample.column(row["feature"]).to_numpy(zero_copy_only=False)
    cur = frame.column(row["feature"]).cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(ref, dtype=np.float64), np.asarray(cur, dtype=np.float64)


def _thin(values: np.ndarray, most: int = ECDF_POINTS) -> np.ndarray:
    if len(values) <= most:
        return values
    return values[np.random.default_rng(0).integers(0, len(values), size=most)]


def _measures(row: dict[str, Any]) -> str:
    parts = [f"PSI {row['psi']:.3f}"]
    if row["statistic"] is not None:
        parts.append(f"{row['test'].upper()} {row['statistic']:.3g}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
.badge { color: white; padding: 2px 10px; border-radius: 4px; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #555; font-size: 0.85em; }
"""


def _html(
    score_date: date,
    model_version: int,
    rows: list[dict[str, Any]],
    severity: Severity,
    images: dict[str, bytes],
    by_day: pa.Table | None,
    profile_summary: pa.Table | None,
    settings: Settings,
) -> str:
    e = html.escape
    colour = _COLOURS.get(severity.level, "grey")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Drift {score_date.isoformat()}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Drift report {score_date.isoformat()} — model version {int(model_version)}</h1>",
        (
            f"<p>Severity: <span class='badge' style='background:{colour}'>"
            f"{e(severity.level)}</span> {e(severity.reason)}</p>"
        ),
        (
            "<p class='note'>Decisions use effect sizes: PSI warn/alert at "
            f"{settings.drift_psi_warn}/{settings.drift_psi_alert}, KS statistic warn/alert at "
            f"{settings.drift_ks_warn}/{settings.drift_ks_alert} (numeric features and the "
            f"prediction); retrain from {settings.drift_retrain_features} alerting features or "
            "an alerting prediction distribution. p-values are shown for information only: "
            "with this many rows they flag differences of no practical size.</p>"
        ),
        "<h2>Drift per feature</h2>",
        _table(
            ["feature", "kind", "level", "PSI", "test", "statistic", "p-value", "rows",
             "null share (ref → cur)"],
            [
                [
                    r["feature"], r["kind"], r["level"], f"{r['psi']:.4f}", r["test"],
                    _fmt(r["statistic"]), _fmt(r["p_value"]), f"{r['current_rows']:,}",
                    f"{r['reference_null_share']:.2%} → {r['current_null_share']:.2%}",
                ]
                for r in rows
            ],
            text_columns={0, 1, 2, 4},
        ),
    ]  # fmt: skip
    charted = [r for r in rows if r["feature"] in images]
    if charted:
        parts.append("<h2>Reference vs current</h2>")
        for r in charted:
            parts.append(f"<h3>{e(r['feature'])}</h3>{_img(images[r['feature']], r['feature'])}")
    if by_day is not None:
        parts.append("<h2>History</h2>")
        if "history" in images:
            parts.append(_img(images["history"], "history"))
        parts.append(
            _table(
                ["date", "version", "severity", "features", "alerts", "warnings",
                 "largest PSI", "largest KS", "prediction PSI"],
                [
                    [
                        d["score_date"].isoformat(), str(d["model_version"]), d["severity"],
                        ", ".join(d["severity_features"]), str(d["alerts"]), str(d["warnings"]),
                        _named(d["max_psi_feature"], d["max_psi"]),
                        _named(d["max_ks_feature"], d["max_ks"]), _fmt(d["prediction_psi"]),
                    ]
                    for d in reversed(by_day.to_pylist())
                ],
                text_columns={0, 2, 3, 6, 7},
            )
        )  # fmt: skip
    if profile_summary is not None and profile_summary.num_rows:
        parts.append("<h2>Profile of the day</h2>")
        columns = [c for c in profile_summary.column_names if c != "kind"]
        parts.append(
            _table(
                columns,
                [[_fmt(r[c]) for c in columns] for r in profile_summary.to_pylist()],
                text_columns={0, columns.index("top_values")} if "top_values" in columns else {0},
            )
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(header: Sequence[str], body: Sequence[Sequence[str]], text_columns: set[int]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    lines = []
    for values in body:
        cells = "".join(
            f"<td class='text'>{e(v)}</td>" if i in text_columns else f"<td>{e(v)}</td>"
            for i, v in enumerate(values)
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}"
    return str(value)


def _named(name: str | None, value: float | None) -> str:
    return "" if name is None or value is None else f"{name} {value:.3f}"
