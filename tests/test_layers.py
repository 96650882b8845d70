"""The house's layer rule (docs/architecture.md, "Layers"), read from the package's own imports.

Every ``import`` / ``from ... import`` of every module counts, at module level or inside a function: a circle through
a function-level import is still a circle to a reader.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "planlm"
LIBRARIES = ("planlm.models", "planlm.data", "planlm.train", "planlm.eval")
TOP = ("planlm.stages", "planlm.studies", "planlm.cli", "planlm.integrations")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path, modules: dict[str, Path]) -> set[str]:
    """The planlm modules ``path`` imports (``from planlm.x import y`` counts as planlm.x.y when y is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] == "planlm" and n in modules}
    return out


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}  # package __init__s
        graph[name] = imported(path, modules) - {name} - parents
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_circle_finder_finds_circles():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_libraries_never_import_stages_or_studies():
    bad = [f"{m} imports {t}" for m, targets in import_graph().items() if m.startswith(LIBRARIES)
           for t in sorted(targets) if t.startswith(TOP)]
    assert not bad, "; ".join(bad)


def test_models_import_torch_transformers_and_errors_only():
    allowed_planlm = {"planlm.errors"} | {m for m in package_modules() if m.startswith("planlm.models")}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = []
    for name, path in package_modules().items():
        if not name.startswith("planlm.models"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [(a.name, a.name.split(".")[0]) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [(node.module, node.module.split(".")[0])]
            else:
                continue
            for full, root in roots:
                if root == "planlm":
                    if not any(full == a or full.startswith(a + ".") for a in allowed_planlm):
                        bad.append(f"{name} imports {full}")
                elif root not in stdlib and root not in ("torch", "transformers"):
                    bad.append(f"{name} imports {full}")
    assert not bad, "; ".join(bad)


def test_cli_lists_commands_only():
    """cli.py defines no stage: every command is a function of planlm.stages / planlm.studies."""
    from planlm.cli import COMMANDS

    def leaves(node):
        return [f for v in node.values() for f in (leaves(v) if isinstance(v, dict) else [v])]

    homes = {fn.__module__ for fn in leaves(COMMANDS)}
    assert homes and all(h.startswith(("planlm.stages.", "planlm.studies.")) for h in homes), homes


@pytest.mark.parametrize("module", ["planlm.stages.evaluate", "planlm.variants"])
def test_evaluation_imports_no_training_loop(module):
    code = (f"import sys, {module}; "
            "bad = [m for m in sys.modules if m in ('planlm.train.loop', 'planlm.train.trainer', "
            "'planlm.train.resumable') or m == 'lightning' or m.startswith('lightning.')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]", out.stdout


def test_integrations_import_no_stages():
    """planlm/integrations/ (lm-eval's model) reads runs through the libraries and persist, never through a stage."""
    bad = [f"{m} imports {t}" for m, targets in import_graph().items() if m.startswith("planlm.integrations")
           for t in sorted(targets) if t.startswith(("planlm.stages", "planlm.studies", "planlm.cli"))]
    assert not bad, "; ".join(bad)
