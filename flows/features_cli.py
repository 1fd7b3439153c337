"""``churn simulate``, ``churn import`` and ``churn features …``: data in, features out.

Registered by :mod:`flows.cli`, under the contract stated there.
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import DateOption, parse_day, print_summary, progress_bar, use_prefect
from tasks.core.settings import get_settings

features_app = typer.Typer(
    help="Feature tables, the Feast store and point-in-time frames.", no_args_is_help=True
)


# ----------------------------------------------------------------------------- simulate / import


class Scenario(str, Enum):
    baseline = "baseline"
    price_shock = "price_shock"
    usage_shift = "usage_shift"
    support_decline = "support_decline"


def simulate(
    subscribers: Annotated[
        int, typer.Option(min=1, help="Subscribers in service on the first day.")
    ] = 20_000,
    days: Annotated[int, typer.Option(min=1, help="Days to simulate.")] = 240,
    start: DateOption = "2026-01-01",
    seed: Annotated[
        int, typer.Option(min=0, help="Random seed: same seed and arguments, same bytes.")
    ] = 7,
    scenario: Annotated[Scenario, typer.Option(help="Drift to inject.")] = Scenario.baseline,
    scenario_start: Annotated[
        str | None, typer.Option(help="First day of the scenario (YYYY-MM-DD).")
    ] = None,
) -> None:
    """Simulate a subscriber world and write its source tables under $CHURN_HOME/source."""
    from tasks.data.sim_population import WorldSpec
    from tasks.data.simulate import simulate_world

    settings = get_settings()
    try:
        spec = WorldSpec(
            subscribers=subscribers,
            days=days,
            start=parse_day(start, "--start"),
            seed=seed,
            scenario=scenario.value,
            scenario_start=(
                parse_day(scenario_start, "--scenario-start") if scenario_start else None
            ),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scenario-start") from None
    began = time.perf_counter()
    with progress_bar("simulating days", days) as advance:
        summary = simulate_world(
            spec,
            settings.source_dir,
            settings.truth_dir,
            chunk_days=settings.sim_chunk_days,
            progress=advance,
        )
    print_summary(
        f"Simulated world {summary.start} .. {summary.end} ({scenario})",
        [
            *((f"rows: {k}", v) for k, v in summary.rows.items()),
            ("subscribers ever", summary.subscribers_ever),
            ("churned", summary.churned),
            ("active at end", summary.active_at_end),
            ("source", summary.source_dir),
            ("truth", summary.truth_dir),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


def import_(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="CSV or Parquet file to import.")
    ],
    mapping: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="Mapping YAML (see README).")
    ],
) -> None:
    """Import your own subscriber data (CSV/Parquet) into the source schema; nothing is written unless it all passes."""
    from tasks.data.importer import import_file

    settings = get_settings()
    summary = import_file(
        path, mapping, settings.source_dir, label_horizon_days=settings.label_horizon_days
    )
    print_summary(
        f"Imported {path.name}",
        [
            ("table", summary.table),
            ("rows", summary.rows),
            *(
                [("had left (cancellations)", summary.churned)]
                if summary.churned is not None
                else []
            ),
            *(("wrote", str(p)) for p in summary.written),
        ],
    )


# ----------------------------------------------------------------------------- features


@features_app.command("apply")
def features_apply() -> None:
    """Register the Feast declarations in feature_repo/ (feast apply)."""
    from tasks.features.store import apply_feature_repo

    result = apply_feature_repo(get_settings())
    print_summary(
        "Feast registry applied",
        [
            ("entities", ", ".join(result.entities)),
            ("feature views", ", ".join(result.feature_views)),
            ("feature services", ", ".join(result.feature_services)),
            ("registry", result.registry),
        ],
    )


@features_app.command("build")
def features_build(
    start: Annotated[
        str | None, typer.Option(help="First snapshot day (default: first source day).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Last snapshot day (default: last source day).")
    ] = None,
    materialize: Annotated[
        bool, typer.Option(help="Also load the last day into the online store.")
    ] = True,
) -> None:
    """Run the build-features flow: source contracts, sql/features, feature contracts, feast apply, online store."""
    use_prefect()
    from flows.features import build_features_flow

    first = parse_day(start, "--start") if start else None
    last = parse_day(end, "--end") if end else None
    if first and last and first > last:
        raise typer.BadParameter(f"--start {first} is after --end {last}", param_hint="--start")
    began = time.perf_counter()
    summary = build_features_flow(
        start=parse_day(start, "--start") if start else None,
        end=parse_day(end, "--end") if end else None,
        materialize_online_store=materialize,
    )
    print_summary(
        f"Feature tables {summary.start} .. {summary.end}",
        [
            *((f"rows: {k}", v) for k, v in summary.rows.items()),
            ("written to", summary.features_dir),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


@features_app.command("materialize")
def features_materialize(
    date_: Annotated[str, typer.Option("--date", help="Snapshot day to load (YYYY-MM-DD).")],
) -> None:
    """Load the features as of DATE into the Feast online store (SQLite), in bounded batches."""
    from tasks.features.tables import materialize_online

    settings = get_settings()
    began = time.perf_counter()
    rows = materialize_online(settings, parse_day(date_, "--date"))
    print_summary(
        f"Online store as of {date_}",
        [
            *((f"rows: {k}", v) for k, v in rows.items()),
            ("batch size", settings.online_write_batch_size),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


@features_app.command("training-frame")
def features_training_frame(
    as_of: Annotated[
        str,
        typer.Option("--as-of", help="Training day (YYYY-MM-DD): labels must be mature by then."),
    ],
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
) -> None:
    """Build the point-in-time training frame at AS_OF through Feast and write it to OUT."""
    from tasks.features.frames import build_training_frame, write_frame

    settings = get_settings()
    began = time.perf_counter()
    as_of_day = parse_day(as_of, "--as-of")
    frame = build_training_frame(settings, as_of_day)
    write_frame(frame, out)
    first, last = settings.training_window(as_of_day)
    labels = frame.column("churned_30d").to_pylist()
    print_summary(
        f"Training frame at {as_of}",
        [
            ("rows", frame.num_rows),
            ("snapshot window", f"{first} .. {last}"),
            ("snapshots every", f"{settings.training_snapshot_every_days} days"),
            ("positive rate", f"{sum(labels) / max(len(labels), 1):.2%}"),
            ("feature service", settings.feature_service),
            ("written to", out),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


@features_app.command("scoring-frame")
def features_scoring_frame(
    date_: Annotated[str, typer.Option("--date", help="Scoring day (YYYY-MM-DD).")],
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
) -> None:
    """Build the features of every active subscriber as of DATE (bulk Polars path) and write them to OUT."""
    from tasks.features.frames import build_scoring_frame, write_frame

    began = time.perf_counter()
    frame = build_scoring_frame(get_settings(), parse_day(date_, "--date"))
    write_frame(frame, out)
    print_summary(
        f"Scoring frame for {date_}",
        [
            ("subscribers", frame.num_rows),
            ("columns", frame.num_columns),
            ("written to", out),
            ("seconds", f"{time.perf_counter() - began:.1f}"),
        ],
    )


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command("import")(import_)
    app.add_typer(features_app, name="features")
