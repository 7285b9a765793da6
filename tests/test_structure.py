"""The architecture stays as README's Layout draws it: packages depend one way, no module
imports another's underscore names, no import cycle (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each package may import only the packages before it in this order.
LAYERS = ("edge_runtime", "trainer", "converters", "benchmarks", "ubp_edge")
PACKAGES = (*LAYERS, "models")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for the project's library modules (not tests or suites)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name.startswith("test_") or path.name == "conftest.py":
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names imported from it) for every import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [alias.name for alias in node.names]
            # `from package import module` imports the module, not a name of the package.
            submodules = [n for n in names if f"{node.module}.{n}" in MODULES]
            out += [(f"{node.module}.{n}", []) for n in submodules]
            out.append((node.module, [n for n in names if n not in submodules]))
    return out


def _project_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for module, _ in _imports(path):
            if module in MODULES and module != name:
                edges[name].add(module)
    return edges


def test_packages_depend_one_way():
    wrong = []
    for name, path in MODULES.items():
        package = name.split(".")[0]
        if package not in LAYERS:
            continue
        allowed = set(LAYERS[:LAYERS.index(package) + 1])
        for module, _ in _imports(path):
            top = module.split(".")[0]
            if top in PACKAGES and top not in allowed:
                wrong.append(f"{name} imports {module}")
    assert not wrong, wrong


def test_no_module_imports_another_modules_private_names():
    private = [f"{name} imports {module}.{n}" for name, path in MODULES.items()
               for module, names in _imports(path) if module in MODULES and module != name
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, private


def test_no_import_cycle():
    edges = _project_edges()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles


def test_the_checks_see_the_project():
    """Guard against a vacuous pass: the walk finds the modules and their imports."""
    edges = _project_edges()
    assert {"edge_runtime.scorer", "trainer.readers", "converters.tflite", "ubp_edge.cli",
            "benchmarks.suite"} <= set(MODULES)
    assert "edge_runtime.scorer" in edges["edge_runtime.live"] or \
        "edge_runtime.features" in edges["edge_runtime.live"]
    assert all(command in edges["ubp_edge.cli"] for command in
               ("ubp_edge.commands.train", "ubp_edge.commands.convert", "ubp_edge.console"))
