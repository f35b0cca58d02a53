"""The code's shape: util's import graph is a ladder (no cycle), modules and functions stay short, each module
says on its first line what it holds (no server needed)."""

from __future__ import annotations

import ast
import subprocess
import sys
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


PUBLIC = {"polyglot-python-processor": ["BatchError", "Message", "Property", "STREAM_NAME", "is_text", "run_app",
                                        "run_processor", "run_sink", "run_source"],
          "polyglot-python-task": ["Property", "TaskExecution", "run_task"]}


@pytest.mark.parametrize("recipe", sorted(PUBLIC))
def test_every_name_util_offers_resolves_and_none_it_lacks_is_offered(recipe: str) -> None:
    code = ("import util\nfrom util import *\n"
            "print(sorted(n for n in dir() if not n.startswith('_') and n != 'util'))\n"
            "try:\n    from util import run_tsk\nexcept ImportError as error:\n    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT / recipe, capture_output=True, text=True, timeout=60,
                          check=True)
    offered, refused = done.stdout.splitlines()
    assert offered == repr(PUBLIC[recipe])
    assert "cannot import name 'run_tsk'" in refused


def test_a_step_importing_the_entry_points_from_their_old_home_still_runs_with_a_warning() -> None:
    code = "from util.binder import Message, run_processor\nprint(run_processor.__module__, Message.__name__)\n"
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=ROOT / "polyglot-python-processor",
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["util.steps", "Message"]
    assert "DeprecationWarning: 'from util.binder import run_processor' is deprecated" in done.stderr
