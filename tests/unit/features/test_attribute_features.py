"""Your own features: a definitions file that includes the project's, imported attributes as a
feature view, and a day on which a recorded wave of cancellations leaves.

Worlds are small and written here (the source tables, an attributes table as the importer writes
it); builds are the real ``build_feature_tables``.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.errors import DataContractError, FeatureDefinitionError
from tasks.core.layout import MANIFEST_NAME
from tasks.core.schema import Column, TableSpec
from tasks.core.settings import Settings, get_settings, reset_settings
from tasks.data.attributes import attributes_path
from tasks.features.definitions import (
    ATTRIBUTES_VIEW,
    DEFINITIONS_PATH,
    feature_definitions,
    load_definitions,
)
from tasks.features.feast_offline import partition_files
from tasks.features.shards import FEATURE_TABLES, feature_tables
from tasks.features.sql_outputs import sql_problems
from tasks.features.tables import build_feature_tables
from tests.unit.features.test_incremental import day, random_world, write_world

ATTRIBUTE_FEATURES = """\
include: {base}
views:
  subscriber_attributes:
    - name: internet_service
      type: String
      description: "Internet service taken."
      contract: {{allowed: [dsl, fiber_optic, none]}}
      reason: "has {{words}} internet"
    - name: total_charges
      type: Float64
      description: "Charges to date (USD); null for a subscriber not yet billed."
      contract: {{min: 0, nullable: true}}
      reason: "paid {{value:.0f}} to date"
{profile}services:
  attributes_v1:
    version: 101
    description: "v2 plus the imported internet service and charges to date."
    extends: churn_model_v2
    features: [internet_service, total_charges]
"""


EXTRA_PROFILE = """\
  subscriber_profile:
    - name: tenure_days_again
      type: Int32
      description: "Days since signup, again (a view of the included file gains a feature)."
      contract: {min: 0}
      reason: "joined {n} days ago"
"""


def attribute_definitions(tmp_path: Path, profile: str = "") -> Path:
    path = tmp_path / "my_features.yaml"
    path.write_text(ATTRIBUTE_FEATURES.format(base=DEFINITIONS_PATH, profile=profile))
    return path


@pytest.fixture
def with_definitions(churn_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings whose CHURN_FEATURE_DEFINITIONS is the attribute definitions."""
    path = attribute_definitions(tmp_path)
    monkeypatch.setenv("CHURN_FEATURE_DEFINITIONS", str(path))
    reset_settings()
    yield get_settings()
    reset_settings()


# ----------------------------------------------------------------------------- include


def test_an_including_file_adds_views_features_and_services_to_the_projects(
    tmp_path: Path,
) -> None:
    base = load_definitions(DEFINITIONS_PATH)
    mine = load_definitions(attribute_definitions(tmp_path, EXTRA_PROFILE))
    assert set(base.features) < set(mine.features)
    assert set(base.services) < set(mine.services)
    assert [f.name for f in mine.view_features(ATTRIBUTES_VIEW)] == [
        "internet_service",
        "total_charges",
    ]
    # The included view keeps its features first and gains the new one at its end.
    profile = [f.name for f in mine.view_features("subscriber_profile")]
    assert profile[: len(base.view_features("subscriber_profile"))] == [
        f.name for f in base.view_features("subscriber_profile")
    ]
    assert profile[-1] == "tenure_days_again"
    assert mine.services["attributes_v1"].features == (
        *base.services["churn_model_v2"].features,
        "internet_service",
        "total_charges",
    )


def test_a_service_named_like_an_included_one_is_refused(tmp_path: Path) -> None:
    path = attribute_definitions(tmp_path)
    path.write_text(path.read_text().replace("attributes_v1:", "churn_model_v2:"))
    with pytest.raises(FeatureDefinitionError) as caught:
        load_definitions(path)
    assert "service churn_model_v2" in str(caught.value)
    assert "already declared in feature_repo/features.yaml" in str(caught.value)


def test_a_circular_or_missing_include_is_refused_naming_the_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("include: b.yaml\nviews: {}\nservices: {}\n")
    b.write_text("include: a.yaml\nviews: {}\nservices: {}\n")
    with pytest.raises(FeatureDefinitionError, match="in a circle"):
        load_definitions(a)
    (tmp_path / "c.yaml").write_text("include: nowhere.yaml\nviews: {}\nservices: {}\n")
    with pytest.raises(FeatureDefinitionError, match="nowhere.yaml.*cannot be read"):
        load_definitions(tmp_path / "c.yaml")


def test_the_setting_chooses_the_definitions_and_the_tables_the_build_writes(
    with_definitions: Settings,
) -> None:
    assert ATTRIBUTES_VIEW in feature_definitions(with_definitions).views
    assert feature_tables(with_definitions) == (*FEATURE_TABLES, ATTRIBUTES_VIEW)


def test_without_attribute_features_the_build_writes_the_five_tables(churn_home: Settings) -> None:
    assert feature_tables(churn_home) == FEATURE_TABLES


# ----------------------------------------------------------------------------- the SQL check


def _declare(settings: Settings, declarations: dict) -> None:
    settings.source_dir.mkdir(parents=True, exist_ok=True)
    manifest = settings.source_dir / MANIFEST_NAME
    doc = json.loads(manifest.read_text()) if manifest.exists() else {}
    doc["attributes"] = declarations
    manifest.write_text(json.dumps(doc))


def test_attribute_features_are_checked_against_what_the_imports_declared(
    with_definitions: Settings,
) -> None:
    definitions = feature_definitions(with_definitions)
    # Before any import the declared features are taken at their word.
    assert sql_problems(definitions, source_dir=with_definitions.source_dir) == []
    _declare(
        with_definitions,
        {
            "internet_service": {"type": "numeric", "nullable": False},
            "partner": {"type": "categorical", "allowed": ["no", "yes"], "nullable": False},
        },
    )
    problems = sql_problems(definitions, source_dir=with_definitions.source_dir)
    said = {p.subject: p.problem for p in problems}
    assert set(said) == {"feature internet_service", "feature total_charges"}
    assert "DOUBLE" in said["feature internet_service"]  # numeric in the source, String here
    assert "not a column" in said["feature total_charges"]  # never imported
    # partner: imported, declared by no feature: no problem (the build keeps declared ones only)


# ----------------------------------------------------------------------------- the build


def _attributes_world(settings: Settings, seed: int = 3) -> dict[str, list[dict]]:
    rows = random_world(np.random.default_rng(seed))
    write_world(settings, rows)
    return rows


def _write_attributes(settings: Settings, rows: list[dict]) -> None:
    schema = pa.schema(
        [
            ("subscriber_id", pa.int64()),
            ("observed_date", pa.date32()),
            ("internet_service", pa.string()),
            ("total_charges", pa.float64()),
            ("partner", pa.string()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), attributes_path(settings.source_dir))


def _built(settings: Settings, snapshot: date) -> dict[int, dict]:
    files = partition_files(settings.features_dir / ATTRIBUTES_VIEW, snapshot, snapshot)
    table = pq.read_table(files)
    return {row["subscriber_id"]: row for row in table.to_pylist()}


def test_the_attribute_view_is_as_of_each_day_but_for_the_first_exports_eve(
    with_definitions: Settings,
) -> None:
    world = _attributes_world(with_definitions)
    days = [day(d) for d in range(95, 126)]

    def in_service(sid: int, d: date) -> bool:
        signup = next(s["signup_date"] for s in world["subscribers"] if s["subscriber_id"] == sid)
        gone = [c["cancel_date"] for c in world["cancellations"] if c["subscriber_id"] == sid]
        return signup <= d and not (gone and gone[0] <= d)

    always = [
        s["subscriber_id"]
        for s in world["subscribers"]
        if all(in_service(s["subscriber_id"], d) for d in days)
    ]
    assert len(always) >= 3, "the seeded world has subscribers in service throughout"
    a, b = always[:2]
    first, second = day(100), day(120)

    def seen(sid: int, on: date, internet: str, charges: float | None) -> dict:
        return {
            "subscriber_id": sid,
            "observed_date": on,
            "internet_service": internet,
            "total_charges": charges,
            "partner": "yes",
        }

    _write_attributes(
        with_definitions,
        [
            seen(a, first, "dsl", 10.0),
            seen(a, second, "fiber_optic", 20.0),
            seen(b, second, "none", None),
        ],
    )
    build_feature_tables(with_definitions, days[0], days[-1], specs={})

    def internet(sid: int, on: date) -> str | None:
        return _built(with_definitions, on)[sid]["internet_service"]

    on_110 = _built(with_definitions, day(110))
    assert set(on_110) == {
        s["subscriber_id"] for s in world["subscribers"] if in_service(s["subscriber_id"], day(110))
    }  # one row per subscriber in service, as every view
    assert list(on_110[a]) == [
        "subscriber_id",
        "snapshot_ts",
        "internet_service",
        "total_charges",
        "snapshot_date",
    ]  # the declared features only: partner was imported but is no feature
    assert internet(a, day(110)) == "dsl"  # last observed on or before the day
    assert internet(a, day(125)) == "fiber_optic"
    assert internet(a, day(99)) == "dsl"  # the eve of the source's first observation day
    assert internet(a, day(98)) is None  # earlier: nothing was observed yet
    assert internet(b, day(119)) is None  # first seen later: never before its own day
    assert internet(b, day(121)) == "none" and on_110[b]["total_charges"] is None
    assert all(internet(sid, day(110)) is None for sid in always[2:])  # never observed


@pytest.mark.parametrize(
    ("begun_by_the_export", "on_96"),
    [
        pytest.param(True, "dsl", id="a source the export began: back to its labelled day"),
        pytest.param(False, None, id="a daily feed covered those days: the eve only"),
    ],
)
def test_the_backfill_reaches_the_labelled_day_only_in_a_source_the_export_began(
    with_definitions: Settings, begun_by_the_export: bool, on_96: str | None
) -> None:
    # The export of day 100 labels day 95 (``labelled_from``); the cold start needs its
    # attributes there. Where a daily feed covered those days, a later value would leak.
    world = _attributes_world(with_definitions)
    a = next(
        s["subscriber_id"]
        for s in world["subscribers"]
        if s["signup_date"] <= day(95)
        and not any(
            c["subscriber_id"] == s["subscriber_id"] and c["cancel_date"] <= day(101)
            for c in world["cancellations"]
        )
    )
    _write_attributes(
        with_definitions,
        [
            {
                "subscriber_id": a,
                "observed_date": day(100),
                "internet_service": "dsl",
                "total_charges": 1.0,
                "partner": "no",
            }
        ],
    )
    manifest_path = with_definitions.source_dir / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["labelled_from"] = day(95).isoformat()
    if begun_by_the_export:
        manifest["start"] = day(95).isoformat()
    manifest_path.write_text(json.dumps(manifest))
    build_feature_tables(with_definitions, day(95), day(101), specs={})

    def internet(on: date) -> str | None:
        return _built(with_definitions, on)[a]["internet_service"]

    assert internet(day(96)) == on_96
    assert internet(day(95)) == on_96
    assert internet(day(99)) == "dsl"  # the eve, either way
    assert internet(day(101)) == "dsl"


def test_a_source_without_attributes_is_refused_when_the_definitions_use_them(
    with_definitions: Settings,
) -> None:
    _attributes_world(with_definitions)
    with pytest.raises(Exception, match="import them with `attributes:`"):
        build_feature_tables(with_definitions, day(95), day(96), specs={})


# ----------------------------------------------------------------------------- volume


def test_an_exports_wave_of_cancellations_is_not_a_broken_feed_and_any_other_is(
    churn_home: Settings, tmp_path: Path
) -> None:
    """An imported export records its churned subscribers as leaving on its day: half the base
    gone overnight is what the export says. The same wave on a day with no export is refused."""
    rows = random_world(np.random.default_rng(5))
    wave = day(100)
    ids = [
        s["subscriber_id"] for s in rows["subscribers"] if s["signup_date"] < wave - timedelta(2)
    ]
    rows["cancellations"] = [c for c in rows["cancellations"] if c["cancel_date"] < wave]
    gone = {c["subscriber_id"] for c in rows["cancellations"]}
    leaving = [sid for sid in ids if sid not in gone][: max(2, len(ids) // 2)]
    rows["cancellations"] += [
        {"subscriber_id": sid, "cancel_date": wave, "reason": "other"} for sid in leaving
    ]
    spec = {
        "subscriber_profile": TableSpec(
            "subscriber_profile",
            "test",
            (
                Column("subscriber_id", pa.int64()),
                Column("snapshot_ts", pa.timestamp("us", tz="UTC")),
            ),
            date_column="snapshot_ts",
        )
    }

    def world_with(settings: Settings, export_days: list[date]) -> None:
        write_world(settings, rows)
        manifest = settings.source_dir / MANIFEST_NAME
        doc = json.loads(manifest.read_text()) | {"export_days": [str(d) for d in export_days]}
        manifest.write_text(json.dumps(doc))

    world_with(churn_home, [wave])
    build_feature_tables(churn_home, wave - timedelta(1), wave, specs=spec)
    files = {
        d: partition_files(churn_home.features_dir / "subscriber_profile", d, d)
        for d in (wave - timedelta(1), wave)
    }
    before, after = (pq.read_table(f).num_rows for f in files.values())
    assert (before - after) / before > churn_home.volume_tolerance  # far beyond the tolerance

    other = churn_home.model_copy(update={"home": tmp_path / "no_export"})
    world_with(other, [])
    with pytest.raises(DataContractError, match="volume"):
        build_feature_tables(other, wave - timedelta(1), wave, specs=spec)
