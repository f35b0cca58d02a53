"""``make docs``: rewrite the generated property tables in the READMEs."""

from __future__ import annotations

import re
import sys

from .metadata import render_dockerfile
from .properties import RECIPES, ROOT, markdown_table

DOCS = {"processor": ("README.md", "polyglot-python-processor/README.md"),
        "router": ("README.md", "polyglot-python-app/README.md"),
        "task": ("README.md", "polyglot-python-task/README.md")}
BLOCK = "<!-- properties:{recipe} -->\n{table}<!-- /properties -->"


def render(text: str, recipe: str) -> str:
    pattern = re.compile(rf"<!-- properties:{recipe} -->\n.*?<!-- /properties -->", re.S)
    return pattern.sub(lambda _: BLOCK.format(recipe=recipe, table=markdown_table(recipe)), text)


def main() -> int:
    for recipe, files in DOCS.items():
        for name in files:
            path = ROOT / name
            path.write_text(render(path.read_text(), recipe))
        dockerfile = ROOT / RECIPES[recipe][0] / "Dockerfile"
        dockerfile.write_text(render_dockerfile(dockerfile.read_text(), recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
