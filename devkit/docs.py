"""``make docs``: rewrite the generated property tables in the READMEs, and the Kafka key table."""

from __future__ import annotations

import importlib
import json
import re
import sys

from .metadata import render_dockerfile
from .properties import RECIPES, ROOT, markdown_table, rows_table, source_properties

DOCS = {"processor": ("README.md", "polyglot-python-processor/README.md"),
        "router": ("README.md", "polyglot-python-app/README.md"),
        "task": ("README.md", "polyglot-python-task/README.md")}
BLOCK = "<!-- properties:{recipe} -->\n{table}<!-- /properties -->"


def render(text: str, recipe: str) -> str:
    pattern = re.compile(rf"<!-- properties:{recipe} -->\n.*?<!-- /properties -->", re.S)
    return pattern.sub(lambda _: BLOCK.format(recipe=recipe, table=markdown_table(recipe)), text)


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
KEYS_BLOCK = re.compile(r"<!-- kafka-keys -->\n.*?<!-- /kafka-keys -->", re.S)


def kafka_keys_table() -> str:
    """Java client keys and what the librdkafka transport makes of them, from its own tables."""
    sys.path.insert(0, str(ROOT / RECIPES["processor"][0]))
    for name in [m for m in sys.modules if m == "util" or m.startswith("util.")]:
        del sys.modules[name]  # another recipe's util may be loaded (the property tables load each in turn)
    try:
        librdkafka = importlib.import_module("util.librdkafka_settings")
        config = importlib.import_module("util.kafka_config")
    finally:
        sys.path.pop(0)
    rows = ["| Java key | on librdkafka |", "|---|---|"]
    rows += [f"| `{key}` | `{name}` |" for key, name in sorted(librdkafka.RENAMED.items())]
    rows += [f"| `{key}` | {text} |" for key, text in TRANSLATED.items()]
    rows += [f"| `{key}` | refused at start: {why}" + (f" (`{harmless}` is let through)" if harmless else "") + " |"
             for key, (harmless, why) in sorted(librdkafka.WEAKENING.items())]
    rows += [f"| `{key}` | set by the binder: ignored, with a warning |" for key in sorted(config.MANAGED)]
    rows += [f"| `{key}` | no librdkafka meaning: ignored, with a warning |" for key in sorted(librdkafka.JAVA_ONLY)]
    return "\n".join(rows) + "\n"


def render_keys(text: str) -> str:
    return KEYS_BLOCK.sub(lambda _: f"<!-- kafka-keys -->\n{kafka_keys_table()}<!-- /kafka-keys -->", text)


BENCH_BLOCK = re.compile(r"<!-- bench -->\n.*?<!-- /bench -->", re.S)


def bench_table() -> str:
    """The README's figures from the latest `make bench` (bench/results/latest.json)."""
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


def render_bench(text: str) -> str:
    return BENCH_BLOCK.sub(lambda _: f"<!-- bench -->\n{bench_table()}<!-- /bench -->", text)


SOURCE_BLOCK = re.compile(r"<!-- properties:source -->\n.*?<!-- /properties -->", re.S)


def render_source(text: str) -> str:
    """The table of what a source reads beyond an app's properties."""
    table = rows_table(source_properties())
    return SOURCE_BLOCK.sub(lambda _: f"<!-- properties:source -->\n{table}<!-- /properties -->", text)


def main() -> int:
    readme = ROOT / "README.md"
    readme.write_text(render_source(render_bench(render_keys(readme.read_text()))))
    for recipe, files in DOCS.items():
        for name in files:
            path = ROOT / name
            path.write_text(render(path.read_text(), recipe))
        dockerfile = ROOT / RECIPES[recipe][0] / "Dockerfile"
        dockerfile.write_text(render_dockerfile(dockerfile.read_text(), recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
