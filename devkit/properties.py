"""The property tables of the docs, generated from the declarations the apps read them through.

    python -m devkit.properties processor   # prints the Markdown table
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# recipe: folder, script module, output bindings (None: a task)
RECIPES = {"processor": ("polyglot-python-processor", "python_processor", ("output",)),
           "router": ("polyglot-python-app", "python_router_app", ("even", "odd")),
           "task": ("polyglot-python-task", "python_task", None)}
_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "map"}


@contextlib.contextmanager
def recipe_modules(folder: str, *also: str) -> Iterator[None]:
    """Import from a recipe's folder and its own ``util`` (and ``also``); afterwards the modules loaded before
    are back, so a caller (a test process) keeps the ``util`` it had."""
    def ours(name: str) -> bool:
        return name == "util" or name.startswith("util.") or name in also

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(ROOT / folder))
    try:
        yield
    finally:
        sys.path.remove(str(ROOT / folder))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def recipe_properties(recipe: str) -> tuple[list[Any], tuple[str, ...]]:
    """A recipe's properties and pass-through prefixes, loaded from its folder (each has its own ``util``)."""
    folder, module, outputs = RECIPES[recipe]
    with recipe_modules(folder, module):
        script = importlib.import_module(module)
        if outputs is None:
            return [*script.OPTIONS.values(), *importlib.import_module("util.task_status").PROPERTIES], ()
        app = importlib.import_module("util.app")
        fallback = getattr(script, "GROUP_FALLBACK", None)
        return app.app_properties(outputs, script.OPTIONS, fallback), app.PASS_THROUGH


def markdown_table(recipe: str) -> str:
    return rows_table(*recipe_properties(recipe), binders=RECIPES[recipe][2] is not None)


def source_properties() -> list[Any]:
    """What a source (``util.source``, run on the processor's ``util``) reads beyond an app's properties."""
    with recipe_modules(RECIPES["processor"][0]):
        return list(importlib.import_module("util.source").PROPERTIES)


def binder_of(prop: Any) -> str:
    """Which binder reads a property: ``kafka``, ``rabbit`` or ``both``."""
    if prop.binder:
        return prop.binder
    if ".kafka." in prop.name:
        return "kafka"
    if prop.name.startswith("spring.rabbitmq.") or ".rabbit." in prop.name:
        return "rabbit"
    return "both"


def rows_table(properties: list[Any], pass_through: tuple[str, ...] = (), binders: bool = True) -> str:
    """A Markdown table of ``properties``; ``binders``: with the column saying which binder reads each."""
    column = " binder |" if binders else ""
    rows = [f"| property | type | default |{column} description |", f"|---|---|---|{'---|' if binders else ''}---|"]
    for prop in properties:
        shown = str(prop.default).lower() if prop.type is bool else prop.default
        default = "" if prop.default is None else f"`{shown}`"
        name = f"`{prop.name}`" + "".join(f" (or `{alias}`)" for alias in prop.aliases)
        note = " Required." if prop.required else ""
        which = f" {binder_of(prop)} |" if binders else ""
        rows.append(f"| {name} | {_TYPES[prop.type]} | {default} |{which} {prop.description}{note} |")
    for prefix in pass_through:
        which = " kafka |" if binders else ""
        rows.append(f"| `{prefix}` | string | |{which} A Kafka client setting, passed through (see below). |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(sys.argv[1]), end="")
