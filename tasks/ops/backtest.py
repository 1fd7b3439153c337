"""The backtest's plain parts: its calendar, the retraining policies, and what it measured.

A backtest replays a simulated world night by night (``flows/backtest.py`` runs the nights through
the flows themselves) once per retraining policy, each policy in its own ``$CHURN_HOME`` that
shares the world's source, features and Feast registry, so the policies differ only in their
decisions. What it measures per policy and score date, once outcomes mature: the champion's
realized precision at the retention team's capacity and its realized ROC-AUC (the same numbers
``churn performance`` computes from the prediction log), plus what each policy did: retrainings,
promotions, refusals by gate, Slack messages and CPU seconds.

Policies (:data:`POLICIES`):

* ``none``: the first champion forever;
* ``weekly``: the retrain-weekly schedule (Sundays 04:00, so the window ends each Saturday);
* ``drift``: monitoring's drift trigger alone (the behaviour before follow-ups existed);
* ``drift-matured``: the drift trigger plus the follow-up retraining once post-shift labels have
  matured (:mod:`tasks.monitoring.follow_up`);
* ``deployed``: what ``prefect.yaml`` runs, the default: the weekly schedule *and* the drift
  trigger with its follow-up (a concept drift leaves the inputs alone, so only the schedule
  sees it);
* ``nightly``: a retraining every night on all mature labels, the same gates (the upper bound,
  for comparison; expensive).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.core.errors import ChurnError
from tasks.core.files import atomic_path

POLICIES = ("none", "weekly", "drift", "drift-matured", "deployed", "nightly")
DEFAULT_POLICY = "deployed"
SCENARIOS = ("baseline", "price_shock", "usage_shift", "support_decline")
MONITORED = ("drift", "drift-matured", "deployed")
"""Policies that monitor every night (and so may alert): the others never look at drift."""
FOLLOWS_UP = ("drift-matured", "deployed")
"""Policies that plan the follow-up retraining once post-shift labels have matured."""
WEEKLY = ("weekly", "deployed")
"""Policies that run the retrain-weekly schedule."""

HISTORY_DAYS = 210
"""Days a first training needs before it: 90-day features + 30-day labels + the 90-day window."""
WEEKLY_RETRAIN_WEEKDAY = 5
"""Saturday: the retrain-weekly deployment runs Sundays 04:00 on the day before."""
SHARED = ("source", "truth", "features", "feast")
"""Folders of the world every policy's home links to (read-only during the nights)."""
RECOVERY_WINDOW = (45, 120)
"""Days after the shift over which the issue's recovery target is judged (inclusive)."""


class BacktestError(ChurnError):
    """The backtest cannot run as asked (too little history, an unknown policy, …)."""


@dataclass(frozen=True)
class Calendar:
    """The days a backtest covers: the world, the first champion's training day, the nights."""

    world_start: date
    world_days: int
    first_training: date
    nights: list[date]
    shift: date

    @property
    def world_end(self) -> date:
        return self.world_start + timedelta(days=self.world_days - 1)


def backtest_calendar(
    world_start: date,
    pre_shift_nights: int,
    post_shift_nights: int,
    label_horizon_days: int,
    first_night: date | None = None,
) -> Calendar:
    """The world a backtest simulates: history for the first training (the day before
    ``first_night``, default: as early as the history allows), the nights, and the label
    horizon after the last night so its outcomes mature. The shift starts on the night after
    ``pre_shift_nights`` nights.

    Raises:
        BacktestError: no night before or after the shift, or ``first_night`` leaves too little
            history (the error names the first night that would work).
    """
    if pre_shift_nights < 1 or post_shift_nights < 1:
        raise BacktestError(
            f"a backtest needs nights before and after the shift, got {pre_shift_nights} before "
            f"and {post_shift_nights} after"
        )
    earliest = world_start + timedelta(days=HISTORY_DAYS + 1)
    first_night = first_night or earliest
    if first_night < earliest:
        raise BacktestError(
            f"the world starts on {world_start}: a first night on {first_night} leaves no room "
            f"for the {HISTORY_DAYS} days of history a first training needs; start from "
            f"{earliest} instead"
        )
    nights = [first_night + timedelta(days=i) for i in range(pre_shift_nights + post_shift_nights)]
    world_days = (nights[-1] - world_start).days + 1 + label_horizon_days
    return Calendar(
        world_start=world_start,
        world_days=world_days,
        first_training=first_night - timedelta(days=1),
        nights=nights,
        shift=nights[pre_shift_nights],
    )


def check_policies(policies: Iterable[str]) -> list[str]:
    chosen = list(dict.fromkeys(policies))
    unknown = [p for p in chosen if p not in POLICIES]
    if unknown:
        raise BacktestError(
            f"unknown retraining policy {', '.join(unknown)}: choose from {', '.join(POLICIES)}"
        )
    if not chosen:
        raise BacktestError(f"no policy to replay: choose from {', '.join(POLICIES)}")
    return chosen


def scheduled_retraining(policy: str, night: date) -> str | None:
    """The reason a schedule-driven policy retrains after ``night``, or None."""
    if policy == "nightly":
        return "backtest: nightly retraining"
    if policy in WEEKLY and night.weekday() == WEEKLY_RETRAIN_WEEKDAY:
        return "weekly schedule"
    return None


def link_world(world_home: Path, policy_home: Path) -> None:
    """A policy's home: its own MLflow store, log and monitoring state; the world's data shared."""
    policy_home.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        link = policy_home / name
        if not link.exists():
            link.symlink_to((world_home / name).resolve(), target_is_directory=True)


# ----------------------------------------------------------------------------- what it measured


@dataclass
class PolicyRun:
    """What one policy did over the nights (its decisions and costs; metrics come separately)."""

    policy: str
    retrainings: int = 0
    promotions: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    """Refused candidates by failed gate (a candidate failing two gates counts under both)."""
    slack_messages: int = 0
    incidents: int = 0
    """Drift incidents opened (``monitoring/incidents.json``)."""
    most_incident_messages: int = 0
    """The most Slack messages one incident took (onset, update, resolution: at most 3)."""
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    retrain_log: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(
    realized: pd.DataFrame, runs: Sequence[PolicyRun], shift: date, window=RECOVERY_WINDOW
) -> pd.DataFrame:
    """One row per policy: mean realized precision@K and AUC before the shift, after it, and in
    the recovery window, with what the policy did.

    ``realized`` has one row per (policy, score_date) of the champion: columns policy,
    score_date, precision_at_k, roc_auc.
    """
    lo, hi = (shift + timedelta(days=window[0]), shift + timedelta(days=window[1]))
    rows = []
    for run in runs:
        gain = paired_gain(realized, run.policy, "none", lo, hi)
        mine = realized[realized["policy"] == run.policy]
        days = pd.to_datetime(mine["score_date"]).dt.date
        before = mine[days < shift]
        after = mine[days >= shift]
        recovery = mine[(days >= lo) & (days <= hi)]
        rows.append(
            {
                "policy": run.policy,
                "p@K before": _mean(before["precision_at_k"]),
                "p@K after": _mean(after["precision_at_k"]),
                f"p@K +{window[0]}..+{window[1]}d": _mean(recovery["precision_at_k"]),
                "AUC before": _mean(before["roc_auc"]),
                "AUC after": _mean(after["roc_auc"]),
                f"AUC +{window[0]}..+{window[1]}d": _mean(recovery["roc_auc"]),
                "p@K gain vs none (95% CI)": gain,
                "retrainings": run.retrainings,
                "promotions": run.promotions,
                "refusals": ", ".join(f"{g} {n}" for g, n in sorted(run.refusals.items())) or "0",
                "slack messages": run.slack_messages,
                "incidents (most messages)": f"{run.incidents} ({run.most_incident_messages})",
                "CPU s": round(run.cpu_seconds, 1),
            }
        )
    return pd.DataFrame(rows)


BLOCK_NIGHTS = 7
"""Nights per block when estimating noise: consecutive nights share most subscribers and outcomes,
so they are far from independent; weekly blocks are closer to it."""


def paired_gain(realized: pd.DataFrame, policy: str, baseline: str, lo: date, hi: date) -> str:
    """``policy``'s mean realized precision@K minus ``baseline``'s over the nights ``lo``..``hi``,
    paired night by night, with a normal 95% interval over 7-night blocks; "—" when either
    policy is missing or there are fewer than two blocks."""
    if policy == baseline:
        return "—"
    frame = realized.assign(day=pd.to_datetime(realized["score_date"]).dt.date)
    frame = frame[(frame["day"] >= lo) & (frame["day"] <= hi)]
    wide = frame.pivot_table(index="day", columns="policy", values="precision_at_k")
    if policy not in wide or baseline not in wide:
        return "—"
    diff = (wide[policy] - wide[baseline]).dropna()
    blocks = diff.groupby(np.arange(len(diff)) // BLOCK_NIGHTS).mean()
    if len(blocks) < 2:
        return "—"
    half = 1.96 * float(blocks.std(ddof=1)) / math.sqrt(len(blocks))
    mean = float(diff.mean())
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


BOOTSTRAP_RESAMPLES = 4000


@dataclass(frozen=True)
class RecoveredShare:
    """The share of the ``none``→``nightly`` gap a policy closes, with a 95% interval.

    ``low``/``high`` come from resampling weekly blocks of nights (the same blocks as
    :func:`paired_gain`), each resample pairing the policy's and ``nightly``'s gains over
    ``none`` on the same nights. ``gap_credible`` is False when the gap's own interval holds
    zero: the share is then a ratio of noise, and the interval is not shown.
    """

    share: float
    low: float
    high: float
    gap_credible: bool
    gap: float
    """``nightly``'s mean gain over ``none`` on the same nights (negative: retraining loses)."""

    def text(self) -> str:
        if not self.gap_credible:
            return f"{self.share:.0%} (the none→nightly gap itself is within noise)"
        return f"{self.share:.0%} [{self.low:.0%}, {self.high:.0%}]"

    def verdict(self, target: float) -> str:
        """Whether ``target`` (a share) is met, or why the share cannot say."""
        if not self.gap_credible:
            return "cannot be judged: the gap is noise"
        if self.gap < 0:
            return "not applicable: nightly retraining loses to none here"
        return "meets" if self.share >= target - 1e-9 else "misses"  # float sums of means


def recovered_share_interval(
    realized: pd.DataFrame, policy: str, shift: date, window=RECOVERY_WINDOW, *, seed: int = 0
) -> RecoveredShare | None:
    """Share of the gap between ``none`` and ``nightly`` in recovery-window precision@K that
    ``policy`` closes (paired by night), with a block-bootstrap 95% interval.

    With a ``world`` column (replays of several simulated worlds, e.g. seeds, of the same
    scenario and shift), nights are paired within their world and the blocks never span two
    worlds: the interval then pools the worlds' evidence.

    None when ``policy``, ``none`` or ``nightly`` is missing, there are fewer than two blocks, or
    the gap is zero.
    """
    lo, hi = shift + timedelta(days=window[0]), shift + timedelta(days=window[1])
    frame = realized.assign(day=pd.to_datetime(realized["score_date"]).dt.date)
    if "world" not in frame:
        frame = frame.assign(world=0)
    frame = frame[(frame["day"] >= lo) & (frame["day"] <= hi)]
    wide = frame.pivot_table(index=["world", "day"], columns="policy", values="precision_at_k")
    if not {"none", "nightly", policy} <= set(wide.columns):
        return None
    wide = wide[["none", "nightly", policy]].dropna()
    gain = (wide[policy] - wide["none"]).to_numpy()
    gap = (wide["nightly"] - wide["none"]).to_numpy()
    # Weekly blocks numbered within each world, then made unique across worlds.
    world_codes = pd.factorize(wide.index.get_level_values("world"))[0]
    within = wide.groupby(level="world", sort=False).cumcount().to_numpy() // BLOCK_NIGHTS
    block = np.unique(world_codes * (within.max(initial=0) + 1) + within, return_inverse=True)[1]
    n_blocks = int(block.max()) + 1 if len(block) else 0
    if n_blocks < 2 or abs(gap.mean()) < 1e-12:
        return None
    # Sums and counts per block, so a resample of blocks weighs every night once.
    gain_sum = np.bincount(block, weights=gain)
    gap_sum = np.bincount(block, weights=gap)
    nights = np.bincount(block).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_blocks, size=(BOOTSTRAP_RESAMPLES, n_blocks))
    counts = nights[picks].sum(axis=1)
    gain_means = gain_sum[picks].sum(axis=1) / counts
    gap_means = gap_sum[picks].sum(axis=1) / counts
    gap_low, gap_high = np.quantile(gap_means, [0.025, 0.975])
    credible = bool(gap_low > 0 or gap_high < 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = gain_means / gap_means
    low, high = np.nanquantile(shares, [0.025, 0.975]) if credible else (np.nan, np.nan)
    return RecoveredShare(
        share=float(gain.mean() / gap.mean()),
        low=float(low),
        high=float(high),
        gap_credible=credible,
        gap=float(gap.mean()),
    )


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.mean()) if len(values) else float("nan")


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (numbers to 3 decimals)."""
    columns = list(summary.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in summary.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def write_results(
    out_dir: Path,
    scenario: str,
    realized: pd.DataFrame,
    summary: pd.DataFrame,
    runs: Sequence[PolicyRun],
    calendar: Calendar,
) -> dict[str, Path]:
    """The backtest's files (each written whole, then renamed): realized metrics per night,
    the summary table (CSV and Markdown), what each policy did (JSON), and the chart."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "realized": out_dir / f"realized_{scenario}.csv",
        "summary": out_dir / f"summary_{scenario}.csv",
        "table": out_dir / f"summary_{scenario}.md",
        "runs": out_dir / f"policies_{scenario}.json",
        "chart": out_dir / f"precision_at_k_{scenario}.png",
    }
    with atomic_path(paths["realized"]) as tmp:
        realized.to_csv(tmp, index=False)
    with atomic_path(paths["summary"]) as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(paths["table"]) as tmp:
        tmp.write_text(
            f"Backtest {scenario}: nights {calendar.nights[0]} .. {calendar.nights[-1]}, "
            f"shift {calendar.shift}\n\n" + markdown_table(summary)
        )
    with atomic_path(paths["runs"]) as tmp:
        tmp.write_text(json.dumps([r.to_dict() for r in runs], indent=2, default=str) + "\n")
    precision_chart(realized, scenario, calendar.shift, paths["chart"])
    return paths


def precision_chart(realized: pd.DataFrame, scenario: str, shift: date, path: Path) -> Path:
    """Realized precision@K per score date, one line per policy, the shift marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for policy in POLICIES:
        mine = realized[realized["policy"] == policy].sort_values("score_date")
        if mine.empty:
            continue
        days = pd.to_datetime(mine["score_date"])
        # A 7-night rolling mean: one night's top 500 is a noisy sample.
        smooth = mine["precision_at_k"].rolling(7, min_periods=1).mean()
        ax.plot(
            days,
            smooth,
            label=policy,
            linewidth=2 if policy == DEFAULT_POLICY else 1.2,
            # Drawn after drift-matured and dashed: the two coincide until a follow-up differs.
            linestyle="--" if policy == "drift" else "-",
            zorder=3 if policy == "drift" else 2,
        )
    ax.axvline(np.datetime64(shift), color="grey", linestyle="--", linewidth=1)
    ax.text(np.datetime64(shift), ax.get_ylim()[1], f" shift {shift}", va="top", fontsize=8)
    ax.set_title(f"Realized precision at capacity, {scenario} (7-night rolling mean)")
    ax.set_ylabel("precision@K (realized)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
