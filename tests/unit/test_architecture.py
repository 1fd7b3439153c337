"""The tree reads as the loop: one package per stage, small modules, no import cycles."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core.settings import PROJECT_ROOT

PACKAGES = ("tasks", "flows")
MAX_LINES = 700
STAGES = (
    "core",
    "data",
    "features",
    "training",
    "scoring",
    "audit",
    "monitoring",
    "alerting",
    "serving",
    "ops",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
    }


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every project module that ``name`` imports, anywhere in it (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the submodule; `from mod import name` the module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: set(imported_modules(name, path, modules)) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    graph = import_graph()
    assert graph["flows.cli"], "the graph found no imports: the parser is broken"
    assert import_cycles(graph) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        # A imports B, B imports A (e.g. a function-level import back): one cycle.
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        # A longer loop through a third module.
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        # A diamond is not a cycle.
        ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, []),
    ],
)
def test_import_cycles_finds_loops_and_only_loops(graph, expected) -> None:
    assert import_cycles(graph) == expected


def test_function_level_imports_count(tmp_path: Path) -> None:
    modules = {"tasks.x.a": tmp_path / "a.py", "tasks.x.b": tmp_path / "b.py", "tasks.x": tmp_path}
    (tmp_path / "a.py").write_text("def f():\n    from tasks.x import b\n    from .b import g\n")
    assert set(imported_modules("tasks.x.a", modules["tasks.x.a"], modules)) == {"tasks.x.b"}


def test_no_module_is_longer_than_the_limit() -> None:
    too_long = {
        name: lines
        for name, path in project_modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}, f"split these along their seams (limit {MAX_LINES} lines)"


def test_tasks_is_one_package_per_stage_each_saying_what_it_does() -> None:
    tasks_dir = PROJECT_ROOT / "tasks"
    packages = sorted(p.parent.name for p in tasks_dir.glob("*/__init__.py"))
    assert packages == sorted(STAGES)
    assert [p.name for p in tasks_dir.glob("*.py")] == ["__init__.py"], "modules live in a stage"
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((tasks_dir / stage / "__init__.py").read_text()))
        assert doc, f"tasks/{stage}/__init__.py: say what the stage takes in and produces"
