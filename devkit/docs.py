"""``make docs``: rewrite every generated block of the docs (property tables, Kafka keys, bench figures, modules).

A block sits between ``<!-- name -->`` and ``<!-- /kind -->`` (``kind``: the name up to its colon) and is
rewritten wherever it appears; ``PAGES`` says where each must be, and ``tests/test_docs.py`` checks both.
The Dockerfiles' configuration-metadata labels are rewritten too.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from .metadata import render_dockerfile
from .properties import RECIPES, ROOT, markdown_table, recipe_modules, rows_table, source_properties

# Each generated block, and the Markdown files (from the repository's root) that must hold it.
PAGES = {"properties:processor": ("docs/properties-processor.md", "polyglot-python-processor/README.md"),
         "properties:router": ("docs/properties-app.md", "polyglot-python-app/README.md"),
         "properties:task": ("docs/properties-task.md", "polyglot-python-task/README.md"),
         "properties:source": ("docs/writing-steps.md",),
         "kafka-keys": ("docs/kafka-clients.md",),
         "bench": ("docs/performance.md",),
         "modules:util": ("docs/layout.md",),
         "modules:scripts": ("docs/layout.md",),
         "modules:devkit": ("docs/layout.md",)}


# Java keys the librdkafka transport translates by more than a new name.
TRANSLATED = {
    "sasl.jaas.config": "`sasl.username` and `sasl.password` (PLAIN and SCRAM login modules)",
    "ssl.keystore.location": "`ssl.certificate.location`, and `ssl.key.location` when the PEM file holds the key",
    "ssl.endpoint.identification.algorithm": "the same key: `https`, or `none` for an empty value",
    "buffer.memory": "`queue.buffering.max.kbytes` (bytes / 1024)",
    "partition.assignment.strategy": "the same key: `RangeAssignor`, `RoundRobinAssignor`, "
                                     "`CooperativeStickyAssignor` become `range`, `roundrobin`, `cooperative-sticky`",
    "max.poll.records": "read by the binder: the records one poll hands the loop (500)",
    "acks": "the producer's acks, as `...binder.requiredAcks`",
}


def kafka_keys_table() -> str:
    """Java client keys and what the librdkafka transport makes of them, from its own tables."""
    with recipe_modules(RECIPES["processor"][0]):
        librdkafka = importlib.import_module("util.librdkafka_settings")
        config = importlib.import_module("util.kafka_config")
    rows = ["| Java key | on librdkafka |", "|---|---|"]
    rows += [f"| `{key}` | `{name}` |" for key, name in sorted(librdkafka.RENAMED.items())]
    rows += [f"| `{key}` | {text} |" for key, text in TRANSLATED.items()]
    rows += [f"| `{key}` | refused at start: {why}" + (f" (`{harmless}` is let through)" if harmless else "") + " |"
             for key, (harmless, why) in sorted(librdkafka.WEAKENING.items())]
    rows += [f"| `{key}` | set by the binder: ignored, with a warning |" for key in sorted(config.MANAGED)]
    rows += [f"| `{key}` | no librdkafka meaning: ignored, with a warning |" for key in sorted(librdkafka.JAVA_ONLY)]
    return "\n".join(rows) + "\n"


def bench_table() -> str:
    """The figures from the latest `make bench` (bench/results/latest.json)."""
    results = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    rows = [f"Latest run: {results['when'][:10]}, {results['records']:,} records of {results['record_bytes']} bytes, "
            f"{results['machine']['cpus']} CPUs, medians of {results['repetitions']}.", "",
            "| run | records/s |", "|---|---:|"]
    rows += [f"| {name} | {run['median']:,.0f} |" for name, run in results["throughput"].items()]
    rows += ["", "| target | measured | goal | |", "|---|---:|---:|---|"]
    for target in results["targets"]:
        verdict = "reported" if target["goal"] is None else "met" if target["met"] else "missed"
        rows.append(f"| {target['name']} | {target['measured']:.2f} | {target['goal'] or ''} | {verdict} |")
    return "\n".join(rows) + "\n"


def modules_table(paths: list[Path], by_recipe: bool = False) -> str:
    """A module a row with the first line of its docstring; ``by_recipe``: by file name, naming the recipes."""
    where: dict[str, list[str]] = {}
    holds: dict[str, str] = {}
    for path in paths:
        text = path.read_text()
        if not text.strip():
            continue  # an empty package marker
        name = path.name if by_recipe else path.relative_to(ROOT).as_posix()
        where.setdefault(name, []).append(path.relative_to(ROOT).parts[0].removeprefix("polyglot-python-"))
        docstring = ast.get_docstring(ast.parse(text))
        holds.setdefault(name, docstring.splitlines()[0] if docstring else "*(no docstring)*")
    rows = ["| module | in | holds |", "|---|---|---|"] if by_recipe else ["| module | holds |", "|---|---|"]
    for name in sorted(where):
        recipes = f" {', '.join(where[name])} |" if by_recipe else ""
        text = holds[name].replace("|", r"\|")
        rows.append(f"| `{name}` |{recipes} {text} |")
    return "\n".join(rows) + "\n"


def _recipe_folders() -> list[Path]:
    return [ROOT / folder for folder, _, _ in RECIPES.values()]


def markdown_files() -> list[Path]:
    """The docs: README.md, docs/*.md and each recipe's README (``make docs`` renders blocks in every one)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *(f / "README.md" for f in _recipe_folders())]


# What each block is made of.
BLOCKS: dict[str, Callable[[], str]] = {
    **{f"properties:{recipe}": (lambda recipe=recipe: markdown_table(recipe)) for recipe in RECIPES},
    "properties:source": lambda: rows_table(source_properties()),
    "kafka-keys": kafka_keys_table,
    "bench": bench_table,
    "modules:util": lambda: modules_table([p for f in _recipe_folders() for p in sorted((f / "util").glob("*.py"))],
                                          by_recipe=True),
    "modules:scripts": lambda: modules_table([p for f in _recipe_folders() for p in sorted(f.glob("*.py"))]),
    "modules:devkit": lambda: modules_table([p for d in ("devkit", "bench", "bench/steps", "tests/steps")
                                             for p in sorted((ROOT / d).glob("*.py"))]),
}


def render_block(text: str, name: str) -> str:
    """``text`` with the block ``name`` made anew wherever it is (the text as it was when it has none)."""
    start, end = f"<!-- {name} -->\n", f"<!-- /{name.split(':')[0]} -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    return pattern.sub(lambda _: start + BLOCKS[name]() + end, text)


def render_page(text: str) -> str:
    """``text`` with every generated block in it made anew."""
    for name in BLOCKS:
        text = render_block(text, name)
    return text


def main() -> int:
    for path in markdown_files():
        path.write_text(render_page(path.read_text()))
    for recipe in RECIPES:
        dockerfile = ROOT / RECIPES[recipe][0] / "Dockerfile"
        dockerfile.write_text(render_dockerfile(dockerfile.read_text(), recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
