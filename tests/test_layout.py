"""The code's shape: util's import graph is a ladder (no cycle), modules and functions stay short, each module
says on its first line what it holds (no server needed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = [ROOT / name for name in ("polyglot-python-processor", "polyglot-python-app", "polyglot-python-task")]
MODULES = sorted({path for recipe in RECIPES for path in (recipe / "util").glob("*.py")})
LONGEST_MODULE, LONGEST_FUNCTION = 420, 60


def _imports(path: Path) -> set[str]:
    """The sibling util modules ``path`` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return found


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_util_imports_form_a_ladder(recipe: Path) -> None:
    graph = {path.stem: _imports(path) for path in (recipe / "util").glob("*.py") if path.stem != "__init__"}
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import cycle: {' -> '.join((*trail[trail.index(name):], name))}"
        if name in done:
            return
        for imported in graph.get(name, ()):
            visit(imported, (*trail, name))
        done.add(name)

    for name in graph:
        visit(name, ())


@pytest.mark.parametrize("path", MODULES, ids=lambda path: f"{path.parent.parent.name}/{path.name}")
def test_modules_and_functions_stay_short_and_say_what_they_hold(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= LONGEST_MODULE, f"{path.name} has {len(text.splitlines())} lines"
    tree = ast.parse(text)
    assert ast.get_docstring(tree), f"{path.name} has no opening line saying what it holds"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= LONGEST_FUNCTION, f"{path.name}: {node.name} has {length} lines"
