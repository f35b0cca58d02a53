"""Spring Boot configuration metadata of each recipe, for the image label Data Flow reads.

Generated from the same declarations as the property tables of the docs; ``make docs`` writes it into the Dockerfiles.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .properties import RECIPES, recipe_properties

LABEL = "org.springframework.cloud.dataflow.spring-configuration-metadata.json"
_JAVA = {bool: "java.lang.Boolean", int: "java.lang.Integer", float: "java.lang.Double", str: "java.lang.String"}
_MAP = "java.util.Map<java.lang.String,java.lang.String>"
_JAVA[dict] = _MAP


def metadata(recipe: str) -> dict[str, Any]:
    """``{"groups", "properties", "hints"}`` for every property the recipe reads."""
    properties, pass_through = recipe_properties(recipe)
    outputs = RECIPES[recipe][2] or ()
    entries: list[dict[str, Any]] = []
    hints = []
    for prop in properties:
        entry = {"name": prop.name, "type": _JAVA[prop.type], "description": prop.description}
        if prop.default is not None:
            entry["defaultValue"] = prop.default
        entries.append(entry)
        if prop.choices:
            hints.append({"name": prop.name, "values": [{"value": choice} for choice in prop.choices]})
    for prefix in pass_through:
        bindings = ["input"] if ".consumer." in prefix else outputs
        for name in sorted({prefix.replace("<binding>", b) for b in bindings}):
            entries.append({"name": name.removesuffix(".<key>"), "type": _MAP,
                            "description": "Kafka client settings passed through to librdkafka or kafka-python."})
    return {"groups": [], "properties": entries, "hints": hints}


def dockerfile_label(recipe: str) -> str:
    """The LABEL instruction: one property a line (backslash continuations), escaped for a Dockerfile."""
    data = metadata(recipe)

    def quoted(value: Any) -> str:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("\\", "\\\\") \
            .replace('"', '\\"').replace("$", "\\$")

    lines = [f'LABEL {LABEL}="{{\\"groups\\":[],\\"properties\\":[\\']
    lines += [quoted(entry) + ("," if i < len(data["properties"]) - 1 else "") + "\\"
              for i, entry in enumerate(data["properties"])]
    lines.append(f'],\\"hints\\":{quoted(data["hints"])}}}"')
    return "\n".join(lines)


def render_dockerfile(text: str, recipe: str) -> str:
    """Replace the generated LABEL block (from its marker comment to the closing quote)."""
    pattern = re.compile(rf"(# Spring Boot configuration metadata[^\n]*\n)LABEL {re.escape(LABEL)}=.*?\}}\"\n", re.S)
    return pattern.sub(lambda m: m.group(1) + dockerfile_label(recipe) + "\n", text)
