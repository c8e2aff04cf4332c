"""The packages import each other one way only: no cycle, and the command line is the top floor.

Every `import` and `from ... import` of the source tree counts, those inside functions too (a
lazy import is still a dependency).  The floors, bottom up:

    spec                                    what a model is
    impl_numpy, impl_torch, impl_jax        how each backend computes it (spec only)
    conformance, convert                    the suite and the ecosystem (spec, the golden)
    train                                   training (impl_torch, convert)
    export                                  ONNX (impl_torch, train's run directories, ...)
    cli                                     lmref/cli.py and lmref/commands/: imports the others, nothing imports it

`lmref/__init__.py` holds only the version; any package may read it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("spec", "impl_numpy", "impl_torch", "impl_jax", "conformance", "convert", "train", "export")
VERSION, CLI = "version", "cli"


def package_of(path: Path) -> str:
    """The floor a source file belongs to."""
    top = path.relative_to(ROOT).parts[0]
    if top == "lmref":
        return VERSION if path.name == "__init__.py" and path.parent.name == "lmref" else CLI
    return top


def imported_package(module: str) -> str | None:
    """`lmref.spec.config` -> spec; `lmref.cli` / `lmref.commands.x` -> cli; `lmref` and
    `lmref.__version__` -> version."""
    parts = module.split(".")
    if parts[0] != "lmref":
        return None
    if len(parts) == 1 or parts[1] == "__version__":
        return VERSION
    return parts[1] if parts[1] in PACKAGES else CLI


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {p for p in map(imported_package, names) if p is not None}
    return found


def package_graph() -> dict[str, set[str]]:
    """package -> the other packages it imports."""
    graph: dict[str, set[str]] = {p: set() for p in (*PACKAGES, VERSION, CLI)}
    for top in (*PACKAGES, "lmref"):
        for path in (ROOT / top).rglob("*.py"):
            package = package_of(path)
            graph[package] |= imports_of(path) - {package}
    return graph


GRAPH = package_graph()


def test_there_is_no_import_cycle_between_packages():
    order, done, visiting = [], set(), []

    def visit(package: str) -> None:
        if package in visiting:
            cycle = visiting[visiting.index(package):] + [package]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if package in done:
            return
        visiting.append(package)
        for dependency in sorted(GRAPH[package]):
            visit(dependency)
        visiting.pop()
        done.add(package)
        order.append(package)

    for package in GRAPH:
        visit(package)
    assert order[0] in (VERSION, "spec")


def test_nothing_imports_the_command_line():
    importers = sorted(p for p, deps in GRAPH.items() if CLI in deps and p != CLI)
    assert importers == [], f"{importers} import lmref.cli / lmref.commands: the CLI must stay the top floor"


def test_spec_and_the_backends_stand_on_spec_alone():
    assert GRAPH["spec"] <= {VERSION}
    for backend in ("impl_numpy", "impl_torch", "impl_jax"):
        assert GRAPH[backend] <= {"spec", VERSION}, f"{backend} imports {GRAPH[backend] - {'spec', VERSION}}"


def test_train_and_export_depend_one_way():
    assert "export" not in GRAPH["train"], "train must not import export (export reads train's run directories)"


def test_the_graph_sees_real_imports():
    """The reader is not vacuous: known edges are found."""
    assert "spec" in GRAPH["impl_numpy"] and "impl_torch" in GRAPH["export"] and "spec" in GRAPH[CLI]
