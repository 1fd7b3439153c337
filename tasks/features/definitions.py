"""Feature definitions: ``feature_repo/features.yaml`` read, checked, and turned into what uses it.

One declaration per feature (its view, type, description, contract and reason template) and one
per feature service. From them come the Feast fields of each view (``feature_repo/features.py``;
the contract rides in each field's tags, where :func:`tasks.features.tables.feature_table_spec`
reads it back), the services' projections (``feature_repo/feature_services.py``) and the reason
codes' plain words (:func:`render_reason`, used by ``tasks/scoring/reasons.py``). The SQL of a view
is checked against them by :mod:`tasks.features.sql_outputs` when the repo is applied.

A file with problems is refused whole: :class:`~tasks.core.errors.FeatureDefinitionError` lists
every problem with its file and the feature, view or service it is about.
"""

from __future__ import annotations

import numbers
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from feast import Field
from feast.types import Bool, Float32, Float64, Int32, Int64, PrimitiveFeastType, String

from tasks.core.errors import DefinitionProblem, FeatureDefinitionError
from tasks.core.settings import PROJECT_ROOT, Settings, get_settings

DEFINITIONS_FILE = "features.yaml"
ATTRIBUTES_VIEW = "subscriber_attributes"
"""The optional view over the attributes an import declared (source table of the same name)."""
DEFINITIONS_PATH = PROJECT_ROOT / "feature_repo" / DEFINITIONS_FILE
"""The project's feature definitions."""

FEAST_TYPES: dict[str, PrimitiveFeastType] = {
    "Int32": Int32,
    "Int64": Int64,
    "Float32": Float32,
    "Float64": Float64,
    "String": String,
    "Bool": Bool,
}
FEAST_TO_ARROW = {
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "String": pa.string(),
    "Bool": pa.bool_(),
}
"""Arrow type of each Feast field type the feature views use."""
NUMERIC = ("Int32", "Int64", "Float32", "Float64")

PLACEHOLDERS = ("value", "n", "s", "words", "hyphenated")
"""What a reason template may say: the value (a format spec may follow), the value as a whole
number and the plural ``s`` that goes with it, the value with ``_`` as spaces or as hyphens."""
NUMBER_PLACEHOLDERS = ("n", "s")

FEATURE_KEYS = {"name", "type", "description", "contract", "reason"}
CONTRACT_KEYS = {"min", "max", "allowed", "nullable"}
SERVICE_KEYS = {"version", "description", "extends", "features"}
NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Contract:
    """The data-contract rules of one feature column (absent: no such rule)."""

    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    nullable: bool = False

    def tags(self) -> dict[str, str]:
        """The Feast field tags that carry the rules (``feature_table_spec`` reads them back)."""
        tags = {}
        if self.min is not None:
            tags["min"] = _number_tag(self.min)
        if self.max is not None:
            tags["max"] = _number_tag(self.max)
        if self.allowed is not None:
            tags["allowed"] = ",".join(self.allowed)
        if self.nullable:
            tags["nullable"] = "true"
        return tags


@dataclass(frozen=True)
class FeatureDefinition:
    """One model input: the column of ``sql/features/<view>.sql`` it is, and what it means."""

    name: str
    view: str
    type: str
    description: str
    contract: Contract
    reason: str

    def field(self) -> Field:
        """The Feast field of this feature."""
        return Field(
            name=self.name,
            dtype=FEAST_TYPES[self.type],
            description=self.description,
            tags=self.contract.tags(),
        )


@dataclass(frozen=True)
class ServiceDefinition:
    """A versioned list of model inputs: those of the service it extends plus its own."""

    name: str
    version: int
    description: str
    extends: str | None
    adds: tuple[str, ...]
    features: tuple[str, ...]
    """Every input, the extended service's first."""


@dataclass(frozen=True)
class Definitions:
    """Every feature (in view order, then declaration order) and every service of one file."""

    path: Path
    features: dict[str, FeatureDefinition]
    services: dict[str, ServiceDefinition]

    @property
    def views(self) -> list[str]:
        """View names in declaration order."""
        return list(dict.fromkeys(f.view for f in self.features.values()))

    def view_features(self, view: str) -> list[FeatureDefinition]:
        return [f for f in self.features.values() if f.view == view]

    def fields(self, view: str) -> list[Field]:
        """The schema of a Feast view.

        Raises:
            FeatureDefinitionError: the file declares no feature of that view.
        """
        features = self.view_features(view)
        if not features:
            raise FeatureDefinitionError(
                [
                    DefinitionProblem(
                        display(self.path),
                        f"view {view}",
                        "has a FeatureView in feature_repo but no features here",
                    )
                ]
            )
        return [f.field() for f in features]

    def projections(self, service: str) -> list[tuple[str, list[str]]]:
        """A service's inputs grouped by view, views and features in declaration order.

        So a service reads as the views do, and a view that gains a feature changes no
        existing service: each projection names its features.
        """
        wanted = set(self.services[service].features)
        groups = [
            (view, [f.name for f in self.view_features(view) if f.name in wanted])
            for view in self.views
        ]
        return [(view, names) for view, names in groups if names]


def check_feast_views(definitions: Definitions, views: Iterable[str]) -> None:
    """Every view with definitions must be a Feast view of the repo (the reverse holds by
    construction: a view's schema comes from :meth:`Definitions.fields`).

    Raises:
        FeatureDefinitionError: naming each view that has no FeatureView.
    """
    problems = [
        DefinitionProblem(
            display(definitions.path),
            f"view {view}",
            "has features but no FeatureView in feature_repo/features.py",
        )
        for view in definitions.views
        if view not in set(views)
    ]
    if problems:
        raise FeatureDefinitionError(problems)


def display(path: Path) -> str:
    """``path`` relative to the project when it lies inside it (how people name the file)."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def definitions_path(settings: Settings | None = None) -> Path:
    """The definitions in use: ``CHURN_FEATURE_DEFINITIONS``, else ``feature_repo/features.yaml``."""
    chosen = (settings or get_settings()).feature_definitions
    return chosen if chosen is not None else DEFINITIONS_PATH


def feature_definitions(settings: Settings | None = None) -> Definitions:
    """The definitions in use (:func:`definitions_path`), each file read once per process."""
    return _definitions_at(definitions_path(settings))


@cache
def _definitions_at(path: Path) -> Definitions:
    return load_definitions(path)


def load_definitions(path: Path) -> Definitions:
    """Read and check a definitions file (its own consistency; the SQL is checked on apply).

    Raises:
        FeatureDefinitionError: every problem found, each naming the file and the feature,
            view or service.
    """
    file = display(path)
    raw = _read(path, ())
    problems: list[DefinitionProblem] = []
    features, declared = _features(raw["views"], file, problems)
    services = _services(raw["services"], features, declared, file, problems)
    if problems:
        raise FeatureDefinitionError(problems)
    return Definitions(path, features, services)


def _read(path: Path, including: tuple[Path, ...]) -> dict[str, Any]:
    """The file's ``views`` and ``services``, after those of the file it includes.

    ``include: OTHER.yaml`` (relative to the including file) starts from another definitions
    file, so your own features and services live in a file of your own while the project's stay
    where they are: a view of the included file gains the features listed under it, a new view
    is added, and a service must have a name of its own.
    """
    file = display(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FeatureDefinitionError(
            [DefinitionProblem(file, "file", f"cannot be read: {exc}")]
        ) from None
    if not isinstance(raw, dict) or not {"views", "services"} <= set(raw) <= {
        "include",
        "views",
        "services",
    }:
        raise FeatureDefinitionError(
            [
                DefinitionProblem(
                    file, "file", "must have `views:` and `services:` (and may `include:`)"
                )
            ]
        )
    if raw.get("include") is None:
        return raw
    target = (path.parent / str(raw["include"])).resolve()
    if target in including or target == path.resolve():
        raise FeatureDefinitionError(
            [DefinitionProblem(file, "include", f"includes {display(target)} in a circle")]
        )
    base = _read(target, (*including, path.resolve()))
    views, services = raw["views"], raw["services"]
    if not isinstance(views, dict) or not isinstance(services, dict):
        return raw  # _features / _services say what is wrong with them
    clashes = sorted(set(services) & set(base["services"]))
    if clashes:
        raise FeatureDefinitionError(
            [
                DefinitionProblem(
                    file, f"service {name}", f"is already declared in {display(target)}"
                )
                for name in clashes
            ]
        )
    merged = {view: list(entries) for view, entries in base["views"].items()}
    for view, entries in views.items():
        extra = entries if isinstance(entries, list) else [entries]
        merged[view] = merged.get(view, []) + extra
    return {"views": merged, "services": {**base["services"], **services}}


def _features(
    views: Any, file: str, problems: list[DefinitionProblem]
) -> tuple[dict[str, FeatureDefinition], set[str]]:
    """The features that pass their checks, and the names of all declared (refused ones too)."""
    if not isinstance(views, dict) or not views:
        problems.append(DefinitionProblem(file, "views", "must map each view to its features"))
        return {}, set()
    features: dict[str, FeatureDefinition] = {}
    declared: set[str] = set()
    for view, entries in views.items():
        if not isinstance(entries, list) or not entries:
            problems.append(DefinitionProblem(file, f"view {view}", "must list its features"))
            continue
        for entry in entries:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                declared.add(entry["name"])
            definition = _feature(view, entry, file, problems)
            if definition is None:
                continue
            if definition.name in features:
                problems.append(
                    DefinitionProblem(
                        file,
                        f"feature {definition.name}",
                        f"declared twice (views {features[definition.name].view} and {view})",
                    )
                )
                continue
            features[definition.name] = definition
    return features, declared


def _feature(
    view: str, entry: Any, file: str, problems: list[DefinitionProblem]
) -> FeatureDefinition | None:
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not NAME.fullmatch(name):
        problems.append(
            DefinitionProblem(
                file, f"view {view}", f"a feature without a lower_snake_case name: {entry!r}"
            )
        )
        return None
    subject = f"feature {name}"
    found: list[str] = []

    def fail(problem: str) -> None:
        found.append(problem)
        problems.append(DefinitionProblem(file, subject, problem))

    unknown = sorted(set(entry) - FEATURE_KEYS)
    missing = sorted({"type", "description", "reason"} - set(entry))
    if unknown:
        fail(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(FEATURE_KEYS))})")
    if missing:
        fail(f"missing {', '.join(missing)}")
    kind = entry.get("type")
    if kind is not None and kind not in FEAST_TYPES:
        fail(f"type {kind!r} is not one of {', '.join(FEAST_TYPES)}")
    description = entry.get("description")
    if description is not None and (not isinstance(description, str) or not description.strip()):
        fail("description must be a sentence")
    if found:
        return None
    contract = _contract(entry.get("contract") or {}, kind, fail)
    reason = entry["reason"]
    for problem in reason_problems(reason, kind, contract):
        fail(problem)
    if found or contract is None:
        return None
    return FeatureDefinition(name, view, kind, description.strip(), contract, reason)


def _contract(raw: Any, kind: str, fail: Callable[[str], None]) -> Contract | None:
    if not isinstance(raw, dict):
        fail(f"contract must be a mapping of {', '.join(sorted(CONTRACT_KEYS))}")
        return None
    unknown = sorted(set(raw) - CONTRACT_KEYS)
    if unknown:
        fail(
            f"unknown contract rule(s) {', '.join(unknown)} (known: {', '.join(sorted(CONTRACT_KEYS))})"
        )
        return None
    bounds = {k: raw[k] for k in ("min", "max") if k in raw}
    for key, value in bounds.items():
        if kind not in NUMERIC:
            fail(f"contract {key} needs a numeric type, not {kind}")
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail(f"contract {key} must be a number, not {value!r}")
            return None
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        fail(f"contract min {bounds['min']} is above max {bounds['max']}")
        return None
    allowed = raw.get("allowed")
    if allowed is not None:
        if kind != "String":
            fail(f"contract allowed needs type String, not {kind}")
            return None
        if (
            not isinstance(allowed, list)
            or not allowed
            or not all(isinstance(a, str) and "," not in a for a in allowed)
        ):
            fail("contract allowed must be a list of strings without commas")
            return None
    nullable = raw.get("nullable", False)
    if not isinstance(nullable, bool):
        fail(f"contract nullable must be true or false, not {nullable!r}")
        return None
    return Contract(
        min=bounds.get("min"),
        max=bounds.get("max"),
        allowed=tuple(allowed) if allowed is not None else None,
        nullable=nullable,
    )


def reason_problems(template: Any, kind: str, contract: Contract | None) -> list[str]:
    """What is wrong with a reason template for a feature of type ``kind`` (nothing: ``[]``).

    Beyond the placeholder names, the template is said once with a value of the feature's type,
    so a format spec that cannot take it (``{value:.0%}`` of a String) is caught here, not at night.
    """
    if not isinstance(template, str) or not template.strip():
        return ["reason must be a sentence (a format string)"]
    try:
        names = {
            field for _, field, _, _ in string.Formatter().parse(template) if field is not None
        }
    except ValueError as exc:
        return [f"reason {template!r} is not a format string: {exc}"]
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        return [
            f"reason {template!r} has unknown placeholder(s) "
            + ", ".join(f"{{{u}}}" for u in unknown)
            + f" (known: {', '.join(f'{{{p}}}' for p in PLACEHOLDERS)})"
        ]
    if kind not in NUMERIC and names & set(NUMBER_PLACEHOLDERS):
        return [f"reason {template!r}: {{n}} and {{s}} need a numeric type, not {kind}"]
    for value in _sample_values(kind, contract):
        try:
            render_reason(template, value)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            return [f"reason {template!r} cannot say the {kind} value {value!r}: {exc}"]
    return []


def _sample_values(kind: str, contract: Contract | None) -> list[Any]:
    if kind == "String":
        return [contract.allowed[0] if contract and contract.allowed else "some_value"]
    if kind == "Bool":
        return [True]
    # Integer columns reach the model as floats when they hold nulls: both must be said.
    return [1, 1.0] if kind in ("Int32", "Int64") else [1.5]


def render_reason(template: str, value: Any) -> str:
    """A reason template said with ``value`` (not missing: the caller says "no ... on record")."""
    fields: dict[str, Any] = {
        "value": value,
        "words": str(value).replace("_", " "),
        "hyphenated": str(value).replace("_", "-"),
    }
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        n = int(value)
        fields |= {"n": n, "s": "" if n == 1 else "s"}
    return template.format(**fields)


def _services(
    raw: Any,
    features: dict[str, FeatureDefinition],
    declared: set[str],
    file: str,
    problems: list[DefinitionProblem],
) -> dict[str, ServiceDefinition]:
    """The services, each checked; one built on a refused feature or service is left out without
    a problem of its own (the refused one already says what is wrong)."""
    if not isinstance(raw, dict) or not raw:
        problems.append(DefinitionProblem(file, "services", "must map each service to its inputs"))
        return {}
    services: dict[str, ServiceDefinition] = {}
    for name, entry in raw.items():
        found, service = _service(name, entry, features, declared, services, raw)
        problems.extend(DefinitionProblem(file, f"service {name}", p) for p in found)
        if service is not None:
            services[name] = service
    return services


def _service(
    name: str,
    entry: Any,
    features: dict[str, FeatureDefinition],
    declared: set[str],
    services: dict[str, ServiceDefinition],
    raw: dict[str, Any],
) -> tuple[list[str], ServiceDefinition | None]:
    if not isinstance(entry, dict):
        return ["must be a mapping"], None
    found = []
    above = list(raw)[: list(raw).index(name)]
    unknown = sorted(set(entry) - SERVICE_KEYS)
    if unknown:
        found.append(
            f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(SERVICE_KEYS))})"
        )
    version, description = entry.get("version"), entry.get("description")
    if isinstance(version, bool) or not isinstance(version, int):
        found.append(f"version must be a whole number, not {version!r}")
    else:
        found += [
            f"version {version} is also {other}'s"
            for other in above
            if isinstance(raw[other], dict) and raw[other].get("version") == version
        ]
    if not isinstance(description, str) or not description.strip():
        found.append("description must be a sentence")
    extends = entry.get("extends")
    if extends is not None and (not isinstance(extends, str) or extends not in above):
        found.append(f"extends {extends!r}, which is not a service declared above it")
    adds = entry.get("features")
    if not isinstance(adds, list) or not adds or not all(isinstance(a, str) for a in adds):
        found.append("features must list the feature names it adds")
        adds = []
    known = isinstance(extends, str) and extends in services
    base = services[extends].features if known else ()
    for feature in dict.fromkeys(adds):
        if feature not in declared:
            found.append(f"input {feature} is not a feature declared under views")
        elif feature in base or adds.count(feature) > 1:
            found.append(f"input {feature} is listed twice")
    broken = (extends is not None and not known) or not set(adds) <= set(features)
    if found or broken:
        return found, None
    definition = ServiceDefinition(
        name, version, description.strip(), extends, tuple(adds), (*base, *adds)
    )
    return found, definition


def _number_tag(value: float) -> str:
    """A contract bound as a tag: ``0``, ``-500``, ``0.5`` (whole numbers without a point)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
