"""Backtest every retraining policy on every scenario: does retraining pay off for the retention team?

    python bench/backtest.py [--subscribers 20000] [--scenario price_shock,...] [--policy none,...]
                             [--nights-before 14] [--nights-after 121] [--out .churn/bench_backtest]

For each scenario a world is simulated once (``churn backtest``'s own code, ``flows/backtest.py``),
then each policy replays every night through the flows (score, monitor, retrain by policy) in its
own child process. Printed per scenario: realized precision at the retention team's capacity and
realized ROC-AUC (means before the shift, after it, and over shift +45..+120 days), retrainings,
promotions, refusals by gate, Slack messages and CPU seconds; then the issue's targets:

* price_shock and support_decline: the default policy (``deployed``: the weekly schedule and the
  drift trigger with its follow-up, as ``prefect.yaml`` runs them) closes >= 80 % of the gap
  between ``none`` and ``nightly`` in mean realized precision@K over shift +45..+120 days (with a
  block-bootstrap 95% interval, or a note that the gap itself is within noise);
* baseline: no policy loses more than 0.01 realized AUC to ``nightly``; no drift alert;
* Slack messages per incident <= 3.

The tables, per-night CSVs and one PNG chart per scenario are written under ``--out``;
``summary.md`` gathers the tables for the README.

One world's nights are few for a small gap: ``--pool DIR ...`` adds the per-night results that
earlier runs (other ``--seed``s, same scenario and calendar) left in those ``--out`` folders, and
prints the share of the gap the default closes over all the worlds together (nights paired
within each world; blocks never span two worlds).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import date
from pathlib import Path

from common import ROOT, new_table
from rich.console import Console

from flows.backtest import run_backtest
from tasks.ops.backtest import (
    DEFAULT_POLICY,
    POLICIES,
    SCENARIOS,
    backtest_calendar,
    check_policies,
    markdown_table,
    recovered_share_interval,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--scenario", default=",".join(SCENARIOS))
    parser.add_argument("--policy", default=",".join(POLICIES))
    parser.add_argument("--nights-before", type=int, default=14)
    parser.add_argument("--nights-after", type=int, default=121)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / ".churn" / "bench_backtest")
    parser.add_argument("--fresh", action="store_true", help="simulate the worlds again")
    parser.add_argument(
        "--reuse", action="store_true", help="keep policies already replayed on the same world"
    )
    parser.add_argument(
        "--pool",
        type=Path,
        nargs="*",
        default=[],
        help="--out folders of earlier runs (other seeds) whose worlds to pool with this one",
    )
    args = parser.parse_args()
    os.environ.setdefault("CHURN_HOME", str(args.out / "home"))
    policies = check_policies(args.policy.split(","))
    calendar = backtest_calendar(date(2026, 1, 1), args.nights_before, args.nights_after, 30)
    sections = []
    for scenario in args.scenario.split(","):
        began = time.perf_counter()
        result = run_backtest(
            args.out.resolve(),
            scenario,
            subscribers=args.subscribers,
            seed=args.seed,
            calendar=calendar,
            policies=policies,
            fresh=args.fresh,
            reuse=args.reuse,
            progress=lambda line: print(f"  {line}", flush=True),
        )
        table = new_table(
            f"backtest {scenario}: {args.subscribers:,} subscribers, nights {calendar.nights[0]} "
            f".. {calendar.nights[-1]}, shift {calendar.shift} "
            f"({time.perf_counter() - began:.0f} s, world {result.world_seconds:.0f} s)",
            [str(c) for c in result.summary.columns],
            left=("policy", "refusals"),
        )
        for row in result.summary.itertuples(index=False):
            table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
        Console(width=220).print(table)
        verdicts = _targets(scenario, result) + _pooled(scenario, result, args.pool)
        for line in verdicts:
            print(f"  {line}")
        sections.append(
            f"### {scenario}\n\n{markdown_table(result.summary)}\n"
            + "".join(f"- {line}\n" for line in verdicts)
        )
    summary = args.out / "summary.md"
    summary.write_text(
        f"Backtest at {args.subscribers:,} subscribers, {args.nights_before} nights before the "
        f"shift and {args.nights_after} from it.\n\n" + "\n".join(sections)
    )
    print(f"tables: {summary}")


def _targets(scenario: str, result) -> list[str]:
    lines = []
    summary = result.summary
    by_policy = summary.set_index("policy")
    if scenario in ("price_shock", "support_decline", "usage_shift"):
        shift = result.calendar.shift
        share = recovered_share_interval(result.realized, DEFAULT_POLICY, shift)
        gains = by_policy["p@K gain vs none (95% CI)"]
        if share is not None:
            verdict = share.verdict(0.8)
            lines.append(
                f"{DEFAULT_POLICY} closes {share.text()} of the none→nightly gap in precision@K "
                f"over shift +45..+120 days (80 % target: {verdict}); gains over none, paired "
                f"by night with 95% intervals over weekly blocks: nightly {gains['nightly']}, "
                f"{DEFAULT_POLICY} {gains[DEFAULT_POLICY]}"
            )
        for other in ("weekly", "drift", "drift-matured"):
            other_share = recovered_share_interval(result.realized, other, shift)
            if other_share is not None:
                lines.append(f"{other} closes {other_share.text()} of that gap")
    if scenario == "baseline" and "nightly" in by_policy.index:
        best = by_policy.loc["nightly", "AUC after"]
        for policy, row in by_policy.iterrows():
            loss = best - row["AUC after"]
            lines.append(
                f"{policy}: {loss:+.3f} realized AUC behind nightly "
                f"({'within' if loss <= 0.01 else 'beyond'} the 0.01 target)"
            )
    for policy in ("drift", DEFAULT_POLICY):
        if policy in by_policy.index:
            lines.append(f"{policy}: {by_policy.loc[policy, 'slack messages']} Slack message(s)")
    return lines


def _pooled(scenario: str, result, pool: list[Path]) -> list[str]:
    """The default's share of the gap over this world and the pooled runs' worlds."""
    import pandas as pd

    if not pool or scenario == "baseline":
        return []
    frames = [result.realized.assign(world=0)]
    for index, folder in enumerate(pool, start=1):
        path = folder / f"realized_{scenario}.csv"
        if not path.exists():
            return [f"pooled: {path} is missing"]
        frames.append(pd.read_csv(path).assign(world=index))
    share = recovered_share_interval(pd.concat(frames), DEFAULT_POLICY, result.calendar.shift)
    if share is None:
        return ["pooled: a world lacks none, nightly or the default policy"]
    line = (
        f"pooled over {len(frames)} worlds: {DEFAULT_POLICY} closes {share.text()} of the "
        f"none→nightly gap (gap {share.gap:+.4f}; 80 % target: {share.verdict(0.8)})"
    )
    return [line]


if __name__ == "__main__":
    main()
