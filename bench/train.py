"""Benchmark the whole retrain job (frame → split → LightGBM → evaluation → gates → MLflow).

    python bench/train.py [--sizes 100000 1000000] [--days 210] [--workdir bench/out]

Reuses (or prepares) the worlds of bench/features.py, then runs ``tasks.training.retrain.retrain`` in a
fresh child process per size, against a fresh MLflow store, and prints the seconds of each stage,
the peak RSS of that process (its own VmHWM), the holdout ROC-AUC, the best achievable AUC and
the observable-oracle AUC (the target: truth without frailty and the protected age term), and
below the table the fairness gate's one-line decision per size (ratios and differences with
their intervals at the operating threshold), then the gate's decision on the same holdout for a
copy of the candidate that adds 0.5 logit of risk to every subscriber of one region (the
injected bias of ``tests/unit/training/test_fairness_at_scale.py``): it must be refused.
Target at 1M subscribers: ≤ 10 min and ≤ 8 GB on the 2-core machine.
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import timedelta
from pathlib import Path

from common import (
    ROOT,
    START,
    gib,
    new_table,
    peak_rss_bytes,
    prepare_world,
    report_to_parent,
    run_child,
    settings_for,
)
from rich.console import Console


def child(home: Path, as_of: str) -> None:
    from datetime import date

    settings = settings_for(
        home, CHURN_MLFLOW_TRACKING_URI=f"sqlite:///{home}/bench_mlflow/mlflow.db"
    )
    from tasks.core.telemetry import disable_telemetry
    from tasks.training import retrain as retrain_module

    disable_telemetry()
    # The job's first evaluation is the candidate's on its holdout: keep both, to judge a biased
    # copy of the candidate on the very same rows afterwards.
    seen: list = []
    evaluate = retrain_module.evaluate

    def evaluate_and_keep(settings, holdout, p):
        if not seen:
            seen.append((holdout, p))
        return evaluate(settings, holdout, p)

    retrain_module.evaluate = evaluate_and_keep
    began = time.perf_counter()
    result = retrain_module.retrain(settings, date.fromisoformat(as_of), "bench")
    total = time.perf_counter() - began
    retrain_module.evaluate = evaluate
    injected = _injected_bias(settings, *seen[0])
    report_to_parent(
        {
            "timings": result.timings,
            "total": total,
            "peak_rss": peak_rss_bytes(),
            "roc_auc": result.challenger.metrics["roc_auc"],
            "best_auc": result.best_auc,
            "observable_auc": result.observable_auc,
            "rows": int(result.challenger.metrics.get("rows", 0)),
            "verdict": result.decision.verdict,
            "fairness": result.decision.fairness.sentence(),
            "injected": injected,
        }
    )


PENALISED_REGION, PENALTY = "west", 0.5


def _injected_bias(settings, holdout, p) -> str:
    """The gates' verdict (no champion) on the candidate's holdout for a copy of the candidate
    that adds ``PENALTY`` logit of risk to every subscriber of ``PENALISED_REGION``."""
    import numpy as np

    from tasks.training.gates import decide
    from tasks.training.retrain import evaluate

    clipped = np.clip(p, 1e-9, 1 - 1e-9)
    logit = np.log(clipped / (1 - clipped))
    penalised = (holdout["region"] == PENALISED_REGION).to_numpy()
    biased = 1 / (1 + np.exp(-(logit + PENALTY * penalised)))
    candidate = evaluate(settings, holdout, biased)
    decision = decide(candidate.metrics, None, candidate.fairness, settings)
    failed = ", ".join(g.name for g in decision.failed) or "none"
    return (
        f"+{PENALTY} logit for region {PENALISED_REGION}: {decision.verdict} (failed gates: "
        f"{failed}); {decision.fairness.sentence()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--days", type=int, default=210)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--full-history-max", type=int, default=100_000)
    parser.add_argument("--child", type=Path)
    parser.add_argument("--as-of")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.as_of)
        return
    console = Console(width=150)
    as_of = START + timedelta(days=args.days - 1)
    stages = [
        "training frame",
        "split",
        "train",
        "evaluate + fairness",
        "champion + gates",
        "mlflow run",
        "register + promote",
    ]
    table = new_table(
        f"Retrain at {as_of} (stage seconds, one fresh process per size)",
        (
            "subscribers",
            *stages,
            "total s",
            "peak RSS",
            "holdout AUC",
            "best AUC",
            "observable AUC",
            "gap to observable",
            "verdict",
        ),
    )
    fairness_lines = []
    for size in args.sizes:
        home = args.workdir / f"world_{size}_{args.days}d"
        prepare_world(
            home, size, args.days, as_of, console, full_history=size <= args.full_history_max
        )
        shutil.rmtree(home / "bench_mlflow", ignore_errors=True)
        (home / "bench_mlflow").mkdir()
        with console.status(f"retrain at {size:,}"):
            r = run_child(
                __file__,
                *("--child", home, "--as-of", as_of.isoformat()),
                failure=f"retrain failed at {size:,} subscribers",
            )
        best = f"{r['best_auc']:.3f}" if r["best_auc"] is not None else "—"
        observable = r.get("observable_auc")
        target = f"{observable:.3f}" if observable is not None else "—"
        gap = f"{observable - r['roc_auc']:.3f}" if observable is not None else "—"
        table.add_row(
            f"{size:,}",
            *(f"{r['timings'].get(s, 0):.1f}" for s in stages),
            f"{r['total']:.1f}",
            f"{gib(r['peak_rss'])} GB",
            f"{r['roc_auc']:.3f}",
            best,
            target,
            gap,
            r["verdict"],
        )
        fairness_lines.append(f"fairness at {size:,}: {r['fairness']}")
        fairness_lines.append(f"injected bias at {size:,}: {r['injected']}")
    console.print(table)
    for line in fairness_lines:
        console.print(line, soft_wrap=True, markup=False)


if __name__ == "__main__":
    main()
