"""The shape of the package, checked from its source: no import cycle between its modules,
and the test helpers (`runbook_exec.testing`) never imported by the product."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "runbook_exec"


def _imports() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, anywhere in it (a
    function-level import is a dependency too). A submodule's import of a package it lies
    in is left out: Python imports that package first anyway."""
    modules: dict[str, tuple[list[str], ast.Module]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[:-1]
        if parts[-1] == "__init__":
            parts = package = parts[:-1]
        modules[".".join(parts)] = (package, ast.parse(path.read_text(encoding="utf-8")))
    graph: dict[str, set[str]] = {}
    for name, (package, tree) in modules.items():
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, node.module] if node.module else base)
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {
            target
            for target in found
            if target in modules and target != name and not name.startswith(target + ".")
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = _imports()
    assert "runbook_exec.cli" in graph["runbook_exec.entry"]  # the scan sees lazy imports
    assert _cycles(graph) == []


def test_a_cycle_would_be_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_product_never_imports_the_test_helpers() -> None:
    graph = _imports()
    product = {name for name in graph if not name.startswith("runbook_exec.testing")}
    assert "runbook_exec.testing.lab" in graph
    assert {
        name: sorted(t for t in graph[name] if t.startswith("runbook_exec.testing"))
        for name in product
        if any(t.startswith("runbook_exec.testing") for t in graph[name])
    } == {}
