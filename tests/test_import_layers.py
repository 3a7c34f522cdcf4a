"""The packages of medcoss_monai import each other without a cycle, read from the source with ``ast``.

A package is the first name under ``medcoss_monai`` (``bundle``, ``evaluation``, ``handlers``...; a
top-level module such as ``utils`` is its own). Imports at module level and inside functions both
count: a lazy import hides a cycle from Python, not from the design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "medcoss_monai"
SOURCES = {PACKAGE: ROOT / PACKAGE, f"{PACKAGE}.transforms": ROOT / "transforms"}
"""Dotted prefix -> source folder (``transforms/`` installs as ``medcoss_monai.transforms``, see setup.cfg)."""


def _modules() -> Iterator[tuple[str, Path]]:
    for prefix, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            yield ".".join((prefix, *parts)), path


def _imported(module: str, path: Path) -> Iterator[str]:
    """Every module name ``module`` imports, anywhere in its body, relative imports made absolute."""
    package = module.split(".")[:-1]  # a module's package; for "<package>.__init__", the package itself
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            yield name
            yield from (f"{name}.{alias.name}" for alias in node.names)  # ``from pkg import module``


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 and parts[1] != "__init__" else None


def package_graph() -> dict[str, dict[str, set[str]]]:
    """Package -> imported package -> the modules that import it."""
    modules = dict(_modules())
    graph: dict[str, dict[str, set[str]]] = {layer: {} for layer in map(_layer, modules) if layer}
    for module, path in modules.items():
        source = _layer(module)
        for target in map(_layer, _imported(module, path)):
            # names that are not packages (``from medcoss_monai import MODALITIES``) are not edges
            if source and target in graph and target != source:
                graph[source].setdefault(target, set()).add(module)
    return graph


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One cycle of the graph as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    source = tmp_path / "probes.py"
    source.write_text(
        "import os\nfrom ..bundle import layout\nfrom . import text\n\n"
        "def probe():\n    from medcoss_monai.samples.tasks import load_task_datalist\n"
    )
    names = set(_imported("medcoss_monai.evaluation.probes", source))
    assert {"medcoss_monai.bundle.layout", "medcoss_monai.evaluation.text", "medcoss_monai.samples.tasks"} <= names
    assert {_layer(n) for n in names} == {None, "bundle", "evaluation", "samples"}


def test_the_graph_of_this_tree():
    graph = package_graph()
    assert {"bundle", "evaluation", "handlers", "networks", "data", "transforms", "utils", "layout"} <= set(graph)
    assert "medcoss_monai.evaluation.probes" in graph["evaluation"]["networks"]
    assert "medcoss_monai.bundle.stage" in graph["bundle"]["layout"]
    assert "MODALITIES" not in graph and "MODALITIES" not in graph["evaluation"]
    assert find_cycle({"a": {"b": set()}, "b": {"c": set()}, "c": {"a": set()}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": set()}, "b": {}}) is None


@pytest.mark.parametrize("package", ["bundle", "handlers", "data", "networks", "transforms"])
def test_lower_packages_do_not_import_evaluation(package):
    importers = package_graph().get(package, {}).get("evaluation", set())
    assert not importers, f"{sorted(importers)} import medcoss_monai.evaluation"


def test_no_import_cycle_between_packages():
    graph = package_graph()
    cycle = find_cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle between packages: " + "; ".join(edges))
