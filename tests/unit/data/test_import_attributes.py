"""Extra subscriber attributes from an export: typed table, upsert, declarations, contract."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core.errors import DataContractError, ImportMappingError
from tasks.core.layout import MANIFEST_NAME, table_path
from tasks.core.schema import AGE_BANDS, REGIONS, SUBSCRIBERS
from tasks.data.attributes import (
    ATTRIBUTES_TABLE,
    AttributeDeclaration,
    attribute_declarations,
    attributes_path,
    attributes_table_spec,
)
from tasks.data.contracts import check_table
from tasks.data.importer import import_file
from tests.unit.data.export_data import (
    ATTRIBUTES,
    CHURN_FLAG,
    SNAPSHOT,
    export_row,
    snapshot_files,
    write_export,
    write_mapping,
)


def _import(tmp_path: Path, rows: list[str], *extra: str, snapshot: date = SNAPSHOT) -> Path:
    """Import ``rows`` with the base mapping plus ``extra``; returns the source directory."""
    source = tmp_path / "source"
    export = write_export(tmp_path / f"export-{snapshot}.csv", *rows)
    mapping = write_mapping(tmp_path / f"mapping-{snapshot}.yaml", *extra, snapshot=snapshot)
    import_file(export, mapping, source)
    return source


def test_attributes_are_written_typed_and_sorted(tmp_path: Path) -> None:
    # value maps applied, numbers as float64, an empty cell of a nullable attribute is null
    rows = [
        export_row("3", internet="No", total=""),
        export_row("1", internet="DSL", total=" 350.5 "),
        export_row("2", internet="Fiber optic", total="0"),
    ]
    source = _import(tmp_path, rows, ATTRIBUTES)
    table = pq.read_table(attributes_path(source))
    declarations = attribute_declarations(source)
    assert list(declarations) == ["internet_service", "total_charges"]
    assert declarations["internet_service"] == AttributeDeclaration(
        "internet_service", "categorical", allowed=("dsl", "fiber_optic", "none")
    )
    assert declarations["total_charges"].arrow_type == pa.float64()
    spec = attributes_table_spec(declarations)
    assert (spec.name, spec.keys, spec.date_column) == (
        ATTRIBUTES_TABLE,
        ("subscriber_id", "observed_date"),
        "observed_date",
    )
    assert table.schema.equals(spec.arrow_schema)
    assert [f.type for f in table.schema] == [pa.int64(), pa.date32(), pa.string(), pa.float64()]
    assert table.to_pylist() == [
        {
            "subscriber_id": 1,
            "observed_date": SNAPSHOT,
            "internet_service": "dsl",
            "total_charges": 350.5,
        },
        {
            "subscriber_id": 2,
            "observed_date": SNAPSHOT,
            "internet_service": "fiber_optic",
            "total_charges": 0.0,
        },
        {
            "subscriber_id": 3,
            "observed_date": SNAPSHOT,
            "internet_service": "none",
            "total_charges": None,
        },
    ]
    assert check_table(spec, table).passed  # the stored table obeys its own spec
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    assert manifest["attributes"] == {
        "internet_service": {
            "type": "categorical",
            "allowed": ["dsl", "fiber_optic", "none"],
            "nullable": False,
        },
        "total_charges": {"type": "numeric", "min": 0.0, "max": 100000.0, "nullable": True},
    }
    assert manifest["tables"][ATTRIBUTES_TABLE] == {
        "rows": 3,
        "date_column": "observed_date",
        "first_date": "2026-01-31",
        "last_date": "2026-01-31",
        "source": "import",
    }


def test_reimport_replaces_and_a_later_snapshot_adds_rows(tmp_path: Path) -> None:
    # upsert by (subscriber_id, observed_date)
    _import(tmp_path, [export_row("1", total="100"), export_row("2")], ATTRIBUTES)
    _import(tmp_path, [export_row("1", total="120")], ATTRIBUTES)  # same day: replaces id 1
    later = SNAPSHOT + timedelta(days=30)
    source = _import(tmp_path, [export_row("1", total="150")], ATTRIBUTES, snapshot=later)
    table = pq.read_table(attributes_path(source))
    assert table.select(["subscriber_id", "observed_date", "total_charges"]).to_pylist() == [
        {"subscriber_id": 1, "observed_date": SNAPSHOT, "total_charges": 120.0},
        {"subscriber_id": 1, "observed_date": later, "total_charges": 150.0},
        {"subscriber_id": 2, "observed_date": SNAPSHOT, "total_charges": 350.0},
    ]


def test_declarations_are_the_union_across_imports(tmp_path: Path) -> None:
    # a dropped attribute is null in the new rows, a new one null in the old rows
    first = (
        "attributes:\n"
        "  internet_service: {column: InternetService, type: categorical, allowed: [none, dsl],\n"
        "                     values: {DSL: dsl, 'No': none}}\n"
        "  total_charges: {column: TotalCharges, type: numeric, min: 0, max: 1000}\n"
    )
    second = (  # total_charges dropped, partner new (declared first, stored last)
        "attributes:\n"
        "  partner: {column: Partner, type: categorical, allowed: ['Yes', 'No']}\n"
        "  internet_service: {column: InternetService, type: categorical,\n"
        "                     allowed: [fiber_optic, dsl], nullable: true,\n"
        "                     values: {DSL: dsl, Fiber optic: fiber_optic}}\n"
    )
    third = (
        "attributes:\n  total_charges: {column: TotalCharges, type: numeric, min: -5, max: 500}\n"
    )
    _import(tmp_path, [export_row("1", internet="No")], first)
    day2, day3 = SNAPSHOT + timedelta(days=1), SNAPSHOT + timedelta(days=2)
    _import(tmp_path, [export_row("1", internet="Fiber optic")], second, snapshot=day2)
    source = _import(tmp_path, [export_row("1", total="7")], third, snapshot=day3)

    table = pq.read_table(attributes_path(source))
    assert table.column_names == [
        "subscriber_id",
        "observed_date",
        "internet_service",
        "total_charges",
        "partner",
    ]
    assert table.drop_columns(["subscriber_id"]).to_pylist() == [
        {
            "observed_date": SNAPSHOT,
            "internet_service": "none",
            "total_charges": 350.0,
            "partner": None,
        },
        {
            "observed_date": day2,
            "internet_service": "fiber_optic",
            "total_charges": None,
            "partner": "Yes",
        },
        {"observed_date": day3, "internet_service": None, "total_charges": 7.0, "partner": None},
    ]
    declarations = attribute_declarations(source)
    assert list(declarations) == ["internet_service", "total_charges", "partner"]
    internet = declarations["internet_service"]
    assert internet.allowed == ("dsl", "fiber_optic", "none")  # the union, sorted
    assert internet.nullable  # the second import says so
    charges = declarations["total_charges"]
    assert (charges.min, charges.max) == (-5.0, 1000.0)  # the widest range
    assert charges.nullable and declarations["partner"].nullable  # the table holds nulls
    assert table.schema.equals(attributes_table_spec(declarations).arrow_schema)


def test_redeclared_type_is_refused(tmp_path: Path) -> None:
    _import(tmp_path, [export_row("1")], ATTRIBUTES)
    before = snapshot_files(tmp_path / "source")
    numeric = "attributes:\n  internet_service: {column: TotalCharges, type: numeric}\n"
    with pytest.raises(ImportMappingError) as err:
        _import(tmp_path, [export_row("1")], numeric, snapshot=SNAPSHOT + timedelta(days=1))
    message = str(err.value)
    assert "attributes.internet_service" in message
    assert "numeric here but categorical" in message
    assert snapshot_files(tmp_path / "source") == before


def _entry(body: str) -> str:
    return f"attributes:\n  {body}\n"


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        # a key the entry does not know
        pytest.param(
            _entry("extra: {column: Partner, type: categorical, allowed: [a], colour: red}"),
            "attributes.extra: unknown key(s) colour",
            id="unknown-key",
        ),
        # a type that is neither categorical nor numeric
        pytest.param(
            _entry("extra: {column: Partner, type: text}"),
            "attributes.extra: unknown type 'text'",
            id="type",
        ),
        # categorical without its allowed list
        pytest.param(
            _entry("extra: {column: Partner, type: categorical}"),
            "attributes.extra: a categorical attribute needs 'allowed'",
            id="no-allowed",
        ),
        # an empty allowed list
        pytest.param(
            _entry("extra: {column: Partner, type: categorical, allowed: []}"),
            "attributes.extra: a categorical attribute needs 'allowed'",
            id="empty-allowed",
        ),
        # bounds on a categorical
        pytest.param(
            _entry("extra: {column: Partner, type: categorical, allowed: [a], min: 0}"),
            "attributes.extra: min apply to numeric attributes only",
            id="min-on-categorical",
        ),
        # an allowed list on a numeric
        pytest.param(
            _entry("extra: {column: TotalCharges, type: numeric, allowed: [a]}"),
            "attributes.extra: 'allowed' applies to categorical attributes only",
            id="allowed-on-numeric",
        ),
        # an empty range
        pytest.param(
            _entry("extra: {column: TotalCharges, type: numeric, min: 10, max: 1}"),
            "attributes.extra: min 10 is above max 1",
            id="min-above-max",
        ),
        # a bound that is not a number
        pytest.param(
            _entry("extra: {column: TotalCharges, type: numeric, max: lots}"),
            "attributes.extra: 'max' must be a number",
            id="bound-type",
        ),
        # a name that is not lower_snake_case
        pytest.param(
            _entry("InternetService: {column: Partner, type: categorical, allowed: [a]}"),
            "attributes.InternetService: the name must be lower_snake_case",
            id="name",
        ),
        # a name of a subscribers column
        pytest.param(
            _entry("plan: {column: Partner, type: categorical, allowed: [a]}"),
            "attributes.plan: plan is a column of subscribers",
            id="subscribers-column",
        ),
        # a key of the feature view built on the table
        pytest.param(
            _entry("snapshot_date: {column: Partner, type: categorical, allowed: [a]}"),
            "attributes.snapshot_date: snapshot_date is a column of subscribers, of "
            "subscriber_attributes or of its feature view",
            id="view-key",
        ),
        # a name of a key of the attributes table
        pytest.param(
            _entry("observed_date: {column: Partner, type: categorical, allowed: [a]}"),
            "attributes.observed_date",
            id="key-column",
        ),
        # nullable that is not a boolean
        pytest.param(
            _entry("extra: {column: TotalCharges, type: numeric, nullable: maybe}"),
            "attributes.extra: 'nullable' must be true or false",
            id="nullable",
        ),
        # a file column the export does not have
        pytest.param(
            _entry("extra: {column: StreamingTV, type: categorical, allowed: [a]}"),
            "attributes.extra: column 'StreamingTV' is not in export.csv",
            id="file-column",
        ),
        # not a mapping of entries
        pytest.param("attributes: [internet_service]\n", "'attributes' must map", id="shape"),
    ],
)
def test_bad_attribute_entry_names_file_entry_and_problem(
    tmp_path: Path, extra: str, named: str
) -> None:
    mapping = write_mapping(tmp_path / "mapping.yaml", extra)
    export = write_export(tmp_path / "export.csv", export_row("1"))
    with pytest.raises(ImportMappingError, match=re.escape(named)) as err:
        import_file(export, mapping, tmp_path / "source")
    assert str(mapping) in str(err.value)
    assert not (tmp_path / "source").exists()


def test_attribute_contract_violations_are_counted_and_nothing_is_written(tmp_path: Path) -> None:
    # every attribute rule, plus a subscribers violation and a churn one, in one error
    source = _import(tmp_path, [export_row("1")], ATTRIBUTES, CHURN_FLAG)
    before = snapshot_files(source)
    rows = [
        export_row("1", internet="Cable"),  # not allowed
        export_row("2", internet="Satellite"),  # not allowed
        export_row("3", internet=""),  # null, not nullable
        export_row("4", total="-1"),  # below min
        export_row("5", total="200000"),  # above max
        export_row("6", total="lots"),  # not a number
        export_row("7", total="unknown"),  # not a number
        export_row("8", tenure="-2", churn="Yes"),  # subscribers: negative tenure
        export_row("9", churn="Yes"),  # a valid churned subscriber: nothing written either
    ]
    with pytest.raises(DataContractError) as err:
        _import(tmp_path, rows, ATTRIBUTES, CHURN_FLAG)
    found = [(v.table, v.column, v.rule, v.count) for v in err.value.violations]
    assert found == [
        ("subscribers", "signup_date", "min", 1),
        ("subscriber_attributes", "internet_service", "not_null", 1),
        ("subscriber_attributes", "internet_service", "allowed_values", 2),
        ("subscriber_attributes", "total_charges", "type", 2),
        ("subscriber_attributes", "total_charges", "min", 1),
        ("subscriber_attributes", "total_charges", "max", 1),
    ]
    message = str(err.value)
    assert "subscriber_attributes.internet_service: allowed_values failed for 2 rows" in message
    assert "e.g. 'Cable', 'Satellite'" in message
    assert "e.g. 'lots', 'unknown'" in message
    assert err.value.table == "subscribers, subscriber_attributes"
    assert snapshot_files(source) == before  # no table, no manifest changed


def test_region_and_age_band_may_be_unspecified(tmp_path: Path) -> None:
    # the export has no region and age band: constants/value maps say "unspecified"
    source = _import(tmp_path, [export_row("1"), export_row("2").replace(",0,", ",1,", 1)])
    table = pq.read_table(table_path(source, SUBSCRIBERS))
    assert table["region"].to_pylist() == ["unspecified", "unspecified"]
    assert table["age_band"].to_pylist() == ["unspecified", "65+"]
    # the simulator's draws are unchanged
    assert "unspecified" not in REGIONS and "unspecified" not in AGE_BANDS
    assert SUBSCRIBERS.column("region").allowed == (*REGIONS, "unspecified")
    assert SUBSCRIBERS.column("age_band").allowed == (*AGE_BANDS, "unspecified")
