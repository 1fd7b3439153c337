"""Charts of a candidate for MLflow: ROC, precision-recall, calibration, fairness by group, importance.

Each function writes one PNG and returns its path. Figures are built with matplotlib's object
API (``Figure``), not pyplot: no global backend or display, so flows on headless workers and
concurrent threads are safe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tasks.training.evaluate import calibration_curve, pr_points, roc_points
from tasks.training.fairness import FairnessReport


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def roc_chart(y: np.ndarray, p: np.ndarray, auc: float, best_auc: float | None, path: Path) -> Path:
    """ROC curve of the holdout, with the AUC and the best achievable one in the legend."""
    points = roc_points(y, p)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    label = f"model (AUC {auc:.3f})" + (
        f"; best achievable {best_auc:.3f}" if best_auc is not None else ""
    )
    ax.plot(points["fpr"], points["tpr"], label=label)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.set(
        xlabel="false-positive rate", ylabel="true-positive rate", title="ROC, out-of-time holdout"
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def pr_chart(y: np.ndarray, p: np.ndarray, pr_auc: float, path: Path) -> Path:
    """Precision-recall curve of the holdout against the base rate."""
    points = pr_points(y, p)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot(points["recall"], points["precision"], label=f"model (PR-AUC {pr_auc:.3f})")
    ax.axhline(float(np.mean(y)), linestyle=":", color="grey", label=f"base rate {np.mean(y):.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, out-of-time holdout")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def calibration_chart(y: np.ndarray, p: np.ndarray, error: float, path: Path) -> Path:
    """Observed churn rate against mean predicted probability per equal-frequency bin."""
    table = calibration_curve(y, p)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    top = float(max(table["mean_predicted"].max(), table["observed_rate"].max())) * 1.1
    ax.plot([0, top], [0, top], linestyle=":", color="grey", label="perfectly calibrated")
    ax.plot(
        table["mean_predicted"],
        table["observed_rate"],
        marker="o",
        label=f"model (ECE {error:.4f})",
    )
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed churn rate",
        title="Calibration (10 bins)",
    )
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def fairness_chart(
    report: FairnessReport, path: Path, champion: FairnessReport | None = None
) -> Path:
    """Selection rate per group with its simultaneous interval, one panel per protected
    attribute; the champion's on the same holdout beside the candidate's when given.

    The selection rate is what the demographic-parity ratio compares, and its interval is what
    the gate judges: bars whose intervals overlap cannot make a credible disparity.
    """
    table = report.to_frame()
    theirs = champion.to_frame() if champion is not None else None
    attributes = list(dict.fromkeys(table["attribute"]))
    fig = Figure(figsize=(4.5 * len(attributes), 4))
    axes = fig.subplots(1, len(attributes), squeeze=False)
    models = [("candidate", table)] + ([("champion", theirs)] if theirs is not None else [])
    width = 0.8 / len(models)
    for ax, attribute in zip(axes[0], attributes, strict=True):
        for i, (name, frame) in enumerate(models):
            rows = frame[frame["attribute"] == attribute]
            x = np.arange(len(rows)) + (i - (len(models) - 1) / 2) * width
            rate = rows["selection_rate"].to_numpy(dtype=float)
            errors = np.vstack(
                [
                    rate - rows["selection_rate_low"].to_numpy(dtype=float),
                    rows["selection_rate_high"].to_numpy(dtype=float) - rate,
                ]
            )
            ax.bar(x, rate, width=width, yerr=errors, capsize=3, label=name)
        rows = table[table["attribute"] == attribute]
        labels = [
            g if judged else f"{g}*"
            for g, judged in zip(rows["group"], rows["judged"], strict=True)
        ]
        ax.set_xticks(np.arange(len(rows)), labels, rotation=30, fontsize=8)
        ax.set_title(attribute)
        ax.set_ylabel("selection rate")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"Selected at threshold {report.threshold:.4f}, with "
        f"{report.limits.confidence:.0%} simultaneous intervals (* = not judged)",
        fontsize=10,
    )
    return _save(fig, path)


def importance_chart(importance: pd.DataFrame, path: Path, top: int = 15) -> Path:
    """Total gain of the most important features."""
    rows = importance.head(top).iloc[::-1]
    fig = Figure(figsize=(6, 0.35 * len(rows) + 1))
    ax = fig.subplots()
    ax.barh(rows["feature"], rows["gain"])
    ax.set(xlabel="total gain", title="Feature importance")
    return _save(fig, path)
