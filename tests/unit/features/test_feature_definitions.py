"""Feature definitions (feature_repo/features.yaml): what they derive, and what apply refuses.

v1 and v2 are held to what feature_repo/*.py declared before the definitions existed
(tests/fixtures/feature_repo_v1_v2.json); each bad definition is refused by the real
`apply_feature_repo` on a copy of the repo, naming the file, the feature and the problem, with
the applied registry left byte for byte as it was.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast import FeatureService, FeatureView

from tasks.core.errors import FeatureDefinitionError
from tasks.core.schema import TableSpec
from tasks.core.settings import PROJECT_ROOT, Settings, get_settings, reset_settings
from tasks.features.definitions import feature_definitions, load_definitions, render_reason
from tasks.features.feast_offline import PARTITION_KEY
from tasks.features.frames import ViewRead, features_from
from tasks.features.sql_outputs import sql_problems
from tasks.features.store import apply_feature_repo
from tasks.scoring.reasons import reason_text

BEFORE = json.loads((PROJECT_ROOT / "tests/fixtures/feature_repo_v1_v2.json").read_text())
NEW_FEATURE = "dropped_call_rate_30d"


def repo_objects(repo: Path) -> tuple[dict[str, FeatureView], dict[str, FeatureService]]:
    """The views and services a repo declares, imported as `feast apply` imports them."""
    sys.path.insert(0, str(repo))
    try:
        values = []
        for module in ("entities", "data_sources", "features", "feature_services"):
            sys.modules.pop(module, None)
            values += list(vars(importlib.import_module(module)).values())
    finally:
        sys.path.remove(str(repo))
        for module in ("entities", "data_sources", "features", "feature_services"):
            sys.modules.pop(module, None)
    views = {v.name: v for v in values if isinstance(v, FeatureView)}
    services = {s.name: s for s in values if isinstance(s, FeatureService)}
    return views, services


# ----------------------------------------------------------------------------- derived


def test_v1_and_v2_derive_exactly_what_was_declared_before(churn_home: Settings) -> None:
    views, services = repo_objects(churn_home.feature_repo_dir)
    for name, before in BEFORE["views"].items():
        view = views[name]
        assert (view.description, view.tags, view.ttl.total_seconds(), view.batch_source.name) == (
            before["description"],
            before["tags"],
            before["ttl_s"],
            before["source"],
        )
        fields = [
            {"name": f.name, "dtype": str(f.dtype), "description": f.description, "tags": f.tags}
            for f in view.features
        ]
        # The view keeps every field as it was, in its place; a new one only comes after them.
        assert fields[: len(before["fields"])] == before["fields"], name
    assert {f.name for v in views.values() for f in v.features} - set(BEFORE["reasons"]) == {
        NEW_FEATURE
    }
    for name, before in BEFORE["services"].items():
        service = services[name]
        projections = [
            [p.name, [f.name for f in p.features]] for p in service.feature_view_projections
        ]
        assert (service.description, service.owner, service.tags, projections) == (
            before["description"],
            before["owner"],
            before["tags"],
            before["projections"],
        )
    for feature, said in BEFORE["reasons"].items():
        assert [[value, reason_text(feature, value)] for value, _ in said] == said


def test_v3_is_v2_plus_the_new_feature_and_v2_stays_the_default(churn_home: Settings) -> None:
    _, services = repo_objects(churn_home.feature_repo_dir)
    columns = {
        name: [f.name for p in s.feature_view_projections for f in p.features]
        for name, s in services.items()
    }
    assert set(columns) == {"churn_model_v1", "churn_model_v2", "churn_model_v3"}
    assert set(columns["churn_model_v3"]) - set(columns["churn_model_v2"]) == {NEW_FEATURE}
    assert set(columns["churn_model_v2"]) <= set(columns["churn_model_v3"])
    assert services["churn_model_v3"].tags == {"model": "telecom_churn_model", "version": "3"}
    assert churn_home.feature_service == "churn_model_v2"


def test_the_projects_definitions_agree_with_their_sql() -> None:
    assert sql_problems(feature_definitions()) == []


@pytest.mark.parametrize(
    ("template", "value", "said"),
    [
        (
            "{value:.1f} dropped calls per 100 call minutes in 30 days",
            1.25,
            "1.2 dropped calls per 100 call minutes in 30 days",
        ),
        ("{n} bill{s}", 1.0, "1 bill"),  # integer columns with nulls reach the model as floats
        ("{n} bill{s}", 3, "3 bills"),
        (
            "{hyphenated} contract; pays by {words}",
            "one_year",
            "one-year contract; pays by one year",
        ),
        ("{{braces}} stay {value}", "x", "{braces} stay x"),
    ],
)
def test_reason_placeholders(template: str, value: object, said: str) -> None:
    assert render_reason(template, value) == said


# ----------------------------------------------------------------------------- refused


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A data root whose registry holds the project's repo, applied for real."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHURN_HOME", str(tmp_path_factory.mktemp("applied") / "home"))
        reset_settings()
        settings = get_settings()
        apply_feature_repo(settings)
    reset_settings()
    yield settings


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


DEFINITIONS = "features.yaml"
USAGE_SQL = "sql/features/subscriber_usage_30d.sql"
NEW_BLOCK = """    - name: dropped_call_rate_30d
      type: Float32
      description: "Dropped calls per 100 call minutes over the last 30 days; null without a call minute."
      contract: {min: 0, nullable: true}
      reason: "{value:.1f} dropped calls per 100 call minutes in 30 days"
"""
V3 = "  churn_model_v3:"


def replaced(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert text.count(old) == 1, old
        return text.replace(old, new)

    return edit


def add_after_new_block(block: str) -> Callable[[str], str]:
    return replaced(NEW_BLOCK, NEW_BLOCK + block)


BAD = {
    # The three: a definition naming a column its SQL does not give ...
    "missing column": (
        add_after_new_block(
            "    - name: international_minutes_30d\n      type: Float32\n"
            '      description: "International call minutes in the last 30 days."\n'
            '      reason: "{value:.0f} international minutes in 30 days"\n'
        ),
        USAGE_SQL,
        "feature international_minutes_30d",
        "but not a column of this query",
    ),
    # ... a type that is not the SQL's output type ...
    "type mismatch": (
        replaced(
            f"name: {NEW_FEATURE}\n      type: Float32", f"name: {NEW_FEATURE}\n      type: Int32"
        ),
        USAGE_SQL,
        f"feature {NEW_FEATURE}",
        "but this query gives FLOAT (Float32): declare its type, or CAST it AS INTEGER",
    ),
    # ... and a reason with a placeholder nobody fills.
    "unknown placeholder": (
        replaced("{value:.1f} dropped calls per 100", "{rate:.1f} dropped calls per 100"),
        DEFINITIONS,
        f"feature {NEW_FEATURE}",
        "unknown placeholder(s) {rate}",
    ),
    # A format spec the feature's values cannot take is caught on apply, not in the night.
    "format spec of another type": (
        replaced('"on the {value} plan"', '"on the {value:.0%} plan"'),
        DEFINITIONS,
        "feature plan",
        "cannot say the String value 'basic'",
    ),
    # A column the SQL gives that nothing declares (the definition was forgotten).
    "undeclared column": (
        lambda text: replaced(NEW_BLOCK, "")(text.split(V3)[0]),
        USAGE_SQL,
        f"column {NEW_FEATURE}",
        "is not declared in",
    ),
    # A typo in a contract rule would silently drop the rule.
    "unknown contract rule": (
        replaced(
            'contract: {min: 0, nullable: true}\n      reason: "{value:.1f}',
            'contract: {min: 0, nulable: true}\n      reason: "{value:.1f}',
        ),
        DEFINITIONS,
        f"feature {NEW_FEATURE}",
        "unknown contract rule(s) nulable",
    ),
    # A service can only list declared features.
    "service input unknown": (
        replaced("      - dropped_call_rate_30d\n", "      - dropped_call_rate_30\n"),
        DEFINITIONS,
        "service churn_model_v3",
        "input dropped_call_rate_30 is not a feature declared under views",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_definition_is_refused_naming_file_feature_and_problem_and_nothing_is_written(
    applied: Settings, tmp_path: Path, case: str
) -> None:
    edit, file, subject, problem = BAD[case]
    repo = shutil.copytree(
        applied.feature_repo_dir,
        tmp_path / "feature_repo",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    definitions = repo / DEFINITIONS
    definitions.write_text(edit(definitions.read_text()))
    before = files_under(applied.home)

    with pytest.raises(FeatureDefinitionError) as refused:
        apply_feature_repo(applied, repo)

    where = str(definitions) if file == DEFINITIONS else file
    assert f"{where}: {subject}: " in str(refused.value)
    assert problem in str(refused.value)
    assert files_under(applied.home) == before  # the registry (and everything else) as it was


def test_a_good_copy_applies_and_v3_is_registered(applied: Settings, tmp_path: Path) -> None:
    # The refusals above are about the edits, not about applying from a copy.
    repo = shutil.copytree(
        applied.feature_repo_dir,
        tmp_path / "feature_repo",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    result = apply_feature_repo(applied, repo)
    assert result.feature_services == ["churn_model_v1", "churn_model_v2", "churn_model_v3"]


def test_definitions_list_every_problem_at_once_and_only_once(tmp_path: Path) -> None:
    text = (PROJECT_ROOT / "feature_repo" / DEFINITIONS).read_text()
    for old, new in [
        ('"on the {value} plan"', '"on the {plan} plan"'),
        (
            'type: Int32\n      description: "Days since signup."',
            'type: Integer\n      description: "Days since signup."',
        ),
        ("    version: 3\n", "    version: 2\n"),
    ]:
        text = replaced(old, new)(text)
    path = tmp_path / DEFINITIONS
    path.write_text(text)
    with pytest.raises(FeatureDefinitionError) as refused:
        load_definitions(path)
    # The services built on the refused features are left out without problems of their own.
    assert [(p.file, p.subject, p.problem.split(" (")[0]) for p in refused.value.problems] == [
        (
            str(path),
            "feature tenure_days",
            "type 'Integer' is not one of Int32, Int64, Float32, Float64, String, Bool",
        ),
        (
            str(path),
            "feature plan",
            "reason 'on the {plan} plan' has unknown placeholder(s) {plan}",
        ),
        (str(path), "service churn_model_v3", "version 2 is also churn_model_v2's"),
    ]


# ----------------------------------------------------------------------------- old partitions


def test_a_service_reads_a_table_whose_older_days_lack_a_newer_column(tmp_path: Path) -> None:
    # Days built before a feature was added lack its column; a service without it still reads
    # them, also when more days are in reach than the anti-join path takes (a sorted scan).
    first = date(2026, 3, 1)
    for offset in range(6):
        day = first + timedelta(days=offset)
        columns = {
            "subscriber_id": pa.array([1, 2], pa.int64()),
            "snapshot_ts": pa.array(
                [datetime.combine(day + timedelta(days=1), time.min, UTC)] * 2,
                pa.timestamp("us", tz="UTC"),
            ),
            "dropped_calls_30d": pa.array([offset, 10 + offset], pa.int32()),
        }
        if offset >= 3:
            columns[NEW_FEATURE] = pa.array([0.5, None], pa.float32())
        path = tmp_path / f"{PARTITION_KEY}={day.isoformat()}" / "part_0.parquet"
        path.parent.mkdir()
        pq.write_table(pa.table(columns), path)
    read = ViewRead(
        name="subscriber_usage_30d",
        directory=tmp_path,
        keys=("subscriber_id",),
        timestamp_field="snapshot_ts",
        columns=("dropped_calls_30d",),
        dtypes=("Int32",),
        ttl=timedelta(days=10),
        contract=TableSpec(name="subscriber_usage_30d", grain="", columns=()),
    )
    at = datetime.combine(first + timedelta(days=6), time.min, UTC)
    table = features_from([read], at, pa.table({"subscriber_id": pa.array([1, 2], pa.int64())}))
    assert table.column("dropped_calls_30d").to_pylist() == [5, 15]
